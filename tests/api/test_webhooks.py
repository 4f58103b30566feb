"""POST /webhooks/stripe against a real dev server: signatures, limits, the inbox, duplicates, outages."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import timedelta

import pytest

from dunning.api.webhooks import SOURCE
from dunning.enums import Stage
from dunning.journey import JourneyStatus
from dunning.scenarios import Scenario
from tests.support import start_dev_server
from tests.webhook_support import (
    FAST_POLICY,
    event,
    exists,
    http,
    invoice,
    listed,
    post_event,
    signed,
    signed_headers,
    webhook_app,
)


@pytest.fixture(scope="module")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
def harness(dev_env, harness_factory, tmp_path):
    return harness_factory(dev_env.client, tmp_path, FAST_POLICY)


def scenario(invoice_id: str, customer: str) -> Scenario:
    return Scenario.model_validate(
        {
            "id": invoice_id,
            "amount": 2500,
            "currency": "usd",
            "failed_at": "2026-11-22T09:00:00Z",
            "customer": {"id": customer},
            "payment_methods": [{"id": f"pm_{invoice_id}", "brand": "visa", "default": True, "behavior": {"default": {"decline_code": "insufficient_funds"}}}],
        }
    )


async def test_bad_stale_or_missing_signatures_are_refused_and_nothing_is_recorded(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client)
    failure = event("invoice.payment_failed", invoice("in_sig", "cus_sig"))
    async with http(app) as client:
        wrong = await post_event(client, failure, secret="whsec_someone_else")
        stale = await post_event(client, failure, timestamp=int(time.time()) - 301)
        body, headers = signed(failure)
        tampered = await client.post("/webhooks/stripe", content=body.replace(b"2500", b"1"), headers=headers)
        missing = await client.post("/webhooks/stripe", content=body, headers={"Content-Type": "application/json"})
    for response in (wrong, stale, tampered):
        assert response.status_code == 400
        assert "invalid Stripe-Signature" in response.json()["detail"]
        assert "STRIPE_WEBHOOK_SECRET" in response.json()["detail"]
    assert "Timestamp outside the tolerance zone" in stale.json()["detail"]
    assert missing.status_code == 400 and "missing Stripe-Signature header" in missing.json()["detail"]
    assert sum(harness.store.webhook_event_counts().values()) == 0
    assert not await exists(dev_env.client, "dunning-in_sig")


async def test_malformed_or_oversized_bodies(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client)
    async with http(app) as client:
        body = b'{"id": "evt_1", "type": '
        not_json = await client.post("/webhooks/stripe", content=body, headers=signed_headers(body))
        body = json.dumps(["not", "an", "event"]).encode()
        not_event = await client.post("/webhooks/stripe", content=body, headers=signed_headers(body))
        body = json.dumps({"id": "evt_2", "object": "event", "type": "invoice.paid"}).encode()
        no_created = await client.post("/webhooks/stripe", content=body, headers=signed_headers(body))
        body = b"{" + b" " * (1 << 20) + b"}"
        too_big = await client.post("/webhooks/stripe", content=body, headers=signed_headers(body))
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["detail"]
    assert not_event.status_code == 400 and "not a Stripe event: the body is not a JSON object" in not_event.json()["detail"]
    assert no_created.status_code == 400 and "integer `created`" in no_created.json()["detail"]
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    assert sum(harness.store.webhook_event_counts().values()) == 0


async def test_without_a_webhook_secret_the_endpoint_says_how_to_configure_it(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client, stripe_webhook_secret=None)
    async with http(app) as client:
        response = await post_event(client, event("invoice.paid", invoice("in_x", "cus_x")))
    assert response.status_code == 503 and "set STRIPE_WEBHOOK_SECRET" in response.json()["detail"]


async def test_unknown_event_types_are_answered_ignored_and_counted(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client)
    unknown = event("customer.created", {"id": "cus_new", "object": "customer"})
    async with http(app) as client:
        first = await post_event(client, unknown)
        again = await post_event(client, unknown)
    assert first.status_code == again.status_code == 200
    assert first.json()["status"] == "ignored" and "customer.created is not one the engine acts on" in first.json()["detail"]
    assert again.json()["status"] == "duplicate"
    counts = harness.store.webhook_event_counts()
    assert counts["ignored"] == 1 and counts["received"] == counts["processed"] == counts["failed"] == 0


async def test_duplicate_failure_deliveries_start_one_journey_that_ends_recovered(dev_env, harness, tmp_path):
    """The same event 12 times at once and 3 more times later: one start; the paid event, twice, recovers it."""
    harness.gateway.register(scenario("in_dup", "cus_dup"))
    app = webhook_app(harness, tmp_path, dev_env.client)
    failure = event("invoice.payment_failed", invoice("in_dup", "cus_dup"))
    async with http(app) as client, harness.worker():
        burst = await asyncio.gather(*(post_event(client, failure) for _ in range(12)))
        later = [await post_event(client, failure) for _ in range(3)]
        statuses = sorted(r.json()["status"] for r in [*burst, *later])
        assert all(r.status_code == 200 for r in [*burst, *later])
        assert statuses == ["duplicate"] * 14 + ["processed"]
        journeys = await listed(client, "cus_dup", want=1)
        assert [j["journey_id"] for j in journeys] == ["dunning-in_dup"]

        paid = event("invoice.paid", invoice("in_dup", "cus_dup", status="paid"))
        answers = await asyncio.gather(post_event(client, paid), post_event(client, paid))
        assert sorted(a.json()["status"] for a in answers) == ["duplicate", "processed"]
        handle = dev_env.client.get_workflow_handle("dunning-in_dup", result_type=JourneyStatus)
        status = await asyncio.wait_for(handle.result(), 30)
        # Stripe's next failure event for the paid invoice (a new event id) does not reopen it:
        late = await post_event(client, event("invoice.payment_failed", invoice("in_dup", "cus_dup"), created=failure["created"] - 1))
        assert late.json() == {**late.json(), "status": "processed", "detail": "journey dunning-in_dup already ended; a late failure event does not reopen it"}
        await asyncio.sleep(0.5)  # let visibility catch up before listing again
        assert [j["journey_id"] for j in await listed(client, "cus_dup", want=1)] == ["dunning-in_dup"]
    assert status.stage is Stage.recovered and "paid out of band (stripe invoice.paid)" in status.end_reason
    assert not any(e.kind == "payment_failed" for e in status.timeline), "repeats never reach the journey"
    assert harness.store.webhook_event_counts()["processed"] == 3


def _closed_address() -> str:
    """A loopback address nothing listens on: Temporal is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_when_temporal_is_down_the_event_fails_and_its_redelivery_is_acted_on(dev_env, harness, tmp_path):
    closed = _closed_address()
    app = webhook_app(harness, tmp_path, None, temporal_address=closed)
    failure = event("invoice.payment_failed", invoice("in_down", "cus_down"))
    async with http(app) as client:
        down = await post_event(client, failure)
        assert down.status_code == 503 and closed in down.json()["detail"]
        assert harness.store.webhook_event_counts()["failed"] == 1
        app.state.services.client = dev_env.client  # Temporal is back; Stripe redelivers
        redelivered = await post_event(client, failure)
    assert redelivered.status_code == 200 and redelivered.json()["status"] == "processed"
    assert await exists(dev_env.client, "dunning-in_down")
    counts = harness.store.webhook_event_counts()
    assert (counts["failed"], counts["processed"]) == (0, 1)
    await dev_env.client.get_workflow_handle("dunning-in_down").terminate("test over")


async def test_an_answer_past_its_time_budget_is_accepted_and_the_start_still_happens_once(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client, dunning_webhook_answer_within_ms=0)
    failure = event("invoice.payment_failed", invoice("in_budget", "cus_budget"))
    async with http(app) as client:
        answer = await post_event(client, failure)
        assert answer.status_code == 200 and answer.json()["status"] == "accepted", answer.text
        again = await post_event(client, failure)  # Stripe retrying while the start is under way
        assert again.json()["status"] == "duplicate"
        await app.state.webhooks.idle(30)
        assert len(await listed(client, "cus_budget", 1)) == 1
    counts = harness.store.webhook_event_counts()
    assert (counts["received"], counts["processed"], counts["failed"]) == (0, 1, 0)
    await dev_env.client.get_workflow_handle("dunning-in_budget").terminate("test over")


async def test_an_accepted_event_whose_start_then_fails_is_started_by_the_sweeper(dev_env, harness, tmp_path):
    closed = _closed_address()
    app = webhook_app(harness, tmp_path, None, temporal_address=closed, dunning_webhook_answer_within_ms=0)
    failure = event("invoice.payment_failed", invoice("in_later", "cus_later"))
    async with http(app) as client:
        answer = await post_event(client, failure)
        assert answer.json()["status"] == "accepted", "Stripe will not redeliver: the engine owns the retry"
        ingest = app.state.webhooks
        await ingest.idle(30)
        assert harness.store.webhook_event_counts()["failed"] == 1
        app.state.services.client = dev_env.client  # Temporal is back
        assert await ingest.sweep_once(older_than=timedelta(0)) == 1
        await ingest.idle(30)
        assert await exists(dev_env.client, "dunning-in_later")
        assert await ingest.sweep_once(older_than=timedelta(0)) == 0, "nothing left to do"
        await ingest.stop()
    counts = harness.store.webhook_event_counts()
    assert (counts["failed"], counts["processed"]) == (0, 1)
    await dev_env.client.get_workflow_handle("dunning-in_later").terminate("test over")


async def test_the_sweeper_acts_on_events_a_crash_left_received_or_that_failed(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client)
    crashed = event("invoice.payment_failed", invoice("in_crash", "cus_crash"))
    failed = event("invoice.payment_failed", invoice("in_failed", "cus_crash"))
    # What a process that died between recording and acting leaves behind, and a failed attempt:
    for evt in (crashed, failed):
        harness.store.record_webhook_event(event_id=evt["id"], source=SOURCE, type=evt["type"], payload=evt)
    harness.store.mark_webhook_event(failed["id"], "failed", "Temporal was unreachable")
    ingest = app.state.webhooks
    assert await ingest.sweep_once() == 0, "too recent: their own requests may still be running"
    assert await ingest.sweep_once(older_than=timedelta(0)) == 2
    assert await exists(dev_env.client, "dunning-in_crash") and await exists(dev_env.client, "dunning-in_failed")
    assert harness.store.webhook_event_counts()["processed"] == 2
    assert await ingest.sweep_once(older_than=timedelta(0)) == 0, "nothing left to do"
    await ingest.stop()
    for journey_id in ("dunning-in_crash", "dunning-in_failed"):
        await dev_env.client.get_workflow_handle(journey_id).terminate("test over")


async def test_answers_in_milliseconds_without_a_worker(dev_env, harness, tmp_path):
    app = webhook_app(harness, tmp_path, dev_env.client)
    async with http(app) as client:
        await post_event(client, event("invoice.payment_failed", invoice("in_warm", "cus_fast")))  # warm-up
        took = []
        for n in range(20):
            started = time.perf_counter()
            response = await post_event(client, event("invoice.payment_failed", invoice(f"in_fast{n}", "cus_fast")))
            took.append(time.perf_counter() - started)
            assert response.json()["status"] == "processed"
    assert sorted(took)[len(took) // 2] < 0.25, f"median {sorted(took)[len(took) // 2]:.3f} s"
    for n in range(20):
        assert await exists(dev_env.client, f"dunning-in_fast{n}")
