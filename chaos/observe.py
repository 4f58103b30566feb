"""Reading a running stack from outside: the gateway's rows, pending activities, open journeys."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionDescription
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from dunning.journey import WORKFLOW_NAME
from dunning.store import Store
from dunning.store.schema import WebhookEvent

CHARGE_ACTIVITY = "payments.charge"


def _scalar(sandbox: Path, sql: str) -> int:
    if not sandbox.exists():
        return 0
    conn = sqlite3.connect(f"file:{sandbox}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.OperationalError:  # the worker has not created the tables yet
        return 0
    finally:
        conn.close()
    return int(row[0]) if row and row[0] is not None else 0


def charge_count(sandbox: Path) -> int:
    return _scalar(sandbox, "SELECT COUNT(*) FROM sandbox_charges")


def faults_left(sandbox: Path) -> int:
    return _scalar(sandbox, "SELECT remaining FROM sandbox_faults WHERE id = 1")


async def wait_until(predicate, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(every)
    return predicate()


@dataclass(frozen=True)
class Pending:
    workflow_id: str
    run_id: str
    activity_id: str
    activity_type: str
    started: bool
    attempt: int
    worker: str
    last_started: datetime | None


async def describe_all(client: Client, ids: list[str], concurrency: int = 16) -> dict[str, WorkflowExecutionDescription]:
    gate = asyncio.Semaphore(concurrency)

    async def one(workflow_id: str) -> tuple[str, WorkflowExecutionDescription | None]:
        async with gate:
            try:
                return workflow_id, await client.get_workflow_handle(workflow_id).describe()
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    return workflow_id, None
                raise

    return {wid: d for wid, d in await asyncio.gather(*(one(i) for i in ids)) if d is not None}


async def pending_activities(client: Client, ids: list[str]) -> list[Pending]:
    found: list[Pending] = []
    for workflow_id, described in (await describe_all(client, ids)).items():
        for info in described.raw_description.pending_activities:
            found.append(
                Pending(
                    workflow_id=workflow_id,
                    run_id=described.run_id,
                    activity_id=info.activity_id,
                    activity_type=info.activity_type.name,
                    started=info.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
                    attempt=info.attempt,
                    worker=info.last_worker_identity,
                    last_started=info.last_started_time.ToDatetime() if info.HasField("last_started_time") else None,
                )
            )
    return found


async def fail_attempts(client: Client, pending: list[Pending], reason: str) -> int:
    """Fail these activity attempts by id (their retry policy then schedules the next attempt)."""
    failed = 0
    for item in pending:
        handle = client.get_async_activity_handle(workflow_id=item.workflow_id, run_id=item.run_id, activity_id=item.activity_id)
        try:
            await handle.fail(ApplicationError(reason, type="WorkerLost"))
            failed += 1
        except RPCError as error:
            if error.status != RPCStatusCode.NOT_FOUND:  # it completed meanwhile
                raise
    return failed


async def running_journeys(client: Client) -> int:
    return await _count(client, f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running'")


async def all_journeys(client: Client) -> int:
    return await _count(client, f"WorkflowType = '{WORKFLOW_NAME}'")


async def _count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


def unfinished_events(store: Store) -> int:
    """Webhook inbox rows not yet carried out (`received`) or failed and waiting for a redelivery."""
    with Session(store.engine) as session:
        return session.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.source == "stripe", WebhookEvent.status.in_(("received", "failed")))
        ) or 0


async def wait_settled(client: Client, store: Store, journeys: int, timeout: float, say=None) -> bool:
    """Until `journeys` DunningWorkflow runs exist, none is running and the webhook inbox has
    nothing left to carry out; False when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while time.monotonic() < deadline:
        try:
            running, total = await running_journeys(client), await all_journeys(client)
        except RPCError:
            running, total = -1, -1  # the server is restarting
        left = unfinished_events(store)
        if running == 0 and total >= journeys and left == 0:
            return True
        if say and time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            say(f"  waiting: {running} journeys running, {total}/{journeys} started, {left} webhook events unfinished")
        await asyncio.sleep(0.5)
    return False
