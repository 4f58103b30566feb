"""A whole journey on Stripe's API as localstripe serves it: a real off-session decline, the signed
webhook localstripe itself delivers to the engine's HTTP service, a DunningWorkflow on a dev server
whose worker charges through StripeGateway, cycling to the customer's working card, one charge.

localstripe runs with the documented Stripe behaviour it lacks filled in by its launcher
(tests/activities/localstripe_server.py): PaymentIntent confirm with `payment_method` and
`off_session`, Idempotency-Key replay, events naming their request's idempotency key, the
customer's payment-method list.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import pytest
import stripe
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.outbox import OutboxSender
from activities.stripe_gateway import StripeGateway
from dunning.enums import Channel, Stage
from dunning.journey import JourneyStatus
from dunning.store.schema import WebhookEvent
from tests.activities.localstripe_server import API_KEY, FAILING_CARD, WORKING_CARD, LocalStripe, run_localstripe
from tests.support import start_dev_server
from tests.webhook_support import SECRET, webhook_app
from worker import build_worker

WAIT = 45.0  # seconds; the journey below recovers within a few
# Compressed to seconds, messaging rules opened up; the whole ladder is 30 s.
POLICY = """\
name: localstripe-fast
window: 30s
grace_period: 10s
cycle_payment_methods: true
timing:
  retry_hours: ["00:00", "23:59:59"]
  quiet_hours_end: "00:00"
  quiet_hours_start: "23:59:59"
  jitter: 0s
messaging: {max_per_24h: 10, max_per_7d: 20}
steps:
  - {id: notice, at: 0s, window: 2s, action: notify, channels: [email], template: payment_failed}
  - {id: retry-1, at: 3s, window: 2s, action: retry}
  - {id: retry-2, at: 8s, window: 2s, action: retry}
  - {id: retry-3, at: 16s, window: 2s, action: retry}
  - {id: hand-off, at: 30s, action: hand_off}
"""
EVENTS = ["payment_intent.payment_failed", "payment_intent.succeeded"]


@pytest.fixture(scope="module")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server()
    yield env
    await env.shutdown()


@asynccontextmanager
async def serving(app) -> AsyncIterator[str]:
    """The engine's HTTP service under uvicorn on a loopback port; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start: {task.exception() if task.done() else 'timeout'}")
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 15)
        finally:
            sock.close()


async def journey_handle(client: Client, journey_id: str, timeout: float) -> WorkflowHandle:
    """The journey once the webhook has started it."""
    handle = client.get_workflow_handle(journey_id, result_type=JourneyStatus)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await handle.describe()
            return handle
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def inbox(store) -> dict[str, tuple[str, str]]:
    with Session(store.engine) as session:
        rows = session.execute(select(WebhookEvent.event_id, WebhookEvent.type, WebhookEvent.status).where(WebhookEvent.source == "stripe"))
        return {event_id: (kind, status) for event_id, kind, status in rows}


async def settled_inbox(store, want: int, timeout: float) -> dict[str, tuple[str, str]]:
    """The inbox once `want` events are in it and none is still `received` (or the time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await asyncio.to_thread(inbox, store)
        if (len(rows) >= want and all(status != "received" for _, status in rows.values())) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


def customer_with_two_cards(client: stripe.StripeClient) -> tuple[str, str, str]:
    """A customer whose default card declines every charge, and a working second card."""
    customer = client.v1.customers.create({"email": "ada@example.com", "name": "Ada Lovelace"})
    methods = []
    for number in (FAILING_CARD, WORKING_CARD):
        method = client.v1.payment_methods.create(
            {"type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
        )
        client.v1.payment_methods.attach(method.id, {"customer": customer.id})
        methods.append(method.id)
    client.v1.customers.update(customer.id, {"invoice_settings": {"default_payment_method": methods[0]}})
    return customer.id, methods[0], methods[1]


def renewal_declined(client: stripe.StripeClient, customer_id: str, method_id: str) -> str:
    """The merchant's off-session renewal charge on the default card: declined. Its PaymentIntent id."""
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(
            {
                "amount": 2500,
                "currency": "usd",
                "customer": customer_id,
                "payment_method": method_id,
                "confirm": True,
                "off_session": True,
            },
            {"idempotency_key": f"renewal:{customer_id}"},
        )
    return declined.value.error.payment_intent["id"]


async def test_off_session_decline_webhook_journey_cycles_to_the_working_card_and_charges_once(
    dev_env, harness_factory, tmp_path
):
    harness = harness_factory(dev_env.client, tmp_path, POLICY)
    with run_localstripe(tmp_path / "localstripe.log") as localstripe:
        await _run(dev_env.client, harness, tmp_path, localstripe)


async def _run(client: Client, harness, tmp_path, localstripe: LocalStripe) -> None:
    stripe_client = localstripe.client()
    app = webhook_app(harness, tmp_path, client, stripe_api_key=API_KEY, stripe_api_base=localstripe.url)
    worker = build_worker(
        client,
        store=harness.store,
        gateway=StripeGateway(localstripe.client()),
        senders={channel: OutboxSender(channel, harness.store) for channel in Channel},
        task_queue=harness.task_queue,
        executor=ThreadPoolExecutor(4),
    )
    async with serving(app) as base_url, worker:
        # localstripe signs and POSTs its own events to the engine's webhook endpoint.
        await asyncio.to_thread(localstripe.deliver_webhooks, "engine", f"{base_url}/webhooks/stripe", SECRET, EVENTS)
        customer_id, failing, working = await asyncio.to_thread(customer_with_two_cards, stripe_client)
        intent_id = await asyncio.to_thread(renewal_declined, stripe_client, customer_id, failing)
        journey_id = f"dunning-{intent_id}"

        handle = await journey_handle(client, journey_id, timeout=20)
        final = await asyncio.wait_for(handle.result(), WAIT)
        rows = await settled_inbox(harness.store, want=2, timeout=20)
        status = await handle.query("status", result_type=JourneyStatus)

    assert final.stage is Stage.recovered, localstripe.log()
    assert status.stage is Stage.recovered
    assert [(a.number, a.payment_method_id, a.status) for a in status.attempts] == [
        (0, failing, "declined"),
        (1, working, "succeeded"),
    ]
    assert status.attempts[0].decline.decline_code == "generic_decline"

    # At localstripe: one succeeded charge for the payment, on the working card; the declines on the failing card.
    charges = [c for c in stripe_client.v1.charges.list({"customer": customer_id, "limit": 100}).data if c.payment_intent == intent_id]
    assert [(c.payment_method, c.amount) for c in charges if c.status == "succeeded"] == [(working, 2500)]
    assert [c.payment_method for c in charges if c.status == "failed"] == [failing]
    assert {c.status for c in charges} == {"succeeded", "failed"}
    assert status.attempts[1].charge_id == next(c.id for c in charges if c.status == "succeeded")
    assert stripe_client.v1.payment_intents.retrieve(intent_id).status == "succeeded"

    # Every attempt the engine made carried `<journey>:attempt:<n>`; Stripe records it on the events.
    events = [e for e in stripe_client.v1.events.list({"limit": 100}).data if e.type in EVENTS and e.data.object.id == intent_id]
    assert sorted((e.type, e.request.idempotency_key) for e in events) == [
        ("payment_intent.payment_failed", f"renewal:{customer_id}"),
        ("payment_intent.succeeded", f"{journey_id}:attempt:1"),
    ]
    # The card ledger: the failure that opened the journey (attempt 0, never sent by the engine), then attempt 1.
    ledger = harness.store.attempts_for_journey(journey_id)
    assert [(row.attempt_number, row.payment_method_id, row.idempotency_key, row.status) for row in ledger] == [
        (0, failing, f"{journey_id}:attempt:0", "declined"),
        (1, working, f"{journey_id}:attempt:1", "succeeded"),
    ]

    # Both events came signed from localstripe: the failure started the journey, the success settled it.
    delivered = {e.id: e.type for e in events}
    assert {event_id: rows.get(event_id, (None, None))[0] for event_id in delivered} == delivered
    assert all(rows[event_id][1] == "processed" for event_id in delivered), rows
