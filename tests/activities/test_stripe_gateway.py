"""StripeGateway against a loopback server answering with Stripe's documented objects.

Bodies follow the API reference: the error object (type, code, decline_code, advice_code,
network_decline_code, network_advice_code, charge, payment_intent, payment_method), the
PaymentIntent (status, latest_charge, last_payment_error), the Charge `outcome` and the Invoice
(`payments` list, `parent.subscription_details`).
"""

from __future__ import annotations

import dataclasses
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.payments import PERMANENT_PAYMENT_ERROR, PaymentActivities, build_gateway
from activities.stripe_gateway import TRANSIENT_PAYMENT_ERROR, StripeGateway
from dunning.enums import Action
from dunning.rules import RetryLimits
from dunning.config import Settings
from dunning.models import Customer, Decline, FailedPayment, PaymentMethod
from dunning.ports import ChargeRequest, EscalationRequest, ReconcileRequest
from dunning.store import Store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
API_KEY = "sk_test_gateway"


# --- Stripe objects -------------------------------------------------------------------------------


def card_pm(pm_id: str, brand: str = "visa", funding: str = "credit", fingerprint: str = "fpVisa") -> dict[str, Any]:
    return {
        "id": pm_id,
        "object": "payment_method",
        "type": "card",
        "customer": "cus_1",
        "card": {
            "brand": brand,
            "country": "US",
            "exp_month": 8,
            "exp_year": 2031,
            "fingerprint": fingerprint,
            "funding": funding,
            "last4": "4242",
        },
    }


def charge(ch_id: str, *, status: str = "failed", pm: str = "pm_visa", **outcome: Any) -> dict[str, Any]:
    return {
        "id": ch_id,
        "object": "charge",
        "amount": 2500,
        "currency": "usd",
        "status": status,
        "paid": status == "succeeded",
        "failure_code": "card_declined" if status == "failed" else None,
        "payment_intent": "pi_1",
        "payment_method": pm,
        "outcome": {
            "type": "issuer_declined" if status == "failed" else "authorized",
            "network_status": "declined_by_network" if status == "failed" else "approved_by_network",
            "reason": outcome.pop("reason", None),
            "risk_level": "normal",
            "seller_message": "The bank did not return any further details with this decline.",
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            **outcome,
        },
    }


def intent(status: str, *, latest_charge: Any = None, error: dict | None = None, pm: str = "pm_visa") -> dict[str, Any]:
    return {
        "id": "pi_1",
        "object": "payment_intent",
        "amount": 2500,
        "currency": "usd",
        "customer": "cus_1",
        "status": status,
        "latest_charge": latest_charge,
        "payment_method": pm,
        "last_payment_error": error,
    }


def card_error(*, decline_code: str | None = "generic_decline", code: str = "card_declined", **fields: Any) -> dict[str, Any]:
    return {
        "error": {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": "Your card was declined.",
            "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            "request_log_url": "https://dashboard.stripe.com/test/logs/req_1?t=1767000000",
            **fields,
        }
    }


def invoice(status: str = "open", *, payments: list[dict] | None = None) -> dict[str, Any]:
    return {
        "id": "in_1",
        "object": "invoice",
        "customer": "cus_1",
        "status": status,
        "amount_remaining": 0 if status == "paid" else 2500,
        "currency": "usd",
        "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_in_1",
        "default_payment_method": None,
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"subscription": "sub_1", "metadata": {}},
        },
        "payments": {"object": "list", "data": payments or [], "has_more": False, "url": "/v1/invoice_payments"},
    }


def invoice_payment(pi_id: str, *, status: str, created: int, charge_id: str | None = None) -> dict[str, Any]:
    return {
        "id": f"inpay_{created}",
        "object": "invoice_payment",
        "invoice": "in_1",
        "is_default": True,
        "status": status,
        "created": created,
        "payment": {"type": "payment_intent", "payment_intent": pi_id, "charge": charge_id},
    }


def api_error(status: int, type_: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, **fields}}


# --- helpers --------------------------------------------------------------------------------------


def gateway_for(url: str) -> StripeGateway:
    return StripeGateway.from_settings(Settings(stripe_api_key=API_KEY, stripe_api_base=url))


def charge_request(
    kind: str = "invoice", *, attempt: int = 1, pm: str = "pm_visa", brand: str = "visa"
) -> ChargeRequest:
    reference = "in_1" if kind == "invoice" else "pi_1"
    return ChargeRequest(
        journey_id=f"dunning-{reference}",
        attempt_number=attempt,
        payment_reference=reference,
        payment_kind=kind,  # type: ignore[arg-type]
        payment_method=PaymentMethod(id=pm, brand=brand, fingerprint=f"fp_{pm}"),
        amount=2500,
        currency="usd",
        at=T0,
        limits=RetryLimits(),
    )


@pytest.fixture
def gateway(fake_stripe) -> StripeGateway:
    return gateway_for(fake_stripe.url)


# --- charging -------------------------------------------------------------------------------------


def test_invoice_decline_is_a_result_with_every_field(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    body = card_error(
        decline_code="do_not_honor",
        advice_code="do_not_try_again",
        network_decline_code="05",
        network_advice_code="03",
        charge="ch_1",
        payment_intent=intent("requires_payment_method", latest_charge="ch_1", pm="pm_mc"),
        payment_method=card_pm("pm_mc", brand="mastercard"),
    )
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", R(402, body))
    outcome = gateway.charge(charge_request(attempt=3, pm="pm_mc", brand="mastercard"))
    assert outcome.status == "declined"
    assert outcome.decline == Decline(
        payment_method="pm_mc",
        decline_code="do_not_honor",
        advice_code="do_not_try_again",
        network_decline_code="05",
        network_advice_code="03",
    )
    assert (outcome.charge_id, outcome.payment_intent_id) == ("ch_1", "pi_1")
    (sent,) = fake_stripe.requests  # no SDK retry, no extra read: every field was in the error
    assert sent.headers["idempotency-key"] == "dunning-in_1:attempt:3"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.form == {"payment_method": "pm_mc", "off_session": "true", "expand[0]": "payments"}


def test_decline_fields_completed_from_the_charge_outcome(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on(
        "POST",
        "/v1/payment_intents/pi_1/confirm",
        R(402, card_error(decline_code="insufficient_funds", charge="ch_2",
                          payment_intent=intent("requires_payment_method", latest_charge="ch_2"))),
    )
    fake_stripe.on(
        "GET",
        "/v1/charges/ch_2",
        R(200, charge("ch_2", reason="insufficient_funds", advice_code="try_again_later",
                      network_decline_code="51", network_advice_code="01")),
    )
    outcome = gateway.charge(charge_request("payment_intent"))
    assert outcome.decline == Decline(
        payment_method="pm_visa",
        decline_code="insufficient_funds",
        advice_code="try_again_later",
        network_decline_code="51",
        network_advice_code="01",
    )
    confirm = fake_stripe.calls("POST", "/v1/payment_intents/pi_1/confirm")[0]
    assert confirm.form == {"payment_method": "pm_visa", "off_session": "true", "expand[0]": "latest_charge"}
    assert confirm.headers["idempotency-key"] == "dunning-pi_1:attempt:1"


def test_card_error_code_without_decline_code(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", R(402, card_error(decline_code=None, code="expired_card", charge="ch_3")))
    fake_stripe.on("GET", "/v1/charges/ch_3", R(200, charge("ch_3")))
    outcome = gateway.charge(charge_request())
    assert (outcome.status, outcome.decline.decline_code) == ("declined", "expired_card")


def test_payment_intent_success_and_processing(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on(
        "POST",
        "/v1/payment_intents/pi_1/confirm",
        R(200, intent("succeeded", latest_charge=charge("ch_ok", status="succeeded"))),
        R(200, intent("processing", latest_charge="ch_ach")),
    )
    ok = gateway.charge(charge_request("payment_intent", attempt=1))
    assert (ok.status, ok.charge_id, ok.payment_intent_id) == ("succeeded", "ch_ok", "pi_1")
    pending = gateway.charge(charge_request("payment_intent", attempt=2))
    assert (pending.status, pending.charge_id) == ("processing", "ch_ach")


def test_requires_action(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    body = card_error(
        decline_code=None,
        code="invoice_payment_intent_requires_action",
        payment_intent=intent("requires_action"),
    )
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", R(402, body))
    assert gateway.charge(charge_request()).status == "requires_action"


def test_invoice_paid(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    paid = invoice("paid", payments=[
        invoice_payment("pi_old", status="canceled", created=1),
        invoice_payment("pi_new", status="paid", created=2, charge_id="ch_paid"),
    ])
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", R(200, paid))
    outcome = gateway.charge(charge_request())
    assert (outcome.status, outcome.charge_id, outcome.payment_intent_id) == ("succeeded", "ch_paid", "pi_new")


def test_cycling_to_the_working_card_charges_once(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on(
        "POST",
        "/v1/payment_intents/pi_1/confirm",
        lambda req: R(200, intent("succeeded", latest_charge="ch_ok", pm="pm_ok"))
        if req.form["payment_method"] == "pm_ok"
        else R(402, card_error(decline_code="insufficient_funds", charge="ch_fail",
                               network_decline_code="51", advice_code="try_again_later",
                               network_advice_code=None)),
    )
    fake_stripe.on("GET", "/v1/charges/ch_fail", R(200, charge("ch_fail")))
    first = gateway.charge(charge_request("payment_intent", attempt=1, pm="pm_fail"))
    assert first.status == "declined"
    second = gateway.charge(charge_request("payment_intent", attempt=2, pm="pm_ok"))
    again = gateway.charge(charge_request("payment_intent", attempt=2, pm="pm_ok"))
    assert second == again and second.status == "succeeded"
    confirms = [r for r in fake_stripe.executed if r.path.endswith("/confirm")]
    assert [r.form["payment_method"] for r in confirms] == ["pm_fail", "pm_ok"]
    replayed = fake_stripe.calls("POST", "/v1/payment_intents/pi_1/confirm")[-1]
    assert replayed.headers["idempotency-key"] == "dunning-pi_1:attempt:2"


def test_lost_response_retried_by_temporal_charges_once(fake_stripe, gateway: StripeGateway, tmp_path: Path) -> None:
    R = fake_stripe.Reply
    fake_stripe.on(
        "POST",
        "/v1/payment_intents/pi_1/confirm",
        R(200, intent("succeeded", latest_charge="ch_ok"), drop=True),  # charged, response lost
    )
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.upgrade()
    activities = PaymentActivities(gateway, store)
    env = ActivityEnvironment()
    request = charge_request("payment_intent")
    with pytest.raises(ApplicationError) as caught:
        env.run(activities.charge, request)
    assert caught.value.type == TRANSIENT_PAYMENT_ERROR and not caught.value.non_retryable
    env.info = dataclasses.replace(env.info, attempt=2)
    result = env.run(activities.charge, request)
    assert result.outcome.status == "succeeded" and result.outcome.charge_id == "ch_ok"
    assert len(fake_stripe.executed) == 1
    keys = {r.headers["idempotency-key"] for r in fake_stripe.requests}
    assert keys == {"dunning-pi_1:attempt:1"} and len(fake_stripe.requests) == 2
    assert [r.status for r in store.attempts_for_journey("dunning-pi_1")] == ["succeeded"]
    store.dispose()


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 409])
def test_server_errors_are_transient(fake_stripe, gateway: StripeGateway, status: int) -> None:
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", fake_stripe.Reply(status, api_error(status, "api_error", "boom")))
    with pytest.raises(ApplicationError) as caught:
        gateway.charge(charge_request())
    assert caught.value.type == TRANSIENT_PAYMENT_ERROR and not caught.value.non_retryable
    assert f"HTTP {status}" in str(caught.value)


def test_replayed_server_error_is_read_back_later(fake_stripe, gateway: StripeGateway) -> None:
    reply = fake_stripe.Reply(500, api_error(500, "api_error", "boom"), {"Stripe-Should-Retry": "false"})
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", reply)
    outcome = gateway.charge(charge_request())
    assert outcome.status == "processing" and "read back" in outcome.message


def test_rate_limit_honours_retry_after(fake_stripe, gateway: StripeGateway) -> None:
    body = api_error(429, "invalid_request_error", "Too many requests", code="rate_limit")
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", fake_stripe.Reply(429, body, {"Retry-After": "7"}))
    with pytest.raises(ApplicationError) as caught:
        gateway.charge(charge_request())
    assert not caught.value.non_retryable
    assert caught.value.next_retry_delay == timedelta(seconds=7)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ApplicationError) as caught:
        gateway_for(f"http://127.0.0.1:{port}").charge(charge_request())
    assert caught.value.type == TRANSIENT_PAYMENT_ERROR and not caught.value.non_retryable


def test_invalid_request_is_permanent_with_a_clear_message(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    body = api_error(400, "invalid_request_error", "No such PaymentMethod: 'pm_gone'",
                     code="resource_missing", param="payment_method")
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", R(400, body))
    fake_stripe.on("GET", "/v1/invoices/in_1", R(200, invoice("open")))
    with pytest.raises(ApplicationError) as caught:
        gateway.charge(charge_request(pm="pm_gone"))
    error = caught.value
    assert error.non_retryable and error.type == PERMANENT_PAYMENT_ERROR
    assert "code=resource_missing" in str(error) and "param=payment_method" in str(error)
    assert "No such PaymentMethod" in str(error) and "in_1" in str(error)


def test_refused_because_already_paid_is_a_success(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", R(400, api_error(400, "invalid_request_error", "Invoice is already paid")))
    paid = invoice("paid", payments=[invoice_payment("pi_1", status="paid", created=1, charge_id="ch_x")])
    fake_stripe.on("GET", "/v1/invoices/in_1", R(200, paid))
    outcome = gateway.charge(charge_request())
    assert (outcome.status, outcome.charge_id, outcome.message) == ("succeeded", "ch_x", "already paid")


@pytest.mark.parametrize(("status", "hint"), [(401, "STRIPE_API_KEY"), (403, "permission")])
def test_auth_errors_are_permanent(fake_stripe, gateway: StripeGateway, status: int, hint: str) -> None:
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", fake_stripe.Reply(status, api_error(status, "invalid_request_error", "Invalid API Key provided")))
    with pytest.raises(ApplicationError) as caught:
        gateway.charge(charge_request())
    assert caught.value.non_retryable and caught.value.type == PERMANENT_PAYMENT_ERROR
    assert hint in str(caught.value)


# --- reading back and context ---------------------------------------------------------------------


def test_read_back_payment_intent_decline(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    error = card_error(decline_code="insufficient_funds", charge="ch_9", payment_method=card_pm("pm_visa"))["error"]
    expanded = charge("ch_9", reason="insufficient_funds", advice_code="try_again_later", network_decline_code="51")
    fake_stripe.on("GET", "/v1/payment_intents/pi_1", R(200, intent("requires_payment_method", latest_charge=expanded, error=error)))
    outcome = gateway.read_back(ReconcileRequest(journey_id="dunning-pi_1", attempt_number=1, payment_reference="pi_1", payment_kind="payment_intent"))
    assert outcome.status == "declined" and outcome.charge_id == "ch_9"
    assert outcome.decline == Decline(payment_method="pm_visa", decline_code="insufficient_funds",
                                      advice_code="try_again_later", network_decline_code="51")
    (read,) = fake_stripe.requests
    assert read.query == {"expand[0]": "latest_charge"}


def test_read_back_invoice_processing(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on("GET", "/v1/invoices/in_1", R(200, invoice("open", payments=[invoice_payment("pi_1", status="open", created=5)])))
    fake_stripe.on("GET", "/v1/payment_intents/pi_1", R(200, intent("processing", latest_charge="ch_sepa")))
    outcome = gateway.read_back(ReconcileRequest(journey_id="dunning-in_1", attempt_number=2, payment_reference="in_1", payment_kind="invoice"))
    assert (outcome.status, outcome.charge_id) == ("processing", "ch_sepa")


def failed_payment(reference: str) -> FailedPayment:
    return FailedPayment(id=reference, amount=2500, currency="usd", failed_at=T0, customer=Customer(id="cus_1"))


def test_collection_context_for_an_invoice(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on("GET", "/v1/invoices/in_1", R(200, invoice("open")))
    fake_stripe.on("GET", "/v1/subscriptions/sub_1", R(200, {"id": "sub_1", "object": "subscription", "status": "past_due", "default_payment_method": "pm_mc"}))
    fake_stripe.on("GET", "/v1/customers/cus_1", R(200, {"id": "cus_1", "object": "customer", "invoice_settings": {"default_payment_method": "pm_visa"}}))
    sepa = {"id": "pm_sepa", "object": "payment_method", "type": "sepa_debit", "sepa_debit": {"country": "DE", "fingerprint": "fpSepa", "last4": "3000"}}
    listed = {"object": "list", "data": [card_pm("pm_visa"), card_pm("pm_mc", brand="mastercard", funding="debit", fingerprint="fpMc"), sepa], "has_more": False, "url": "/v1/customers/cus_1/payment_methods"}
    fake_stripe.on("GET", "/v1/customers/cus_1/payment_methods", R(200, listed))
    context = gateway.collection_context(failed_payment("in_1"))
    assert context.update_url == "https://invoice.stripe.com/i/acct_1/test_in_1"
    assert context.payment_methods == (
        PaymentMethod(id="pm_mc", brand="mastercard", funding="debit", country="US", exp_month=8, exp_year=2031, default=True, fingerprint="fpMc"),
        PaymentMethod(id="pm_visa", brand="visa", funding="credit", country="US", exp_month=8, exp_year=2031, fingerprint="fpVisa"),
        PaymentMethod(id="pm_sepa", type="sepa_debit", country="DE", fingerprint="fpSepa"),
    )


def test_collection_context_for_a_payment_intent_uses_the_portal(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on("GET", "/v1/payment_intents/pi_1", R(200, intent("requires_payment_method", pm="pm_visa")))
    fake_stripe.on("GET", "/v1/customers/cus_1", R(200, {"id": "cus_1", "object": "customer", "invoice_settings": {"default_payment_method": None}}))
    fake_stripe.on("GET", "/v1/customers/cus_1/payment_methods", R(200, {"object": "list", "data": [card_pm("pm_visa")], "has_more": False}))
    fake_stripe.on(
        "POST",
        "/v1/billing_portal/sessions",
        R(200, {"id": "bps_1", "object": "billing_portal.session", "url": "https://billing.stripe.com/p/session/test_1"}),
        R(400, api_error(400, "invalid_request_error", "You can't create a portal session in test mode until you save your customer portal settings")),
    )
    context = gateway.collection_context(failed_payment("pi_1"))
    assert context.update_url == "https://billing.stripe.com/p/session/test_1"
    assert [m.id for m in context.payment_methods if m.default] == ["pm_visa"]
    assert fake_stripe.calls("POST", "/v1/billing_portal/sessions")[0].form == {"customer": "cus_1"}
    assert gateway.collection_context(failed_payment("pi_1")).update_url is None


# --- escalations ----------------------------------------------------------------------------------


def escalation(action: Action, kind: str = "invoice", **extra: Any) -> EscalationRequest:
    reference = "in_1" if kind == "invoice" else "pi_1"
    return EscalationRequest(
        journey_id=f"dunning-{reference}", action=action, payment_reference=reference,
        payment_kind=kind, customer_id="cus_1", **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("action", "extra", "method", "path", "form"),
    [
        (Action.write_off, {}, "POST", "/v1/invoices/in_1/mark_uncollectible", {}),
        (Action.hand_off, {}, "POST", "/v1/invoices/in_1/mark_uncollectible", {}),
        (Action.cancel_subscription, {"subscription_id": "sub_1"}, "DELETE", "/v1/subscriptions/sub_1", {}),
        (Action.restrict_access, {"subscription_id": "sub_1"}, "POST", "/v1/subscriptions/sub_1", {"pause_collection[behavior]": "keep_as_draft"}),
        (Action.reactivate, {"subscription_id": "sub_1"}, "POST", "/v1/subscriptions/sub_1", {"pause_collection": ""}),
        (Action.incentive, {"subscription_id": "sub_1", "coupon": "STAY20"}, "POST", "/v1/subscriptions/sub_1", {"discounts[0][coupon]": "STAY20"}),
    ],
)
def test_escalations(fake_stripe, gateway: StripeGateway, action, extra, method, path, form) -> None:
    fake_stripe.on(method, path, fake_stripe.Reply(200, {"id": path.rsplit("/", 2)[1], "object": "x"}))
    gateway.escalate(escalation(action, **extra))
    gateway.escalate(escalation(action, **extra))  # an activity retry
    assert len(fake_stripe.executed) == 1
    sent = fake_stripe.calls(method, path)
    assert all(r.headers["idempotency-key"] == f"dunning-in_1:escalate:{action.value}" for r in sent)
    assert sent[0].form == form


def test_subscription_found_from_the_invoice_and_cancel_tolerated_when_done(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on("GET", "/v1/invoices/in_1", R(200, invoice("open")))
    fake_stripe.on("DELETE", "/v1/subscriptions/sub_1", R(400, api_error(400, "invalid_request_error", "No such subscription: 'sub_1'; it was canceled")))
    fake_stripe.on("GET", "/v1/subscriptions/sub_1", R(200, {"id": "sub_1", "object": "subscription", "status": "canceled"}))
    gateway.escalate(escalation(Action.cancel_subscription))
    assert [(r.method, r.path) for r in fake_stripe.requests] == [
        ("GET", "/v1/invoices/in_1"), ("DELETE", "/v1/subscriptions/sub_1"), ("GET", "/v1/subscriptions/sub_1"),
    ]


def test_write_off_refused_on_an_open_invoice_is_permanent(fake_stripe, gateway: StripeGateway) -> None:
    R = fake_stripe.Reply
    fake_stripe.on("POST", "/v1/invoices/in_1/mark_uncollectible", R(400, api_error(400, "invalid_request_error", "This invoice is a draft")))
    fake_stripe.on("GET", "/v1/invoices/in_1", R(200, invoice("draft")))
    with pytest.raises(ApplicationError) as caught:
        gateway.escalate(escalation(Action.write_off))
    assert caught.value.non_retryable and "write_off for in_1" in str(caught.value)


def test_payment_intent_write_off_cancels_it(fake_stripe, gateway: StripeGateway) -> None:
    fake_stripe.on("POST", "/v1/payment_intents/pi_1/cancel", fake_stripe.Reply(200, intent("canceled")))
    gateway.escalate(escalation(Action.write_off, "payment_intent"))
    gateway.escalate(escalation(Action.hand_off, "payment_intent"))  # nothing to change in Stripe
    (sent,) = fake_stripe.requests
    assert sent.form == {"cancellation_reason": "abandoned"}


def test_build_gateway_uses_stripe_when_a_key_is_set(fake_stripe, tmp_path: Path) -> None:
    gateway = build_gateway(Settings(stripe_api_key=API_KEY, stripe_api_base=fake_stripe.url), tmp_path)
    assert isinstance(gateway, StripeGateway) and gateway.name == "stripe"
    fake_stripe.on("POST", "/v1/invoices/in_1/pay", fake_stripe.Reply(200, invoice("paid")))
    assert gateway.charge(charge_request()).status == "succeeded"
    assert not (tmp_path / "sandbox.db").exists()
