"""After a run: does every failed payment have the end its case says, with each charge made once at
the gateway and each message handed to the outbox once? Every finding is a `Violation`; none = PASS.

Sources, each read independently of the others:
- Temporal: the journey's execution (describe, result) and visibility (all DunningWorkflow runs);
- the store: the journey projection, messages, placements, the webhook inbox;
- the sandbox gateway's own SQLite file: one row per charge request that reached it;
- the workers' output: the outbox prints one block (`key: <dedupe key>`) per message it sends.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from chaos.scenarios import Case, outbox_keys
from dunning.journey import WORKFLOW_NAME, JourneyStatus
from dunning.ports import idempotency_key
from dunning.store import Store
from dunning.store.schema import WebhookEvent

LOST = "lost"
DOUBLE_CHARGE = "double charge"
DOUBLE_MESSAGE = "double message"
WRONG_END = "wrong end"
OTHER = "other"


@dataclass(frozen=True)
class Violation:
    category: str
    subject: str
    text: str

    def __str__(self) -> str:
        return f"[{self.category}] {self.subject}: {self.text}"


@dataclass
class Findings:
    violations: list[Violation] = field(default_factory=list)
    charges: int = 0
    messages: int = 0
    ends: Counter[str] = field(default_factory=Counter)  # kind -> how it ended, for the summary

    def add(self, category: str, subject: str, text: str) -> None:
        self.violations.append(Violation(category, subject, text))

    def count(self, category: str) -> int:
        return sum(1 for v in self.violations if v.category == category)


def gateway_rows(sandbox: Path) -> list[tuple[str, str, int, str, str]]:
    """(idempotency key, journey id, attempt number, payment method, outcome status) per charge row."""
    conn = sqlite3.connect(f"file:{sandbox}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT idempotency_key, journey_id, attempt_number, payment_method_id, outcome FROM sandbox_charges"
        ).fetchall()
    finally:
        conn.close()
    return [(key, journey, number, method, json.loads(outcome)["status"]) for key, journey, number, method, outcome in rows]


def inbox(store: Store) -> dict[str, tuple[str, str]]:
    """event id -> (type, status) of every Stripe event the service recorded."""
    with Session(store.engine) as session:
        rows = session.execute(select(WebhookEvent.event_id, WebhookEvent.type, WebhookEvent.status).where(WebhookEvent.source == "stripe"))
        return {event_id: (kind, status) for event_id, kind, status in rows}


async def visible_runs(client: Client) -> dict[str, list[WorkflowExecutionStatus | None]]:
    runs: dict[str, list[WorkflowExecutionStatus | None]] = defaultdict(list)
    async for execution in client.list_workflows(f"WorkflowType = '{WORKFLOW_NAME}'"):
        runs[execution.id].append(execution.status)
    return runs


async def final_status(client: Client, journey_id: str) -> tuple[WorkflowExecutionStatus | None, JourneyStatus | None]:
    """(execution status, the journey's result when it completed); (None, None) when there is none."""
    handle = client.get_workflow_handle(journey_id)
    try:
        described = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None, None
        raise
    if described.status != WorkflowExecutionStatus.COMPLETED:
        return described.status, None
    return described.status, await client.get_workflow_handle(journey_id, result_type=JourneyStatus).result()


async def verify(
    cases: list[Case], client: Client, store: Store, sandbox: Path, worker_logs: list[Path]
) -> Findings:
    found = Findings()
    expected_ids = {c.journey_id for c in cases if c.expected.journey}
    by_journey: dict[str, list[tuple[str, int, str, str]]] = defaultdict(list)
    rows = gateway_rows(sandbox)
    found.charges = len(rows)
    for key, journey_id, number, method, outcome in rows:
        by_journey[journey_id].append((key, number, method, outcome))
    per_attempt = Counter((journey_id, number) for _, journey_id, number, _, _ in rows)
    for (journey_id, number), count in per_attempt.items():
        if count != 1:
            found.add(DOUBLE_CHARGE, journey_id, f"attempt {number} charged {count} times at the gateway")
    for journey_id in sorted(set(by_journey) - expected_ids):
        found.add(DOUBLE_CHARGE, journey_id, f"{len(by_journey[journey_id])} gateway charge(s) for a payment that should have no journey")

    sent_to_outbox = Counter(key for path in worker_logs if path.exists() for key in outbox_keys(path.read_text(errors="replace")))
    found.messages = sum(sent_to_outbox.values())
    known_keys: set[str] = set()
    events = inbox(store)
    runs = await visible_runs(client)

    for journey_id in sorted(set(runs) - expected_ids):
        found.add(LOST if journey_id.startswith("dunning-in_chaos_") else OTHER, journey_id, "a journey that no case expects")

    for case in cases:
        subject = f"{case.journey_id} ({case.kind})"
        expect = case.expected
        inbox_row = events.get(case.failure_event_id)
        if inbox_row is None:
            found.add(LOST, subject, "the failure event is not in the webhook inbox")
        elif inbox_row[1] != expect.failure_inbox_status:
            found.add(LOST, subject, f"the failure event is {inbox_row[1]!r} in the inbox, expected {expect.failure_inbox_status!r}")
        status, result = await final_status(client, case.journey_id)
        record = store.get_journey(case.journey_id)
        if not expect.journey:
            if status is not None or case.journey_id in runs or record is not None:
                found.add(WRONG_END, subject, f"paid before the failure arrived, yet a journey exists ({status})")
            found.ends[f"{case.kind}: no journey" if status is None else f"{case.kind}: journey"] += 1
            continue
        visible = runs.get(case.journey_id, [])
        if len(visible) != 1:
            found.add(LOST, subject, f"{len(visible)} runs in Temporal visibility, expected exactly 1")
        elif visible[0] != WorkflowExecutionStatus.COMPLETED:
            found.add(LOST, subject, f"visibility shows {visible[0].name if visible[0] else 'no status'}, expected COMPLETED")
        if status is None:
            found.add(LOST, subject, "no journey in Temporal")
            continue
        if result is None:
            found.add(LOST, subject, f"the journey did not complete ({status.name})")
            continue
        found.ends[f"{case.kind}: {result.stage.value}"] += 1
        if result.stage.value != expect.stage:
            found.add(WRONG_END, subject, f"ended {result.stage.value} ({result.end_reason}), expected {expect.stage}")
        if record is None:
            found.add(LOST, subject, "missing from the store's journey projection")
        else:
            if record.stage != expect.stage:
                found.add(WRONG_END, subject, f"the store projection says {record.stage}, expected {expect.stage}")
            if expect.recovered_via and record.recovered_via != expect.recovered_via:
                found.add(WRONG_END, subject, f"recovered via {record.recovered_via}, expected {expect.recovered_via}")

        # Charges: the journey's own attempts and the gateway's rows must be the same set.
        attempts = {a.number: a for a in result.attempts if a.number >= 1}
        charged = {number: (key, method, outcome) for key, number, method, outcome in by_journey.get(case.journey_id, [])}
        for number in sorted(set(charged) - set(attempts)):
            found.add(DOUBLE_CHARGE, subject, f"the gateway has a charge for attempt {number} the journey does not know")
        for number in sorted(set(attempts) - set(charged)):
            found.add(LOST, subject, f"attempt {number} is in the journey but never reached the gateway")
        for number in sorted(set(attempts) & set(charged)):
            key, method, outcome = charged[number]
            attempt = attempts[number]
            if key != idempotency_key(case.journey_id, number):
                found.add(OTHER, subject, f"attempt {number} charged under key {key}")
            if attempt.payment_method_id != method or attempt.status != outcome:
                found.add(OTHER, subject, f"attempt {number}: the journey says {attempt.status} on {attempt.payment_method_id}, the gateway {outcome} on {method}")
        steps = Counter(a.step_id for a in attempts.values())
        for step_id, count in steps.items():
            if count > 1:
                found.add(DOUBLE_CHARGE, subject, f"step {step_id} charged {count} times")
        succeeded = sorted((number, method) for number, (_, method, outcome) in charged.items() if outcome == "succeeded")
        if len(succeeded) > 1:
            found.add(DOUBLE_CHARGE, subject, f"{len(succeeded)} successful charges for one payment: attempts {[n for n, _ in succeeded]}")
        elif len(succeeded) != expect.succeeded_charges:
            found.add(WRONG_END, subject, f"{len(succeeded)} successful charge(s), expected {expect.succeeded_charges}")
        if succeeded and expect.paying_method and succeeded[0][1] != expect.paying_method:
            found.add(WRONG_END, subject, f"paid with {succeeded[0][1]}, expected {expect.paying_method}")
        if succeeded and any(number > succeeded[0][0] for number in charged):
            found.add(DOUBLE_CHARGE, subject, f"charged again after attempt {succeeded[0][0]} succeeded")

        # Messages: what the journey says it sent has one store row marked sent and was handed to
        # the outbox exactly once. (A step whose window passed is skipped by the engine itself:
        # recorded in the journey, no store row, nothing sent.)
        journey_messages = Counter((m.step_id, m.channel.value) for m in result.messages)
        for (step_id, channel), count in journey_messages.items():
            if count > 1:
                found.add(DOUBLE_MESSAGE, subject, f"{step_id}/{channel} recorded {count} times in the journey")
        journey_sent = {(m.step_id, m.channel.value) for m in result.messages if m.status == "sent"}
        stored = store.messages_for_journey(case.journey_id)
        stored_keys = Counter(m.dedupe_key for m in stored)
        for message in stored:
            known_keys.add(message.dedupe_key)
            if stored_keys[message.dedupe_key] > 1:
                found.add(DOUBLE_MESSAGE, subject, f"{message.dedupe_key} stored {stored_keys[message.dedupe_key]} times")
            delivered = sent_to_outbox.get(message.dedupe_key, 0)
            if delivered > 1:
                found.add(DOUBLE_MESSAGE, subject, f"{message.dedupe_key} handed to the outbox {delivered} times")
            elif message.status == "sent" and delivered == 0:
                found.add(LOST, subject, f"{message.dedupe_key} is sent in the store but the outbox never got it")
            elif message.status != "sent" and delivered:
                found.add(OTHER, subject, f"{message.dedupe_key} was handed to the outbox but is {message.status} in the store")
        stored_sent = {(m.step_id, m.channel) for m in stored if m.status == "sent"}
        if stored_sent != journey_sent:
            found.add(OTHER, subject, f"sent per the store {sorted(stored_sent)}, per the journey {sorted(journey_sent)}")
        if attempts and ("notice", "email") not in journey_messages:  # the notice step precedes every retry
            found.add(LOST, subject, "retried without handling the payment_failed notice first")
        if expect.stage == "recovered" and ("recovered", "email") not in journey_sent:
            found.add(LOST, subject, "no recovery confirmation was sent")

        placement = store.placement_for_journey(case.journey_id)
        if expect.placement and placement is None:
            found.add(WRONG_END, subject, "handed off without a placement for the collection partner")
        if not expect.placement and placement is not None:
            found.add(WRONG_END, subject, "a placement for a journey that was not handed off")

    for key in sorted(set(sent_to_outbox) - known_keys):
        found.add(DOUBLE_MESSAGE, key, f"handed to the outbox {sent_to_outbox[key]} time(s) without a store row of a known journey")
    for event_id, (kind, status) in sorted(events.items()):
        if status not in ("processed", "ignored"):
            found.add(LOST, event_id, f"{kind} left {status!r} in the webhook inbox")
    return found
