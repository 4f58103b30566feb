"""Operating journeys: find them, steer them, publish policies and roll them out.

The one implementation behind the ops API (`dunning.api.ops`) and the CLI (`dunning journeys`,
`dunning policy publish|list`). Every write lands in the store's audit log with its actor,
action, target, reason and details; a replay of the same idempotency key is not a new write.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, model_validator
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from dunning import search_attributes
from dunning.enums import TERMINAL_STAGES, Stage
from dunning.journey import (
    QUERY_STATUS,
    SIGNAL_ADOPT_POLICY,
    SIGNAL_CANCEL,
    SIGNAL_PAUSE,
    SIGNAL_RESUME,
    UPDATE_RETRY_NOW,
    WORKFLOW_NAME,
    AdoptPolicy,
    JourneyInput,
    JourneyStatus,
    NextAction,
    OpsAction,
)
from dunning.models import Customer
from dunning.policy import Policy, parse_policy
from dunning.ports import COLLECTION_CONTEXT_ACTIVITY, CollectionContext
from dunning.store import Store
from dunning.store.records import JourneyRecord, PolicyRecord
from dunning.timing import customer_zone

RPC_TIMEOUT = timedelta(seconds=10)
# retry-now returns once the journey applied it, which needs a worker to pick up the update.
UPDATE_TIMEOUT = 30.0
ROLLOUT_CONCURRENCY = 16
REASON_MAX = 500  # OpsAction / AdoptPolicy limit

SignalAction = Literal["pause", "resume", "cancel"]
_SIGNALS: dict[str, str] = {"pause": SIGNAL_PAUSE, "resume": SIGNAL_RESUME, "cancel": SIGNAL_CANCEL}


# --- errors: each maps to one HTTP status and one CLI message ---------------------------------


class OpsError(Exception):
    status_code = 400


class InvalidRequest(OpsError):
    status_code = 422


class JourneyNotFound(OpsError):
    status_code = 404


class JourneyEnded(OpsError):
    status_code = 409


class JourneyStarting(OpsError):
    status_code = 409


class TemporalUnavailable(OpsError):
    status_code = 503


class TemporalTimeout(OpsError):
    status_code = 504


# --- models -----------------------------------------------------------------------------------


class JourneySummary(BaseModel):
    journey_id: str
    stage: str | None
    customer_id: str | None
    amount_due: int | None
    currency: str | None
    decline_class: str | None
    running: bool
    started_at: datetime | None
    closed_at: datetime | None


class ActionResult(BaseModel):
    journey_id: str
    action: str
    event_id: str = Field(description="the id the journey de-duplicates this action by")
    actor: str
    reason: str
    replay: bool = Field(description="true when this idempotency key was already used (nothing new was done)")


class RetryNowResult(BaseModel):
    journey_id: str
    update_id: str
    replay: bool
    next_action: NextAction | None = Field(description="what the journey plans next (null when it just ended)")


class RolloutSelection(BaseModel):
    """Which open journeys to move: `all_open`, or a stage and/or a segment."""

    stage: Stage | None = Field(default=None, description="only open journeys in this stage")
    segment: str | None = Field(default=None, min_length=1, max_length=200, description="only journeys in this policy segment")
    all_open: bool = Field(default=False, description="every open journey")

    @model_validator(mode="after")
    def _one_scope(self) -> RolloutSelection:
        narrowed = self.stage is not None or self.segment is not None
        if self.all_open and narrowed:
            raise ValueError("choose either `all_open: true` or `stage`/`segment`, not both")
        if not self.all_open and not narrowed:
            raise ValueError("say which open journeys to move: `all_open: true`, `stage` or `segment`")
        if self.stage is not None and self.stage.terminal:
            raise ValueError(f"journeys in stage {self.stage.value} have ended; a rollout moves open journeys only")
        return self

    def describe(self) -> str:
        if self.all_open:
            return "all open journeys"
        parts = [f"stage={self.stage.value}"] if self.stage else []
        parts += [f"segment={self.segment}"] if self.segment else []
        return "open journeys with " + " and ".join(parts)


class RolloutReport(BaseModel):
    version: str
    selection: str
    matched: int = Field(description="open journeys the selection matched")
    moved: list[str] = Field(description="sent adopt_policy")
    already_on_version: list[str]
    ended: list[str] = Field(description="ended before the signal reached them")
    failed: dict[str, str] = Field(description="journey id -> why it was not moved (run the rollout again)")


class PublishResult(BaseModel):
    version: str
    name: str
    created: bool = Field(description="false when this exact text was already published")
    activated: bool = Field(description="true when this call made it the version new journeys start on")
    active_version: str | None
    published_by: str
    published_at: datetime


class Activation(BaseModel):
    at: datetime
    by: str
    reason: str | None


class PolicySummary(BaseModel):
    version: str
    name: str
    published_by: str
    published_at: datetime
    active: bool = Field(description="the version new journeys start on")
    activations: list[Activation]


# --- finding journeys -------------------------------------------------------------------------


def _literal(value: str) -> str:
    """Visibility string literal; escaping keeps a value from altering the query."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def visibility_query(
    *,
    stage: Stage | None = None,
    customer: str | None = None,
    since: datetime | None = None,
    open_only: bool = False,
) -> str:
    clauses = [f"WorkflowType = '{WORKFLOW_NAME}'"]
    if open_only:
        clauses.append("ExecutionStatus = 'Running'")
    if stage is not None:
        clauses.append(f"{search_attributes.STAGE.name} = {_literal(stage.value)}")
    if customer is not None:
        clauses.append(f"{search_attributes.CUSTOMER_ID.name} = {_literal(customer)}")
    if since is not None:
        clauses.append(f"StartTime >= {_literal(since.astimezone(timezone.utc).isoformat())}")
    return " AND ".join(clauses)


async def find_journeys(
    client: Client,
    *,
    stage: Stage | None = None,
    customer: str | None = None,
    since: datetime | None = None,
    open_only: bool = False,
    limit: int | None = None,
) -> list[JourneySummary]:
    """Journeys from Temporal visibility (eventually consistent: a second or so behind)."""
    query = visibility_query(stage=stage, customer=customer, since=since, open_only=open_only)
    journeys = []
    try:
        async for execution in client.list_workflows(query, limit=limit, rpc_timeout=RPC_TIMEOUT):
            attributes = execution.typed_search_attributes
            journeys.append(
                JourneySummary(
                    journey_id=execution.id,
                    stage=attributes.get(search_attributes.STAGE),
                    customer_id=attributes.get(search_attributes.CUSTOMER_ID),
                    amount_due=attributes.get(search_attributes.AMOUNT_DUE),
                    currency=attributes.get(search_attributes.CURRENCY),
                    decline_class=attributes.get(search_attributes.DECLINE_CLASS),
                    running=execution.status == WorkflowExecutionStatus.RUNNING,
                    started_at=execution.start_time,
                    closed_at=execution.close_time,
                )
            )
    except RPCError as exc:
        raise TemporalUnavailable(f"could not list journeys ({query}): {exc.message}") from exc
    return journeys


async def journey_status(client: Client, journey_id: str) -> JourneyStatus:
    """The journey's own `status` query: stage, next action and why, attempts, messages, timeline."""
    handle = client.get_workflow_handle(journey_id)
    try:
        status = await handle.query(QUERY_STATUS, result_type=JourneyStatus, rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        raise _rpc_error(exc, journey_id, "query") from exc
    if status is None:
        raise JourneyStarting(f"journey {journey_id!r} is starting; try again in a moment")
    return status


async def journey_customer(client: Client, journey_id: str) -> Customer | None:
    """The customer as the journey knows it (start input, enriched by the processor's collection
    context when the journey opened): the status query carries only the customer id."""
    handle = client.get_workflow_handle(journey_id)
    customer: Customer | None = None
    scheduled: int | None = None
    try:
        async for event in handle.fetch_history_events(rpc_timeout=RPC_TIMEOUT):
            if event.HasField("workflow_execution_started_event_attributes"):
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                (journey,) = await client.data_converter.decode(payloads, [JourneyInput])
                if journey.resume is not None:  # continue-as-new carries the opened state
                    return journey.resume.payment.customer
                customer = journey.payment.customer
            elif event.HasField("activity_task_scheduled_event_attributes"):
                if event.activity_task_scheduled_event_attributes.activity_type.name == COLLECTION_CONTEXT_ACTIVITY:
                    scheduled = event.event_id
            elif event.HasField("activity_task_completed_event_attributes"):
                attributes = event.activity_task_completed_event_attributes
                if attributes.scheduled_event_id == scheduled:
                    (context,) = await client.data_converter.decode(attributes.result.payloads, [CollectionContext])
                    return context.customer or customer
            elif event.event_id > 200:  # the journey opens within its first events
                break
    except RPCError as exc:
        raise _rpc_error(exc, journey_id, "read the history of") from exc
    return customer


def journey_zone(customer: Customer | None, policy: Policy | None) -> ZoneInfo:
    """The customer's local zone, by the rule the engine plans with."""
    merchant = policy.timing.merchant_timezone if policy is not None else "UTC"
    return customer_zone(customer or Customer(id="unknown"), None, merchant)


def policy_of(store: Store, version: str) -> Policy | None:
    record = store.get_policy(version)
    return parse_policy(record.yaml_text, version) if record is not None else None


# --- steering one journey ---------------------------------------------------------------------


def check_reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise InvalidRequest("a reason is required: say why, e.g. 'customer disputes the charge (ticket 4411)'")
    if len(text) > REASON_MAX:
        raise InvalidRequest(f"the reason is {len(text)} characters; keep it to {REASON_MAX}")
    return text


def _rpc_error(exc: RPCError, journey_id: str, doing: str) -> OpsError:
    if exc.status == RPCStatusCode.NOT_FOUND:
        if "already completed" in exc.message:
            return JourneyEnded(f"journey {journey_id!r} has already ended")
        return JourneyNotFound(
            f"no journey {journey_id!r}: ids look like dunning-in_123 or dunning-pi_123 "
            "(`dunning journeys list` shows them)"
        )
    if exc.status == RPCStatusCode.DEADLINE_EXCEEDED:
        return TemporalTimeout(
            f"Temporal did not answer in time to {doing} journey {journey_id!r}; is a worker running? ({exc.message})"
        )
    return TemporalUnavailable(f"could not {doing} journey {journey_id!r}: {exc.message}")


async def open_journey(client: Client, journey_id: str, doing: str) -> WorkflowHandle:
    """The journey's handle if it exists and is still open; 404/409-style errors otherwise."""
    handle = client.get_workflow_handle(journey_id)
    try:
        description = await handle.describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        raise _rpc_error(exc, journey_id, "describe") from exc
    if description.workflow_type != WORKFLOW_NAME:
        raise JourneyNotFound(f"{journey_id!r} is a {description.workflow_type} workflow, not a dunning journey")
    stage = description.typed_search_attributes.get(search_attributes.STAGE)
    ended = description.status != WorkflowExecutionStatus.RUNNING or stage in TERMINAL_STAGES
    if ended:
        when = f" at {description.close_time.isoformat()}" if description.close_time else ""
        state = stage or (description.status.name.lower() if description.status else "closed")
        raise JourneyEnded(f"journey {journey_id!r} already ended ({state}{when}); there is nothing to {doing}")
    return handle


def _already_audited(store: Store, target: str, action: str, key: str | None) -> bool:
    if key is None:
        return False
    return any(
        entry.action == action and (entry.details or {}).get("idempotency_key") == key
        for entry in store.audit_entries(target)
    )


async def _audit(store: Store, **entry: Any) -> None:
    await asyncio.to_thread(lambda: store.audit(**entry))


async def signal_journey(
    client: Client,
    store: Store,
    journey_id: str,
    action: SignalAction,
    *,
    reason: str,
    actor: str,
    idempotency_key: str | None = None,
) -> ActionResult:
    """Pause, resume or cancel an open journey; the journey applies it at its next turn."""
    if action not in _SIGNALS:
        raise InvalidRequest(f"unknown action {action!r}: use pause, resume or cancel")
    reason = check_reason(reason)
    audit_action = f"journey.{action}"
    replay = await asyncio.to_thread(_already_audited, store, journey_id, audit_action, idempotency_key)
    event_id = f"ops:{action}:{idempotency_key or uuid.uuid4().hex}"
    if not replay:
        handle = await open_journey(client, journey_id, action)
        try:
            await handle.signal(
                _SIGNALS[action], OpsAction(reason=reason, event_id=event_id, actor=actor), rpc_timeout=RPC_TIMEOUT
            )
        except RPCError as exc:
            raise _rpc_error(exc, journey_id, action) from exc
        await _audit(
            store,
            actor=actor,
            action=audit_action,
            target=journey_id,
            reason=reason,
            details={"event_id": event_id, "idempotency_key": idempotency_key},
        )
    return ActionResult(journey_id=journey_id, action=action, event_id=event_id, actor=actor, reason=reason, replay=replay)


async def retry_now(
    client: Client,
    store: Store,
    journey_id: str,
    *,
    reason: str,
    actor: str,
    idempotency_key: str | None = None,
) -> RetryNowResult:
    """Ask for a prompt retry (within the network rules) and return what the journey plans next.

    A Temporal update with an id: the same key twice is one retry (the server returns the first
    outcome). The workflow's validator rejects an ended journey.
    """
    reason = check_reason(reason)
    update_id = idempotency_key or f"retry-now-{uuid.uuid4().hex}"
    handle = await open_journey(client, journey_id, "retry")
    try:
        next_action = await asyncio.wait_for(
            handle.execute_update(
                UPDATE_RETRY_NOW,
                OpsAction(reason=reason, actor=actor),
                id=update_id,
                result_type=NextAction,
                rpc_timeout=timedelta(seconds=UPDATE_TIMEOUT),
            ),
            UPDATE_TIMEOUT,
        )
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        message = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
        raise JourneyEnded(f"journey {journey_id!r} refused the retry: {message}") from exc
    except (asyncio.TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        raise TemporalTimeout(
            f"journey {journey_id!r} did not confirm the retry within {UPDATE_TIMEOUT:.0f}s; is a worker running? "
            f"Repeat with the same idempotency key ({update_id}) to retry safely."
        ) from exc
    except RPCError as exc:
        raise _rpc_error(exc, journey_id, "retry") from exc
    replay = await asyncio.to_thread(_already_audited, store, journey_id, "journey.retry_now", update_id)
    if not replay:
        await _audit(
            store,
            actor=actor,
            action="journey.retry_now",
            target=journey_id,
            reason=reason,
            details={
                "idempotency_key": update_id,
                "next_action": next_action.model_dump(mode="json") if next_action else None,
            },
        )
    return RetryNowResult(journey_id=journey_id, update_id=update_id, replay=replay, next_action=next_action)


# --- policies ---------------------------------------------------------------------------------


def publish_policy(
    store: Store,
    text: str,
    *,
    actor: str,
    reason: str,
    activate: bool = False,
    source: str = "<policy>",
) -> PublishResult:
    """Validate (PolicyError lists the problems with lines), publish and optionally activate.

    The version is a hash of the text, so publishing the same text again changes nothing.
    """
    reason = check_reason(reason)
    policy = parse_policy(text, source)
    version = policy.version or ""
    created = store.get_policy(version) is None
    record = store.publish_policy(name=policy.name, yaml_text=text, published_by=actor)
    if created:
        store.audit(
            actor=actor,
            action="policy.publish",
            target=record.version,
            reason=reason,
            details={"name": record.name, "sha256": record.sha256, "source": source},
        )
    active = store.active_policy()
    activated = False
    if activate and (active is None or active.version != record.version):
        previous = active.version if active else None
        store.activate_policy(record.version, activated_by=actor, reason=reason)
        store.audit(
            actor=actor, action="policy.activate", target=record.version, reason=reason, details={"previous": previous}
        )
        activated, active = True, record
    return PublishResult(
        version=record.version,
        name=record.name,
        created=created,
        activated=activated,
        active_version=active.version if active else None,
        published_by=record.published_by,
        published_at=record.published_at,
    )


def list_policies(store: Store) -> list[PolicySummary]:
    """Newest first, with who published each, when, its activations and which one is active."""
    active = store.active_policy()
    activations: dict[str, list[Activation]] = {}
    for row in store.policy_activations():
        activations.setdefault(row.version, []).append(Activation(at=row.activated_at, by=row.activated_by, reason=row.reason))
    return [_summary(record, active, activations.get(record.version, [])) for record in store.list_policies()]


def _summary(record: PolicyRecord, active: PolicyRecord | None, activations: list[Activation]) -> PolicySummary:
    return PolicySummary(
        version=record.version,
        name=record.name,
        published_by=record.published_by,
        published_at=record.published_at,
        active=active is not None and active.version == record.version,
        activations=activations,
    )


async def rollout(
    client: Client,
    store: Store,
    version: str,
    selection: RolloutSelection,
    *,
    reason: str,
    actor: str,
    on_progress: Callable[[int, int], None] | None = None,
) -> RolloutReport:
    """Send `adopt_policy` to the matching open journeys; report who moved and who did not.

    Open journeys and their stage come from visibility (the Dunning* search attributes), the
    segment and current version from the store's projection. Re-running a rollout is safe: the
    journey de-duplicates adopt_policy by version, and journeys already on it are skipped.
    """
    reason = check_reason(reason)
    if await asyncio.to_thread(store.get_policy, version) is None:
        raise InvalidRequest(f"policy version {version!r} is not published; publish it first")
    candidates = await find_journeys(client, stage=selection.stage, open_only=True)
    ids = [c.journey_id for c in candidates]
    projections: dict[str, JourneyRecord | None] = await asyncio.to_thread(
        lambda: {journey_id: store.get_journey(journey_id) for journey_id in ids}
    )
    report = RolloutReport(
        version=version, selection=selection.describe(), matched=0, moved=[], already_on_version=[], ended=[], failed={}
    )
    targets: list[str] = []
    for journey_id in ids:
        row = projections[journey_id]
        if selection.segment is not None:
            if row is None or row.segment is None:
                report.failed[journey_id] = "segment unknown: the journey has not opened yet; run the rollout again"
                continue
            if row.segment != selection.segment:
                continue
        report.matched += 1
        if row is not None and row.policy_version == version:
            report.already_on_version.append(journey_id)
        else:
            targets.append(journey_id)

    total, done = report.matched, report.matched - len(targets)
    if on_progress:
        on_progress(done, total)
    gate = asyncio.Semaphore(ROLLOUT_CONCURRENCY)
    change = AdoptPolicy(version=version, reason=reason)

    async def move(journey_id: str) -> None:
        nonlocal done
        async with gate:
            try:
                await client.get_workflow_handle(journey_id).signal(SIGNAL_ADOPT_POLICY, change, rpc_timeout=RPC_TIMEOUT)
            except RPCError as exc:
                error = _rpc_error(exc, journey_id, "signal")
                if isinstance(error, JourneyEnded):
                    report.ended.append(journey_id)
                else:
                    report.failed[journey_id] = str(error)
            else:
                report.moved.append(journey_id)
            done += 1
            if on_progress:
                on_progress(done, total)

    await asyncio.gather(*(move(journey_id) for journey_id in targets))
    report.moved.sort()
    report.ended.sort()
    rollout_id = uuid.uuid4().hex

    def record() -> None:
        for journey_id in report.moved:
            store.audit(
                actor=actor,
                action="journey.adopt_policy",
                target=journey_id,
                reason=reason,
                details={"version": version, "rollout": rollout_id},
            )
        store.audit(
            actor=actor,
            action="policy.rollout",
            target=version,
            reason=reason,
            details={
                "rollout": rollout_id,
                "selection": selection.model_dump(mode="json"),
                "matched": report.matched,
                "moved": len(report.moved),
                "already_on_version": len(report.already_on_version),
                "ended": len(report.ended),
                "failed": report.failed,
            },
        )

    await asyncio.to_thread(record)
    return report
