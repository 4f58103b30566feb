"""What a webhook did not carry, StripeGateway.collection_context fills when the journey opens:
the customer's contact details and the decline of the failed attempt. Against a Stripe-shaped
server on loopback (official SDK, STRIPE_API_BASE)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from activities.stripe_gateway import StripeGateway
from dunning.config import Settings
from dunning.models import Customer, Decline, FailedPayment
from tests.webhook_support import StripeStub, card

T0 = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


@pytest.fixture
def stripe_stub():
    stub = StripeStub()
    yield stub
    stub.close()


@pytest.fixture
def gateway(stripe_stub) -> StripeGateway:
    return StripeGateway.from_settings(Settings(stripe_api_key="sk_test_context", stripe_api_base=stripe_stub.url))


def customer_object(**fields) -> dict:
    return {
        "id": "cus_1",
        "object": "customer",
        "email": "ines@example.fr",
        "name": "Inès Durand",
        "phone": "+33612345678",
        "address": {"country": "FR", "city": "Lyon"},
        "preferred_locales": ["fr-FR", "en"],
        "invoice_settings": {"default_payment_method": "pm_card"},
        **fields,
    }


def failed_charge(charge_id: str) -> dict:
    return {
        "id": charge_id,
        "object": "charge",
        "status": "failed",
        "failure_code": "card_declined",
        "payment_method": "pm_card",
        "outcome": {"type": "issuer_declined", "reason": "insufficient_funds", "advice_code": "try_again_later",
                    "network_decline_code": "51", "network_advice_code": "01"},
    }


def serve_customer(stub: StripeStub, **fields) -> None:
    stub.object("/v1/customers/cus_1", customer_object(**fields))
    stub.listing("/v1/customers/cus_1/payment_methods", [card("pm_card", "cus_1", brand="visa", country="FR")])


def from_webhook(reference: str, **fields) -> FailedPayment:
    """What a webhook gives: the customer id, maybe an email, no decline fields."""
    return FailedPayment(id=reference, amount=2500, currency="eur", failed_at=T0,
                         customer=Customer(id="cus_1", email="old@example.fr", timezone="Europe/Paris"), **fields)


def test_invoice_journey_gets_the_customer_and_the_decline_of_its_latest_payment(stripe_stub, gateway):
    stripe_stub.object("/v1/invoices/in_1", {
        "id": "in_1", "object": "invoice", "customer": "cus_1", "status": "open",
        "hosted_invoice_url": "https://invoice.stripe.com/i/test_in_1", "default_payment_method": None, "parent": None,
        "payments": {"object": "list", "has_more": False, "data": [
            {"id": "inpay_1", "created": 1, "payment": {"type": "payment_intent", "payment_intent": "pi_old"}},
            {"id": "inpay_2", "created": 2, "payment": {"type": "payment_intent", "payment_intent": "pi_1"}},
        ]},
    })
    stripe_stub.object("/v1/payment_intents/pi_1", {
        "id": "pi_1", "object": "payment_intent", "status": "requires_payment_method", "customer": "cus_1",
        "payment_method": None, "latest_charge": failed_charge("ch_1"),
        "last_payment_error": {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                               "charge": "ch_1", "payment_method": {"id": "pm_card", "object": "payment_method"}},
    })
    serve_customer(stripe_stub)
    context = gateway.collection_context(from_webhook("in_1"))
    assert context.customer == Customer(
        id="cus_1", name="Inès Durand", email="ines@example.fr", phone="+33612345678", country="FR",
        timezone="Europe/Paris", locale="fr-FR",
    )
    assert context.initial_decline == Decline(
        payment_method="pm_card", decline_code="insufficient_funds", advice_code="try_again_later",
        network_decline_code="51", network_advice_code="01",
    )
    assert [m.id for m in context.payment_methods if m.default] == ["pm_card"]
    invoice_read = next(s for s in stripe_stub.seen if s.path == "/v1/invoices/in_1")
    assert invoice_read.query == {"expand[0]": "payments"}
    intent_read = next(s for s in stripe_stub.seen if s.path == "/v1/payment_intents/pi_1")
    assert intent_read.query == {"expand[0]": "latest_charge"}


def test_intent_journey_without_an_error_object_reads_the_failed_charge(stripe_stub, gateway):
    stripe_stub.object("/v1/payment_intents/pi_2", {
        "id": "pi_2", "object": "payment_intent", "status": "requires_payment_method", "customer": "cus_1",
        "payment_method": "pm_card", "latest_charge": failed_charge("ch_2"), "last_payment_error": None,
    })
    stripe_stub.object("/v1/billing_portal/sessions", {"id": "bps_1", "object": "billing_portal.session", "url": "https://billing.stripe.com/p/session/test"})
    serve_customer(stripe_stub, preferred_locales=[], phone=None)
    context = gateway.collection_context(from_webhook("pi_2"))
    assert context.initial_decline == Decline(
        payment_method="pm_card", decline_code="insufficient_funds", advice_code="try_again_later",
        network_decline_code="51", network_advice_code="01",
    )
    assert (context.customer.locale, context.customer.phone, context.update_url) == ("en", None, "https://billing.stripe.com/p/session/test")


def test_a_known_decline_costs_no_extra_request_and_a_missing_intent_loses_only_the_fields(stripe_stub, gateway):
    invoice = {"id": "in_3", "object": "invoice", "customer": "cus_1", "hosted_invoice_url": "https://i", "parent": None,
               "payment_intent": "pi_gone"}  # the shape before API 2025-03-31
    stripe_stub.object("/v1/invoices/in_3", invoice)
    serve_customer(stripe_stub)
    known = from_webhook("in_3", initial_decline=Decline(payment_method="pm_card", decline_code="expired_card"))
    context = gateway.collection_context(known)
    assert context.initial_decline is None  # the journey keeps its own
    assert next(s for s in stripe_stub.seen if s.path == "/v1/invoices/in_3").query == {}
    assert not any(s.path.startswith("/v1/payment_intents") for s in stripe_stub.seen)

    unknown = gateway.collection_context(from_webhook("in_3"))  # GET /v1/payment_intents/pi_gone answers 404
    assert unknown.initial_decline is None and unknown.customer.email == "ines@example.fr"
    assert any(s.path == "/v1/payment_intents/pi_gone" for s in stripe_stub.seen)


def test_a_deleted_customer_leaves_the_webhook_details(stripe_stub, gateway):
    stripe_stub.object("/v1/invoices/in_4", {"id": "in_4", "object": "invoice", "customer": "cus_1", "hosted_invoice_url": "https://i", "parent": None})
    stripe_stub.object("/v1/customers/cus_1", {"id": "cus_1", "object": "customer", "deleted": True})
    stripe_stub.listing("/v1/customers/cus_1/payment_methods", [])
    context = gateway.collection_context(from_webhook("in_4"))
    assert context.customer is None and context.initial_decline is None
