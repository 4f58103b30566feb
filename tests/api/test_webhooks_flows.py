"""Webhook deliveries out of order, repeated, concurrent — on a dev server with a worker, journeys
compressed to seconds. Each ends with exactly one correct outcome: no journey for a payment already
paid, the new card charged once, cancellations only by others, disputes pausing the journey."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from temporalio.service import RPCError

from dunning.enums import Stage
from dunning.journey import JourneyStatus
from dunning.scenarios import Scenario
from tests.support import start_dev_server
from tests.webhook_support import FAST_POLICY, card, event, exists, http, intent, invoice, post_event, webhook_app

WAIT = 60  # seconds: a whole compressed journey is 40 s


@pytest.fixture(scope="module")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
def harness(dev_env, harness_factory, tmp_path):
    return harness_factory(dev_env.client, tmp_path, FAST_POLICY)


def scenario(reference: str, customer: str, *, new_card: bool = False) -> Scenario:
    data: dict[str, Any] = {
        "id": reference,
        "amount": 2500,
        "currency": "usd",
        "failed_at": "2026-11-22T09:00:00Z",
        "customer": {"id": customer, "email": "c@example.com"},
        "payment_methods": [
            {"id": "pm_old", "brand": "visa", "default": True, "fingerprint": f"fp_old_{reference}",
             "behavior": {"default": {"decline_code": "insufficient_funds"}}}
        ],
    }
    if new_card:
        data["customer_response"] = {
            "after_messages": 1, "delay": "1h", "action": "update_payment_method",
            "new_payment_method": {"id": "pm_new", "brand": "mastercard", "fingerprint": f"fp_new_{reference}", "behavior": {"default": "succeeded"}},
        }
    return Scenario.model_validate(data)


async def running(client, journey_id: str) -> JourneyStatus:
    """The journey's status once it has opened (its first activities ran)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            status = await client.get_workflow_handle(journey_id).query("status", result_type=JourneyStatus)
        except RPCError:
            status = None
        if status is not None:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"{journey_id} did not open within 20 s")


def charges(harness, journey_id: str) -> list[tuple[str, str]]:
    return [(c.payment_method_id, c.outcome.status) for c in harness.gateway.charges_by_key().values() if c.journey_id == journey_id]


async def test_paid_before_failed_starts_no_journey(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client)
    now = int(time.time())
    failed = event("invoice.payment_failed", invoice("in_pbf", "cus_pbf"), created=now - 60)
    paid = event("invoice.paid", invoice("in_pbf", "cus_pbf", status="paid"), created=now)
    async with http(app) as client:
        first = await post_event(client, paid)
        late = await post_event(client, failed)
        again = await post_event(client, failed)
    assert first.json() == {"event_id": paid["id"], "status": "processed", "detail": "no journey for in_pbf; remembered"}
    assert late.json()["status"] == "ignored"
    assert late.json()["detail"] == f"in_pbf was already settled by invoice.paid ({paid['id']}); no journey started"
    assert again.json()["status"] == "duplicate"
    assert not await exists(dev_env.client, "dunning-in_pbf")


async def test_paid_and_failed_delivered_at_once_never_leave_a_journey_collecting(dev_env, harness, tmp_path):
    """Whichever write comes second sees the other: no journey, or one that recovers at once; no charge."""
    app = webhook_app(harness, tmp_path, dev_env.client)
    now = int(time.time())
    references = [f"in_race{n}" for n in range(6)]
    async with http(app) as client, harness.worker():
        for reference in references:
            harness.gateway.register(scenario(reference, f"cus_{reference}"))
        pairs = [
            (event("invoice.payment_failed", invoice(r, f"cus_{r}"), created=now - 5), event("invoice.paid", invoice(r, f"cus_{r}", status="paid"), created=now))
            for r in references
        ]
        answers = await asyncio.gather(*(post_event(client, e) for pair in pairs for e in pair))
        assert all(a.status_code == 200 for a in answers)
        await app.state.webhooks.idle(WAIT)  # answers given while others were under way say `accepted`
        for reference in references:
            journey_id = f"dunning-{reference}"
            if await exists(dev_env.client, journey_id):
                handle = dev_env.client.get_workflow_handle(journey_id, result_type=JourneyStatus)
                status = await asyncio.wait_for(handle.result(), WAIT)
                assert status.stage is Stage.recovered, status.timeline
            assert charges(harness, journey_id) == []


async def test_card_updated_before_the_failure_arrives_is_charged_once(dev_env, harness, tmp_path):
    harness.gateway.register(scenario("pi_ubf", "cus_ubf", new_card=True))
    harness.gateway.attach_payment_method("pi_ubf", "pm_new")  # the customer adds a card in Stripe…
    app = webhook_app(harness, tmp_path, dev_env.client)
    now = int(time.time())
    attached = event("payment_method.attached", card("pm_new", "cus_ubf"), created=now)
    failed = event("payment_intent.payment_failed", intent("pi_ubf", "cus_ubf", invoice=None, failed_method="pm_old"), created=now - 2)
    async with http(app) as client, harness.worker():
        first = await post_event(client, attached)  # …and its webhook overtakes the failure's
        assert first.json()["status"] == "accepted"
        await app.state.webhooks.idle(20)
        assert (await post_event(client, failed)).json()["status"] == "processed"
        handle = dev_env.client.get_workflow_handle("dunning-pi_ubf", result_type=JourneyStatus)
        status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.stage is Stage.recovered
    assert charges(harness, "dunning-pi_ubf") == [("pm_new", "succeeded")]
    assert status.attempts[0].payment_method_id == "pm_old" and status.attempts[0].number == 0
    assert harness.store.webhook_event_counts()["processed"] == 2


async def test_card_update_reaches_the_open_journey_once_however_often_it_is_delivered(dev_env, harness, tmp_path):
    harness.gateway.register(scenario("in_upd", "cus_upd", new_card=True))
    app = webhook_app(harness, tmp_path, dev_env.client)
    async with http(app) as client, harness.worker():
        assert (await post_event(client, event("invoice.payment_failed", invoice("in_upd", "cus_upd")))).json()["status"] == "processed"
        await running(dev_env.client, "dunning-in_upd")
        harness.gateway.attach_payment_method("in_upd", "pm_new")
        attached = event("payment_method.attached", card("pm_new", "cus_upd"))
        answers = await asyncio.gather(*(post_event(client, attached) for _ in range(4)))
        assert sorted(a.json()["status"] for a in answers) == ["accepted", "duplicate", "duplicate", "duplicate"]
        await app.state.webhooks.idle(40)
        handle = dev_env.client.get_workflow_handle("dunning-in_upd", result_type=JourneyStatus)
        status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.stage is Stage.recovered
    assert [c for c in charges(harness, "dunning-in_upd") if c[0] == "pm_new"] == [("pm_new", "succeeded")]
    assert sum(1 for e in status.timeline if e.kind == "payment_method") == 1
    assert status.attempts[-1].payment_method_id == "pm_new"
    counts = harness.store.webhook_event_counts()
    assert (counts["processed"], counts["received"], counts["failed"]) == (2, 0, 0)


async def test_cancelled_by_others_but_not_by_our_own_hand_off(dev_env, harness, tmp_path):
    harness.gateway.register(scenario("in_cx", "cus_cx"))
    app = webhook_app(harness, tmp_path, dev_env.client)
    async with http(app) as client, harness.worker():
        await post_event(client, event("invoice.payment_failed", invoice("in_cx", "cus_cx")))
        await running(dev_env.client, "dunning-in_cx")
        ours = event("invoice.marked_uncollectible", invoice("in_cx", "cus_cx", status="uncollectible"))
        ours["request"] = {"id": "req_ours", "idempotency_key": "dunning-in_cx:escalate:hand_off"}
        ignored = await post_event(client, ours)
        assert ignored.json()["status"] == "ignored" and "engine's own escalation" in ignored.json()["detail"]
        assert (await running(dev_env.client, "dunning-in_cx")).stage is not Stage.cancelled
        voided = await post_event(client, event("invoice.voided", invoice("in_cx", "cus_cx", status="void")))
        assert voided.json() == {**voided.json(), "status": "processed", "detail": "signalled dunning-in_cx"}
        handle = dev_env.client.get_workflow_handle("dunning-in_cx", result_type=JourneyStatus)
        status = await asyncio.wait_for(handle.result(), WAIT)
    assert status.stage is Stage.cancelled
    assert status.end_reason == "the invoice was voided in Stripe (invoice.voided)"


async def test_a_deleted_subscription_cancels_every_open_journey_of_it(dev_env, harness, tmp_path):
    """Two unpaid invoices of one subscription, one of another: only the first two end."""
    references = {"in_sub1": "sub_gone", "in_sub2": "sub_gone", "in_kept": "sub_kept"}
    app = webhook_app(harness, tmp_path, dev_env.client)
    async with http(app) as client, harness.worker():
        for reference, subscription in references.items():
            harness.gateway.register(scenario(reference, "cus_sub"))
            failed = invoice(reference, "cus_sub", parent={"type": "subscription_details", "subscription_details": {"subscription": subscription}})
            await post_event(client, event("invoice.payment_failed", failed))
            await running(dev_env.client, f"dunning-{reference}")
        deleted = {"id": "sub_gone", "object": "subscription", "customer": "cus_sub", "status": "canceled", "latest_invoice": "in_sub2"}
        assert (await post_event(client, event("customer.subscription.deleted", deleted))).json()["status"] == "accepted"
        await app.state.webhooks.idle(WAIT)
        for reference in ("in_sub1", "in_sub2"):
            handle = dev_env.client.get_workflow_handle(f"dunning-{reference}", result_type=JourneyStatus)
            status = await asyncio.wait_for(handle.result(), WAIT)
            assert (status.stage, status.end_reason) == (Stage.cancelled, "the subscription was deleted in Stripe (customer.subscription.deleted)")
        assert (await running(dev_env.client, "dunning-in_kept")).stage is not Stage.cancelled
        await dev_env.client.get_workflow_handle("dunning-in_kept").terminate("test over")


async def test_a_dispute_pauses_the_journey_and_its_close_resumes_it(dev_env, harness, tmp_path):
    harness.gateway.register(scenario("pi_dsp", "cus_dsp"))
    app = webhook_app(harness, tmp_path, dev_env.client)
    dispute = {"id": "dp_1", "object": "dispute", "charge": "ch_1", "payment_intent": "pi_dsp", "reason": "fraudulent", "status": "needs_response"}
    async with http(app) as client, harness.worker():
        await post_event(client, event("payment_intent.payment_failed", intent("pi_dsp", "cus_dsp", invoice=None, failed_method="pm_old")))
        await running(dev_env.client, "dunning-pi_dsp")
        assert (await post_event(client, event("charge.dispute.created", dispute))).json()["status"] == "accepted"
        await app.state.webhooks.idle(20)
        paused = await _until(dev_env.client, "dunning-pi_dsp", lambda s: s.paused)
        assert paused.stage is Stage.paused
        closed = event("charge.dispute.closed", {**dispute, "status": "won"})
        assert (await post_event(client, closed)).json()["status"] == "accepted"
        await app.state.webhooks.idle(20)
        resumed = await _until(dev_env.client, "dunning-pi_dsp", lambda s: not s.paused)
    assert [e.kind for e in resumed.timeline if e.kind in ("paused", "resumed")] == ["paused", "resumed"]
    assert "a dispute was opened (charge.dispute.created)" in [e.text for e in resumed.timeline]
    await dev_env.client.get_workflow_handle("dunning-pi_dsp").terminate("test over")


async def _until(client, journey_id: str, condition) -> JourneyStatus:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = await running(client, journey_id)
        if condition(status):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"{journey_id}: condition not met within 20 s")


async def test_paid_after_the_hand_off_recalls_the_placement(dev_env, harness, tmp_path):
    from datetime import UTC, datetime, timedelta

    from dunning.collections import placement_id_for
    from dunning.store.records import PlacementRecord

    placed_at = datetime.now(UTC) - timedelta(days=1)
    harness.store.create_placement(PlacementRecord(
        placement_id=placement_id_for("dunning-in_placed"), journey_id="dunning-in_placed", payment_reference="in_placed",
        customer_id="cus_placed", contact={"email": "p@example.com"}, amount=2500, currency="usd",
        original_due_date=placed_at - timedelta(days=61), first_failure_at=placed_at - timedelta(days=60),
        attempts_summary={"count": 8}, messages_summary={"count_by_channel": {"email": 5}}, disputed=False,
        policy_version="default@abc", created_at=placed_at,
    ))
    app = webhook_app(harness, tmp_path, dev_env.client)
    paid = event("invoice.paid", invoice("in_placed", "cus_placed", status="paid"))
    async with http(app) as client:
        answer = await post_event(client, paid)
    assert answer.json()["detail"] == "recalled in_placed from the collection partner"
    placement = harness.store.placement_for_journey("dunning-in_placed")
    assert placement.recalled_at == datetime.fromtimestamp(paid["created"], tz=UTC) and placement.recall_source == "invoice.paid"


@pytest.fixture
def stripe_stub():
    from tests.webhook_support import StripeStub

    stub = StripeStub()
    yield stub
    stub.close()


async def test_with_a_stripe_key_intents_of_invoices_are_told_apart_and_methods_read(dev_env, harness, tmp_path, stripe_stub):
    """API versions since 2025-03-31 drop `invoice` from PaymentIntents: the dispatcher asks Stripe.
    A method known only by id (customer.updated) is read from Stripe before the update."""
    stripe_stub.listing("/v1/invoice_payments", lambda seen: (
        [{"id": "inpay_1", "object": "invoice_payment", "invoice": "in_parent"}]
        if seen.query.get("payment[payment_intent]") == "pi_ofinv" else []
    ))
    stripe_stub.object("/v1/payment_methods/pm_portal", card("pm_portal", "cus_key", brand="amex", fingerprint="fp_amex"))
    harness.gateway.register(scenario("in_key", "cus_key"))
    app = webhook_app(harness, tmp_path, dev_env.client, stripe_api_key="sk_test_webhooks", stripe_api_base=stripe_stub.url)
    async with http(app) as client, harness.worker():
        for reference in ("pi_alone", "pi_ofinv"):
            answer = await post_event(client, event("payment_intent.payment_failed", intent(reference, "cus_key")))
            assert answer.json()["status"] == "accepted"
        await app.state.webhooks.idle(20)
        assert await exists(dev_env.client, "dunning-pi_alone")
        assert not await exists(dev_env.client, "dunning-pi_ofinv")

        await post_event(client, event("invoice.payment_failed", invoice("in_key", "cus_key")))
        await running(dev_env.client, "dunning-in_key")
        customer = {"id": "cus_key", "object": "customer", "invoice_settings": {"default_payment_method": "pm_portal"}}
        updated = event("customer.updated", customer, previous_attributes={"invoice_settings": {"default_payment_method": "pm_old"}})
        assert (await post_event(client, updated)).json()["status"] == "accepted"
        await app.state.webhooks.idle(30)
        status = await _until(dev_env.client, "dunning-in_key", lambda s: any(e.kind == "payment_method" for e in s.timeline))
    assert any("pm_portal (amex) added/updated via stripe customer.updated" in e.text for e in status.timeline)
    lookups = [s.query.get("payment[payment_intent]") for s in stripe_stub.seen if s.path == "/v1/invoice_payments"]
    assert sorted(lookups) == ["pi_alone", "pi_ofinv"]
    assert harness.store.webhook_event_counts()["ignored"] == 1  # pi_ofinv, with the reason
    for journey_id in ("dunning-pi_alone", "dunning-in_key"):
        await dev_env.client.get_workflow_handle(journey_id).terminate("test over")
