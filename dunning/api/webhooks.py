"""POST /webhooks/stripe: signed Stripe events start and steer journeys, answered in milliseconds.

Per delivery: verify `Stripe-Signature` (stripe.WebhookSignature.verify_header, 300 s tolerance), record
the event in the inbox (unique event id: a repeated delivery is answered 200 and not acted on
again), carry it out, mark the inbox row. Starts (signal-with-start) and signals only need the
Temporal server to persist them (no worker is involved), and the answer waits for them up to
DUNNING_WEBHOOK_ANSWER_WITHIN_MS: past that it says `accepted`, and they finish in the
background. The event is in the inbox by then, so nothing is lost if this process dies.

`payment_method_updated` is an update, and an update needs a worker to accept it. Those events
(and disputes, whose invoice may need a Stripe lookup) are answered as soon as they are recorded
and handed to an in-process dispatcher, which finds the customer's open journeys through
visibility and delivers the update with the event id as update id. The inbox row stays
`received` until then; a sweeper re-runs rows a crash left `received`, and `failed` ones.
See docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import stripe
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from dunning.collections import record_recall
from dunning.config import TASK_QUEUE
from dunning.journey import (
    SIGNAL_CANCEL,
    SIGNAL_PAUSE,
    SIGNAL_PAYMENT_SUCCEEDED,
    SIGNAL_RESUME,
    UPDATE_PAYMENT_METHOD,
    OpsAction,
    PaymentMethodUpdated,
    PaymentSucceeded,
)
from dunning.models import PaymentMethod, journey_id_for
from dunning.ops import visibility_query
from dunning.policies import policy_for_new_journeys
from dunning.stripe_events import (
    Action,
    Instruction,
    UnusableEvent,
    event_header,
    intent_of_invoice,
    interpret,
    invoice_of_payments,
    invoice_payments_query,
    payment_method_from,
)
from dunning.triggers import MEMO_SUBSCRIPTION, start_journey

if TYPE_CHECKING:
    from dunning.api.app import Services

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # Stripe events are a few KiB; anything near this is not one
SIGNATURE_TOLERANCE_S = 300
SOURCE = "stripe"
MARKER_SOURCE = "dunning"  # inbox rows the engine writes itself: `settled:<payment reference>`
DISPATCH_WORKERS = 4
STALE_AFTER = timedelta(seconds=60)  # a `received` row older than this lost its process
SWEEP_EVERY_S = 30.0
RETRY_HORIZON = timedelta(days=3)  # as long as Stripe itself redelivers
VISIBILITY_LAG_S = 2.0  # visibility is eventually consistent: look again once after this
UPDATE_ACCEPT_TIMEOUT_S = 30.0
POLICY_CACHE_S = 1.0  # an activation reaches new journeys within a second; saves a read per event
MAX_TEMPORAL_CALLS = 32  # starts and signals in flight; more only make the server's database contend with itself
MAX_BACKGROUND = 2000  # events answered before their start or signal was done; a few MiB at most
SHUTDOWN_GRACE_S = 10.0  # what is still running then stays `received`: the next process's sweeper acts on it
DELIVERY_ATTEMPTS = 8  # backoff 2 s, 4 s, … capped at 60 s: several minutes in all
_ACTION_SIGNALS = {
    Action.succeeded: SIGNAL_PAYMENT_SUCCEEDED,
    Action.pause: SIGNAL_PAUSE,
    Action.resume: SIGNAL_RESUME,
    Action.cancel: SIGNAL_CANCEL,
}


@dataclass(frozen=True)
class Done:
    status: str  # the inbox status: processed | ignored | failed
    detail: str
    marked: bool = False  # the inbox row is already marked

    @property
    def note(self) -> str | None:
        """What the inbox keeps: why an event was ignored or failed (nothing for processed ones)."""
        return None if self.status == "processed" else self.detail


Prepared = tuple[dict[str, Any] | None, str]  # (the settling event, if any; the policy version)


class Retryable(Exception):
    """Temporal or Stripe is unreachable for now: Stripe redelivers, the dispatcher retries."""


class WebhookIngest:
    """The webhook's state: the Temporal client, the dispatcher's queue and tasks."""

    def __init__(self, services: Services, *, task_queue: str = TASK_QUEUE, stripe_client: stripe.StripeClient | None = None) -> None:
        self.services = services
        self.task_queue = task_queue
        self.stripe = stripe_client
        self._queue: asyncio.Queue[Instruction] | None = None
        self._tasks: list[asyncio.Task] = []
        self._in_flight: set[str] = set()
        self._background: set[asyncio.Task] = set()  # carrying out events already answered `accepted`
        self._temporal_calls = asyncio.Semaphore(MAX_TEMPORAL_CALLS)
        self.answer_within = services.settings.dunning_webhook_answer_within_ms / 1000
        self._policy: tuple[str, float] | None = None  # (version, when read)
        # SQLite: queue this process's inbox writes on a lock, not in SQLite's busy handler (it sleeps).
        self._writing = threading.Lock() if services.store.dialect == "sqlite" else contextlib.nullcontext()

    @property
    def store(self):
        return self.services.store

    # -- HTTP ---------------------------------------------------------------------------------------

    async def receive(self, body: bytes, signature: str | None) -> JSONResponse:
        secret = self.services.settings.stripe_webhook_secret
        if not secret:
            raise HTTPException(503, "Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_…)")
        if not signature:
            raise HTTPException(400, "missing Stripe-Signature header: only events signed by Stripe are accepted")
        try:
            # The check stripe.Webhook.construct_event makes, without the StripeObject tree it then
            # builds: that tree was a quarter of this service's CPU per event, and is not used.
            stripe.WebhookSignature.verify_header(body, signature, secret, SIGNATURE_TOLERANCE_S)
        except stripe.SignatureVerificationError as error:
            raise HTTPException(
                400,
                f"invalid Stripe-Signature ({error.user_message or error}): check that STRIPE_WEBHOOK_SECRET is this "
                f"endpoint's signing secret, the body is passed unmodified and the clock is within {SIGNATURE_TOLERANCE_S} s",
            ) from error
        try:
            event = json.loads(body)
        except ValueError as error:  # signed, but not JSON
            raise HTTPException(400, f"the body is not valid JSON: {error}") from error
        try:
            if not isinstance(event, dict):
                raise UnusableEvent("the body is not a JSON object")
            event_id, kind, _ = event_header(event)
        except UnusableEvent as error:
            raise HTTPException(400, f"not a Stripe event: {error}") from error
        instruction = interpret(event)
        status, prepared = await run_in_threadpool(self._admit, event_id, kind, event, instruction)
        if status is not None and status != "failed":  # processed, ignored, or being processed right now
            return _answer(event_id, "duplicate", f"already received ({status})")
        return await self.handle(event, instruction, prepared)

    def _admit(self, event_id: str, kind: str, event: dict[str, Any], ins: Instruction) -> tuple[str | None, Prepared | None]:
        """Record the event: (None, what a start needs) when it is new, else (the earlier delivery's status, None).

        One trip to a worker thread for what every failure event needs before starting."""
        with self._writing:
            new = self.store.record_webhook_event(event_id=event_id, source=SOURCE, type=kind, payload=event)
        if not new:
            return self.store.webhook_event_status(event_id), None
        if ins.action is not Action.start or ins.ignored or ins.payment is None or ins.invoice_unknown:
            return None, None
        try:
            return None, self._before_start(ins.payment.id, ins.created)
        except LookupError:  # no active policy: _start says so
            return None, None

    def _mark(self, event_id: str, status: str, detail: str | None) -> None:
        with self._writing:
            self.store.mark_webhook_event(event_id, status, detail)

    async def handle(self, event: dict[str, Any], instruction: Instruction | None = None, prepared: Prepared | None = None) -> JSONResponse:
        """Act on a recorded event (a new delivery, a redelivery after a failure, or the sweeper)."""
        instruction = instruction or interpret(event)
        if instruction.ignored:
            await run_in_threadpool(self._mark, instruction.event_id, "ignored", instruction.ignored)
            return _answer(instruction.event_id, "ignored", instruction.ignored)
        if instruction.deferred or (instruction.invoice_unknown and self.stripe is not None):
            self.enqueue(instruction)
            return _answer(instruction.event_id, "accepted", "delivered in the background")
        event_id = instruction.event_id
        self._in_flight.add(event_id)
        task = asyncio.create_task(self._carry_out_and_mark(instruction, prepared), name=f"webhook-{event_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        wait = self._answer_wait()
        try:
            done = await asyncio.wait_for(asyncio.shield(task), wait)
        except asyncio.TimeoutError:
            # Recorded, and being carried out: a failure from here on is the sweeper's, not Stripe's.
            return _answer(event_id, "accepted", "recorded; the start or signal is being carried out")
        if done.status == "failed":
            return JSONResponse({"event_id": event_id, "status": "failed", "detail": done.detail}, status_code=503)
        return _answer(event_id, done.status, done.detail)

    def _answer_wait(self) -> float | None:
        """How long an answer waits for its own start or signal (None: until it is done)."""
        behind = len(self._background) - 1  # the others still being carried out
        if behind >= MAX_BACKGROUND:
            return None  # back-pressure: Stripe's deliveries slow down to what Temporal takes
        if behind:
            return 0.0  # starts are queuing already: waiting would only make every answer slower
        return self.answer_within

    async def _carry_out_and_mark(self, ins: Instruction, prepared: Prepared | None) -> Done:
        try:
            try:
                done = await self.carry_out(ins, prepared)
            except Retryable as error:
                done = Done("failed", str(error))
            if not done.marked:
                await run_in_threadpool(self._mark, ins.event_id, done.status, done.note)
            return done
        finally:
            self._in_flight.discard(ins.event_id)

    # -- carrying out -------------------------------------------------------------------------------

    async def carry_out(self, ins: Instruction, prepared: Prepared | None = None) -> Done:
        """Raises Retryable when Temporal (or Stripe) cannot be reached."""
        match ins.action:
            case Action.start:
                return await self._start(ins, prepared)
            case Action.cancel if ins.subscription:
                return Done(*await self._cancel_subscription(ins, *ins.subscription))
            case Action.succeeded | Action.cancel:
                return Done(*await self._settle(ins))
            case Action.pause | Action.resume:
                refs = await self._with_invoice_lookup(ins.targets)
                journey = await self._signal_first(refs, ins.action, _signal_arg(ins))
                return Done("processed", f"{ins.action.value}d {journey}" if journey else f"no journey for {', '.join(refs)}")
            case Action.method_updated:
                return Done(*await self._update_methods(ins))
        raise AssertionError(f"unhandled action {ins.action}")

    async def _client(self) -> Client:
        try:
            return await self.services.temporal()
        except HTTPException as error:
            raise Retryable(str(error.detail)) from error

    async def _start(self, ins: Instruction, prepared: Prepared | None = None) -> Done:
        payment = ins.payment
        assert payment is not None
        if ins.invoice_unknown and self.stripe is not None:
            invoice = await self._invoice_of_intent(payment.id)
            if invoice:
                return Done("ignored", intent_of_invoice(invoice))
        try:
            settled, version = prepared or await run_in_threadpool(self._before_start, payment.id, ins.created)
        except LookupError as error:
            raise Retryable(str(error)) from error
        if settled:
            return Done("ignored", f"{payment.id} was already settled by {settled['type']} ({settled['event_id']}); no journey started")
        client = await self._client()
        try:
            async with self._temporal_calls:
                await start_journey(client, payment, policy_version=version, event_id=ins.event_id, task_queue=self.task_queue)
        except WorkflowAlreadyStartedError:
            return Done("processed", f"journey {payment.journey_id} already ended; a late failure event does not reopen it")
        except RPCError as error:
            raise Retryable(f"Temporal did not start {payment.journey_id}: {error.message}") from error
        # Paid (or voided) while we were starting: whichever of the two writes came second sees the other.
        settled = await run_in_threadpool(self._after_start, payment.id, ins.created, ins.event_id)
        if settled is None:
            return Done("processed", f"started {payment.journey_id}", marked=True)
        settling = Instruction(
            event_id=settled["event_id"],
            type=settled["type"],
            created=datetime.fromisoformat(settled["created"]),
            action=Action(settled["action"]),
            reason=settled["reason"],
        )
        await self._signal_first((payment.id,), settling.action, _signal_arg(settling))
        return Done("processed", f"started {payment.journey_id}; settled meanwhile by {settled['event_id']}")

    def _after_start(self, reference: str, failed_at: datetime, event_id: str) -> dict[str, Any] | None:
        """The settling event that arrived meanwhile; without one, the inbox row is marked (one trip)."""
        settled = _settled(self.store, reference, failed_at)
        if settled is None:
            self._mark(event_id, "processed", None)
        return settled

    def _before_start(self, reference: str, failed_at: datetime) -> Prepared:
        """(the settling event, if any; the policy version new journeys start on) — one trip to the store."""
        settled = _settled(self.store, reference, failed_at)
        now = time.monotonic()
        if self._policy is None or now - self._policy[1] > POLICY_CACHE_S:
            self._policy = (policy_for_new_journeys(self.store).version, now)
        return settled, self._policy[0]

    async def _settle(self, ins: Instruction) -> tuple[str, str]:
        arg = _signal_arg(ins)
        journey = await self._signal_first(ins.targets, ins.action, arg)
        if journey:
            return "processed", f"signalled {journey}"
        # No journey (yet): remember, so a failure event delivered late starts none — then look
        # again, in case a journey started between the signal and the marker.
        for ref in ins.targets:
            await run_in_threadpool(_remember_settled, self.store, ref, ins, self._writing)
        journey = await self._signal_first(ins.targets, ins.action, arg)
        if journey:
            return "processed", f"signalled {journey}"
        if ins.action is Action.succeeded:  # paid after the hand-off: the partner must stop collecting
            recalled = [ref for ref in ins.targets if await run_in_threadpool(self._recall, ref, ins)]
            if recalled:
                return "processed", f"recalled {', '.join(recalled)} from the collection partner"
        return "processed", f"no journey for {', '.join(ins.targets)}; remembered"

    async def _cancel_subscription(self, ins: Instruction, subscription: str, customer: str) -> tuple[str, str]:
        """The latest invoice's journey as any cancel, then every other open journey of the subscription."""
        status, detail = await self._settle(ins)
        arg = _signal_arg(ins)
        latest = {journey_id_for(ref) for ref in ins.targets}
        others = [j for j in await self._open_journeys(customer, subscription=subscription) if j not in latest]
        signalled = [j for j in others if await self._signal(j, ins.action, arg)]
        return status, "; ".join([detail, *(f"signalled {j}" for j in signalled)])

    def _recall(self, reference: str, ins: Instruction) -> bool:
        with self._writing:
            return record_recall(self.store, reference, ins.created, ins.type)

    async def _signal_first(self, refs: tuple[str, ...], action: Action, arg: Any) -> str | None:
        """Signal the first of these payments' journeys that is running; its id, or None."""
        for ref in refs:
            journey_id = journey_id_for(ref)
            if await self._signal(journey_id, action, arg):
                return journey_id
        return None

    async def _signal(self, journey_id: str, action: Action, arg: Any) -> bool:
        """False when there is no such running journey (never started, or already ended)."""
        client = await self._client()
        try:
            async with self._temporal_calls:
                await client.get_workflow_handle(journey_id).signal(_ACTION_SIGNALS[action], arg)
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return False
            raise Retryable(f"Temporal did not take the {action.value} signal for {journey_id}: {error.message}") from error
        return True

    async def _update_methods(self, ins: Instruction) -> tuple[str, str]:
        customer = ins.targets[0]
        method = await self._method_details(ins.payment_method)
        update = PaymentMethodUpdated(event_id=ins.event_id, payment_method=method, source=f"stripe {ins.type}")
        delivered: dict[str, str] = {}
        for attempt in range(2):  # a journey started just now may not be visible yet
            for journey_id in await self._open_journeys(customer):
                if journey_id not in delivered:
                    delivered[journey_id] = await self._deliver_update(journey_id, update)
            if attempt == 0:
                await asyncio.sleep(VISIBILITY_LAG_S)
        if not delivered:
            return "processed", f"customer {customer} has no open journey"
        return "processed", "; ".join(f"{j}: {outcome}" for j, outcome in sorted(delivered.items()))

    async def _open_journeys(self, customer: str, *, subscription: str | None = None) -> list[str]:
        """The customer's running journeys; with `subscription`, only those of that subscription."""
        client = await self._client()
        query = visibility_query(customer=customer, open_only=True)
        try:
            return [
                execution.id
                async for execution in client.list_workflows(query)
                if subscription is None or (await execution.memo()).get(MEMO_SUBSCRIPTION) == subscription
            ]
        except RPCError as error:
            raise Retryable(f"Temporal visibility did not answer for {customer}: {error.message}") from error

    async def _deliver_update(self, journey_id: str, update: PaymentMethodUpdated) -> str:
        client = await self._client()
        handle = client.get_workflow_handle(journey_id)
        try:
            # ACCEPTED: durably in the journey's history; the update id (= event id) dedupes repeats.
            await asyncio.wait_for(
                handle.start_update(
                    UPDATE_PAYMENT_METHOD, update, id=update.event_id, wait_for_stage=WorkflowUpdateStage.ACCEPTED
                ),
                UPDATE_ACCEPT_TIMEOUT_S,
            )
        except WorkflowUpdateFailedError as error:  # rejected: the journey ended meanwhile
            return f"rejected ({error.cause or error})"
        except asyncio.TimeoutError as error:
            raise Retryable(f"no worker accepted the update for {journey_id} within {UPDATE_ACCEPT_TIMEOUT_S:.0f} s") from error
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                return "ended"
            raise Retryable(f"Temporal did not take the update for {journey_id}: {error.message}") from error
        return "delivered"

    # -- Stripe lookups (only with STRIPE_API_KEY; in the dispatcher, never in the answer's path) --

    async def _method_details(self, method: PaymentMethod | None) -> PaymentMethod:
        assert method is not None and method.id
        if self.stripe is None or method.brand or method.fingerprint:
            return method
        try:
            pm = await run_in_threadpool(self.stripe.v1.payment_methods.retrieve, method.id)
        except stripe.StripeError as error:
            _raise_if_transient(error, f"reading {method.id}")
            logger.warning("payment method %s: %s; delivering the id only", method.id, error)
            return method
        return payment_method_from(pm.to_dict(), default=True)

    async def _invoice_of_intent(self, intent_id: str) -> str | None:
        if self.stripe is None:
            return None
        try:
            listed = await run_in_threadpool(self.stripe.v1.invoice_payments.list, invoice_payments_query(intent_id))
        except stripe.StripeError as error:
            _raise_if_transient(error, f"finding the invoice of {intent_id}")
            logger.warning("invoice of %s: %s", intent_id, error)
            return None
        return invoice_of_payments(item.to_dict() for item in listed.data)

    async def _with_invoice_lookup(self, refs: tuple[str, ...]) -> tuple[str, ...]:
        found = [await self._invoice_of_intent(ref) for ref in refs if ref.startswith("pi_")]
        return tuple(dict.fromkeys([*(f for f in found if f), *refs]))

    # -- the dispatcher -----------------------------------------------------------------------------

    def enqueue(self, ins: Instruction) -> None:
        if ins.event_id in self._in_flight:
            return
        self._ensure_started()
        self._in_flight.add(ins.event_id)
        assert self._queue is not None
        self._queue.put_nowait(ins)

    def _ensure_started(self) -> None:
        if self._tasks and not all(t.done() for t in self._tasks):
            return
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._work(), name=f"webhook-dispatch-{n}") for n in range(DISPATCH_WORKERS)]
        self._tasks.append(asyncio.create_task(self._sweep(), name="webhook-sweeper"))

    async def _work(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            ins = await queue.get()
            try:
                done = await self._deliver(ins)
                if not done.marked:
                    await run_in_threadpool(self._mark, ins.event_id, done.status, done.note)
                logger.info("event %s (%s): %s", ins.event_id, ins.type, done.detail)
            except Exception:  # a bug must not stop the dispatcher; the row stays for the sweeper
                logger.exception("event %s (%s) could not be delivered", ins.event_id, ins.type)
            finally:
                self._in_flight.discard(ins.event_id)
                queue.task_done()

    async def _deliver(self, ins: Instruction) -> Done:
        delay = 2.0
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                return await self.carry_out(ins)
            except Retryable as error:
                if attempt == DELIVERY_ATTEMPTS:
                    return Done("failed", f"gave up after {attempt} attempts: {error}")
                logger.warning("event %s: %s; retrying in %.0f s", ins.event_id, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
        raise AssertionError("unreachable")

    async def _sweep(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                logger.exception("webhook sweeper")
            await asyncio.sleep(SWEEP_EVERY_S)

    async def sweep_once(self, older_than: timedelta = STALE_AFTER) -> int:
        """Act again on inbox rows left `received` by a crash, or `failed`; how many."""
        before = datetime.now(UTC) - older_than
        # `failed` rows only within Stripe's redelivery horizon: a redelivery answered `duplicate`
        # while the first was in flight will not come again.
        rows = await run_in_threadpool(
            self.store.stale_webhook_events, source=SOURCE, received_before=before, failed_since=before - RETRY_HORIZON
        )
        count = 0
        for event_id, payload in rows:
            if event_id in self._in_flight:
                continue
            count += 1
            await self.handle(payload)
        return count

    async def idle(self, timeout: float) -> None:
        """Wait until every answered event is carried out and every queued delivery is done."""

        async def drained() -> None:
            while self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            if self._queue is not None:
                await self._queue.join()

        await asyncio.wait_for(drained(), timeout)

    async def stop(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=SHUTDOWN_GRACE_S)
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        self._tasks = []
        self._in_flight.clear()


def install(app: FastAPI, services: Services) -> WebhookIngest:
    """Add POST /webhooks/stripe to the app; the ingest is app.state.webhooks."""
    stripe_client = None
    if services.settings.stripe_api_key:
        from activities.stripe_gateway import make_client  # the one way this codebase builds a client

        stripe_client = make_client(services.settings.stripe_api_key, services.settings.stripe_api_base)
    ingest = WebhookIngest(services, stripe_client=stripe_client)
    app.state.webhooks = ingest
    app.include_router(_router(ingest))
    return ingest


def _router(ingest: WebhookIngest) -> APIRouter:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ingest._ensure_started()  # the sweeper resumes what a previous process left
        try:
            yield
        finally:
            await ingest.stop()

    router = APIRouter(tags=["webhooks"], lifespan=lifespan)

    @router.post("/webhooks/stripe", summary="Stripe webhook endpoint (signed events only)")
    async def stripe_webhook(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise HTTPException(413, f"body of {declared} bytes exceeds the {MAX_BODY_BYTES} byte limit for Stripe events")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise HTTPException(413, f"body exceeds the {MAX_BODY_BYTES} byte limit for Stripe events")
        return await ingest.receive(bytes(body), request.headers.get("stripe-signature"))

    return router


# --- helpers --------------------------------------------------------------------------------------


def _answer(event_id: str, status: str, detail: str) -> JSONResponse:
    return JSONResponse({"event_id": event_id, "status": status, "detail": detail})


def _signal_arg(ins: Instruction) -> Any:
    if ins.action is Action.succeeded:
        return PaymentSucceeded(event_id=ins.event_id, at=ins.created, source=f"stripe {ins.type}")
    return OpsAction(reason=f"{ins.reason} ({ins.type})", event_id=ins.event_id, actor="stripe")


def _raise_if_transient(error: stripe.StripeError, what: str) -> None:
    from activities.stripe_gateway import is_transient  # the gateway's rule, so both retry alike

    if is_transient(error):
        raise Retryable(f"Stripe unavailable while {what}: {error}") from error


def _marker_id(reference: str) -> str:
    return f"settled:{reference}"


def _settled(store: Any, reference: str, failed_at: datetime) -> dict[str, Any] | None:
    """The settling event remembered for this payment, if it is not older than the failure."""
    payload = store.webhook_event_payload(_marker_id(reference))
    if payload is None or datetime.fromisoformat(payload["created"]) < failed_at:
        return None
    return payload


def _remember_settled(store: Any, reference: str, ins: Instruction, writing: Any) -> None:
    payload = {
        "event_id": ins.event_id,
        "type": ins.type,
        "created": ins.created.isoformat(),
        "action": ins.action.value if ins.action else None,
        "reason": ins.reason,
    }
    marker = _marker_id(reference)
    with writing:
        if store.record_webhook_event(event_id=marker, source=MARKER_SOURCE, type=f"marker.{ins.type}", payload=payload):
            store.mark_webhook_event(marker, "processed")
