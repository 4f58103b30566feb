"""The event table (dunning.stripe_events): what each Stripe event means for journeys. Pure, no servers."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest
import stripe

from dunning.models import Customer, Decline, PaymentMethod
from dunning.stripe_events import ROUTES, Action, UnusableEvent, interpret, signature_header
from tests.webhook_support import SECRET, card, event, intent, invoice

T = 1_793_000_000
AT = datetime.fromtimestamp(T, tz=UTC)


def test_every_route_is_declared_once_with_its_action():
    assert {kind: route.action for kind, route in ROUTES.items()} == {
        "invoice.payment_failed": Action.start,
        "payment_intent.payment_failed": Action.start,
        "invoice.paid": Action.succeeded,
        "invoice.payment_succeeded": Action.succeeded,
        "payment_intent.succeeded": Action.succeeded,
        "payment_method.attached": Action.method_updated,
        "customer.updated": Action.method_updated,
        "setup_intent.succeeded": Action.method_updated,
        "charge.dispute.created": Action.pause,
        "charge.dispute.closed": Action.resume,
        "customer.subscription.deleted": Action.cancel,
        "invoice.voided": Action.cancel,
        "invoice.marked_uncollectible": Action.cancel,
    }
    # Only what needs a worker (updates), a Stripe lookup (disputes) or a visibility search
    # (a subscription's journeys) waits for the dispatcher.
    assert {k for k, r in ROUTES.items() if r.deferred} == {
        "payment_method.attached", "customer.updated", "setup_intent.succeeded",
        "charge.dispute.created", "charge.dispute.closed", "customer.subscription.deleted",
    }


def test_invoice_failure_becomes_a_failed_payment_with_the_contact_details_it_carries():
    ins = interpret(event("invoice.payment_failed", invoice("in_1", "cus_1", due_date=T + 86400, phone="+14155550100", country="US"), event_id="evt_1", created=T))
    assert (ins.action, ins.targets, ins.event_id, ins.created, ins.ignored) == (Action.start, ("in_1",), "evt_1", AT, None)
    payment = ins.payment
    assert payment.id == "in_1" and payment.kind == "invoice" and payment.journey_id == "dunning-in_1"
    assert (payment.amount, payment.currency, payment.failed_at) == (2500, "usd", AT)
    assert payment.customer == Customer(id="cus_1", name="Ada Lovelace", email="ada@example.com", phone="+14155550100", country="US")
    assert (payment.subscription_id, payment.plan) == ("sub_cus_1", "price_pro")
    assert payment.due_date == datetime.fromtimestamp(T + 86400, tz=UTC)
    assert payment.initial_decline == Decline()  # invoices carry none: the gateway fills it


def test_intent_failure_carries_the_decline_and_the_failed_method():
    ins = interpret(event("payment_intent.payment_failed", intent("pi_1", "cus_2", invoice=None, phone="+33142685300", country="FR", card_country="FR"), created=T))
    payment = ins.payment
    assert ins.action is Action.start and not ins.invoice_unknown
    assert (payment.id, payment.kind, payment.amount, payment.currency) == ("pi_1", "payment_intent", 4200, "eur")
    assert payment.customer == Customer(id="cus_2", name="Grace Hopper", email="grace@example.com", phone="+33142685300", country="FR")
    assert payment.initial_decline == Decline(
        payment_method="pm_pi_1", decline_code="insufficient_funds", advice_code="try_again_later", network_decline_code="51"
    )
    assert payment.payment_methods == (
        PaymentMethod(id="pm_pi_1", brand="visa", funding="debit", country="FR", exp_month=4, exp_year=2031, default=True, fingerprint="fpV"),
    )


def test_intent_of_an_invoice_is_ignored_and_a_modern_payload_is_flagged_for_lookup():
    of_invoice = interpret(event("payment_intent.payment_failed", intent("pi_2", "cus_2", invoice="in_9")))
    assert of_invoice.ignored == "PaymentIntent of invoice in_9: its invoice.payment_failed drives the journey"
    modern = interpret(event("payment_intent.payment_failed", intent("pi_3", "cus_2")))  # no `invoice` key
    assert modern.ignored is None and modern.invoice_unknown


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (intent("pi_4", None, invoice=None), "PaymentIntent pi_4 has no customer: nothing can be retried off-session"),
        (invoice("in_4", "cus_4", amount=0), "invoice in_4 cannot start a journey: amount: Input should be greater than 0"),
    ],
)
def test_unusable_failures_are_ignored_with_the_reason(obj, reason):
    kind = "invoice.payment_failed" if obj["object"] == "invoice" else "payment_intent.payment_failed"
    assert interpret(event(kind, obj)).ignored == reason


def test_success_events_target_the_invoice_first_then_the_intent():
    assert interpret(event("invoice.paid", invoice("in_5", "c", status="paid"))).targets == ("in_5",)
    assert interpret(event("payment_intent.succeeded", intent("pi_5", "c", status="succeeded", invoice="in_5"))).targets == ("in_5", "pi_5")
    assert interpret(event("payment_intent.succeeded", intent("pi_6", "c", status="succeeded"))).targets == ("pi_6",)


def test_payment_method_events_name_the_customer_and_the_method():
    attached = interpret(event("payment_method.attached", card("pm_new", "cus_7", country="US")))
    assert (attached.action, attached.targets, attached.deferred) == (Action.method_updated, ("cus_7",), True)
    assert attached.payment_method == PaymentMethod(id="pm_new", brand="mastercard", funding="credit", country="US", exp_month=12, exp_year=2032, default=True, fingerprint="fp_pm_new")
    setup = interpret(event("setup_intent.succeeded", {"id": "seti_1", "object": "setup_intent", "customer": "cus_7", "payment_method": "pm_s"}))
    assert setup.targets == ("cus_7",) and setup.payment_method == PaymentMethod(id="pm_s", default=True)
    customer = {"id": "cus_7", "object": "customer", "invoice_settings": {"default_payment_method": "pm_d"}}
    changed = interpret(event("customer.updated", customer, previous_attributes={"invoice_settings": {"default_payment_method": "pm_old"}}))
    assert changed.targets == ("cus_7",) and changed.payment_method.id == "pm_d"


@pytest.mark.parametrize(
    ("kind", "obj", "extra", "reason"),
    [
        ("customer.updated", {"id": "cus_8", "object": "customer", "invoice_settings": {"default_payment_method": "pm_d"}},
         {"previous_attributes": {"email": "old@example.com"}}, "the customer's default payment method did not change"),
        ("customer.updated", {"id": "cus_8", "object": "customer", "invoice_settings": {"default_payment_method": None}},
         {"previous_attributes": {"invoice_settings": {"default_payment_method": "pm_d"}}}, "the default payment method was removed, not replaced"),
        ("setup_intent.succeeded", {"id": "seti_2", "object": "setup_intent", "customer": "cus_8", "payment_method": None}, {},
         "the SetupIntent saved no payment method"),
        ("payment_method.attached", {**card("pm_x", "cus_8"), "customer": None}, {}, "the payment method has no customer"),
    ],
)
def test_method_events_that_change_nothing_are_ignored(kind, obj, extra, reason):
    assert interpret(event(kind, obj, **extra)).ignored == reason


def test_disputes_pause_and_resume_the_charge_payment():
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1", "payment_intent": "pi_9", "status": "needs_response"}
    opened = interpret(event("charge.dispute.created", dispute))
    assert (opened.action, opened.targets, opened.reason) == (Action.pause, ("pi_9",), "a dispute was opened")
    expanded = {**dispute, "charge": {"id": "ch_1", "invoice": "in_9", "payment_intent": "pi_9"}}
    assert interpret(event("charge.dispute.closed", expanded)).targets == ("in_9", "pi_9")


def test_cancellations_by_others_cancel_and_our_own_hand_off_is_recognised():
    voided = interpret(event("invoice.voided", invoice("in_10", "c", status="void")))
    assert (voided.action, voided.targets, voided.reason) == (Action.cancel, ("in_10",), "the invoice was voided in Stripe")
    deleted = interpret(event("customer.subscription.deleted", {"id": "sub_1", "object": "subscription", "customer": "cus_1", "latest_invoice": "in_11"}))
    assert (deleted.targets, deleted.subscription, deleted.deferred) == (("in_11",), ("sub_1", "cus_1"), True)
    ours = event("invoice.marked_uncollectible", invoice("in_12", "c", status="uncollectible"))
    ours["request"] = {"id": "req_1", "idempotency_key": "dunning-in_12:escalate:hand_off"}
    assert interpret(ours).ignored == "caused by the engine's own escalation (dunning-in_12:escalate:hand_off)"
    theirs = event("invoice.marked_uncollectible", invoice("in_12", "c", status="uncollectible"))
    theirs["request"] = {"id": "req_2", "idempotency_key": "8a0c2c1e-dashboard"}
    assert interpret(theirs).action is Action.cancel and interpret(theirs).ignored is None


def test_unknown_types_and_headerless_events():
    assert interpret(event("customer.created", {"id": "cus_1", "object": "customer"})).ignored == (
        "event type customer.created is not one the engine acts on"
    )
    with pytest.raises(UnusableEvent, match="no `type`"):
        interpret({"id": "evt_1", "created": T})
    with pytest.raises(UnusableEvent, match="integer `created`"):
        interpret({"id": "evt_1", "type": "invoice.paid", "created": "yesterday"})


def test_signature_header_is_what_the_stripe_sdk_verifies():
    body = b'{"id": "evt_1"}'
    header = signature_header(body, SECRET, timestamp=T)
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={expected}"
    assert stripe.WebhookSignature.verify_header(body.decode(), header, SECRET, tolerance=None)


def test_the_documentation_lists_every_routed_event():
    from tests.support import ROOT

    doc = (ROOT / "docs" / "webhooks.md").read_text()
    missing = [kind for kind in ROUTES if f"`{kind}`" not in doc]
    assert not missing, f"docs/webhooks.md does not describe {missing}"
