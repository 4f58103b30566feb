"""StripeGateway against localstripe (a stateful fake Stripe from PyPI), run as a subprocess.

The launcher (tests/activities/localstripe_server.py) serves it on loopback with its
/tmp/localstripe.pickle persistence switched off, and fills in the documented Stripe behaviour
localstripe lacks that the gateway uses: PaymentIntent confirm with `payment_method` and
`off_session`, card errors in Stripe's shape, Idempotency-Key replay, and the customer's payment
method list.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import stripe

from activities.stripe_gateway import StripeGateway
from dunning.rules import RetryLimits
from dunning.models import Customer, FailedPayment, PaymentMethod
from dunning.ports import ChargeRequest, ReconcileRequest
from tests.activities.localstripe_server import FAILING_CARD, WORKING_CARD, LocalStripe, run_localstripe


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory) -> Iterator[LocalStripe]:
    with run_localstripe(tmp_path_factory.mktemp("localstripe") / "localstripe.log") as server:
        yield server


def _card(client: stripe.StripeClient, number: str, customer_id: str) -> str:
    method = client.v1.payment_methods.create(
        {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    client.v1.payment_methods.attach(method.id, {"customer": customer_id})
    return method.id


def _off_session_intent(client: stripe.StripeClient, customer_id: str, method_id: str) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(
        {
            "amount": 2500,
            "currency": "usd",
            "customer": customer_id,
            "payment_method": method_id,
            "confirm": True,
            "off_session": True,
        }
    )


def _reconcile(intent_id: str) -> ReconcileRequest:
    return ReconcileRequest(
        journey_id=f"dunning-{intent_id}", attempt_number=1, payment_reference=intent_id, payment_kind="payment_intent"
    )


def test_off_session_decline_and_success_read_back(localstripe: LocalStripe) -> None:
    client = localstripe.client()
    customer = client.v1.customers.create({"email": "ada@example.com"})
    failing = _card(client, FAILING_CARD, customer.id)
    working = _card(client, WORKING_CARD, customer.id)

    with pytest.raises(stripe.CardError) as declined:
        _off_session_intent(client, customer.id, failing)
    failed_charge = client.v1.charges.retrieve(declined.value.error.charge)
    assert failed_charge.status == "failed"

    gateway = StripeGateway(localstripe.client())
    outcome = gateway.read_back(_reconcile(failed_charge.payment_intent))
    assert outcome.status == "declined"
    assert outcome.charge_id == failed_charge.id
    assert outcome.payment_intent_id == failed_charge.payment_intent
    assert outcome.decline.payment_method == failing

    paid = _off_session_intent(client, customer.id, working)
    settled = gateway.read_back(_reconcile(paid.id))
    charges = client.v1.charges.list({"customer": customer.id}).data
    assert sorted(c.status for c in charges) == ["failed", "succeeded"]
    (success,) = [c for c in charges if c.status == "succeeded"]
    assert (settled.status, settled.charge_id, settled.payment_intent_id) == ("succeeded", success.id, paid.id)


def test_gateway_retries_a_failed_intent_off_session_with_the_chosen_method_once_per_key(localstripe: LocalStripe) -> None:
    client = localstripe.client()
    customer = client.v1.customers.create({"email": "grace@example.com"})
    failing = _card(client, FAILING_CARD, customer.id)
    working = _card(client, WORKING_CARD, customer.id)
    client.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": failing}})
    with pytest.raises(stripe.CardError) as declined:
        _off_session_intent(client, customer.id, failing)
    assert declined.value.error.type == "card_error"
    intent_id = declined.value.error.payment_intent["id"]
    journey_id = f"dunning-{intent_id}"
    gateway = StripeGateway(localstripe.client())

    payment = FailedPayment(
        id=intent_id, kind="payment_intent", amount=2500, currency="usd", failed_at=datetime.now(UTC),
        customer=Customer(id=customer.id),
    )
    context = gateway.collection_context(payment)
    assert [(m.id, m.default) for m in context.payment_methods] == [(failing, True), (working, False)]
    assert context.customer.email == "grace@example.com"
    assert context.update_url is None  # localstripe has no Billing portal: the engine goes without a link
    assert context.initial_decline.payment_method == failing
    assert context.initial_decline.decline_code == "generic_decline"
    methods = {m.id: m for m in context.payment_methods}

    def attempt(number: int, method: PaymentMethod) -> ChargeRequest:
        return ChargeRequest(
            journey_id=journey_id, attempt_number=number, payment_reference=intent_id, payment_kind="payment_intent",
            payment_method=method, amount=2500, currency="usd", at=datetime.now(UTC), limits=RetryLimits(),
        )

    first = gateway.charge(attempt(1, methods[failing]))
    assert (first.status, first.payment_intent_id) == ("declined", intent_id)
    assert (first.decline.payment_method, first.decline.decline_code) == (failing, "generic_decline")
    second = gateway.charge(attempt(2, methods[working]))
    assert (second.status, second.payment_intent_id) == ("succeeded", intent_id)
    # An activity retry sends the same key: Stripe replays the first result and charges nothing.
    assert gateway.charge(attempt(2, methods[working])) == second
    assert gateway.charge(attempt(1, methods[failing])) == first

    charges = [c for c in client.v1.charges.list({"customer": customer.id}).data if c.payment_intent == intent_id]
    assert sorted((c.status, c.payment_method) for c in charges) == sorted(
        [("failed", failing), ("failed", failing), ("succeeded", working)]
    )
    assert first.charge_id in {c.id for c in charges if c.status == "failed"}
    assert second.charge_id == next(c.id for c in charges if c.status == "succeeded")
    events = [e for e in client.v1.events.list({"limit": 100}).data if e.data.object.id == intent_id]
    keyed = sorted((e.type, e.request.idempotency_key) for e in events if (e.request.idempotency_key or "").startswith("dunning-"))
    assert keyed == [
        ("payment_intent.payment_failed", f"{journey_id}:attempt:1"),
        ("payment_intent.succeeded", f"{journey_id}:attempt:2"),
    ]
    assert gateway.read_back(_reconcile(intent_id)).status == "succeeded"
