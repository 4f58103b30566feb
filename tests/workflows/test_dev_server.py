"""On the real dev server (SQLite file, WAL): a journey survives a server restart and finishes."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timezone

from temporalio.testing import WorkflowEnvironment

from dunning.enums import Stage
from dunning.journey import JourneyStatus
from dunning.scenarios import Scenario
from tests.support import start_dev_server

# A compressed journey (seconds instead of days) with messaging rules opened up for the test.
FAST_POLICY = """\
name: fast
window: 24s
grace_period: 8s
timing:
  retry_hours: ["00:00", "23:59:59"]
  quiet_hours_end: "00:00"
  quiet_hours_start: "23:59:59"
  jitter: 0s
messaging: {max_per_24h: 10, max_per_7d: 20}
steps:
  - {id: notice, at: 0s, window: 2s, action: notify, channels: [email], template: payment_failed}
  - {id: retry-1, at: 2s, window: 2s, action: retry}
  - {id: retry-2, at: 8s, window: 2s, action: retry}
  - {id: retry-3, at: 16s, window: 2s, action: retry}
  - {id: hand-off, at: 24s, action: hand_off}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_server(db_path, port) -> WorkflowEnvironment:
    return await start_dev_server(
        dev_server_database_filename=str(db_path),
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"],
        port=port,
    )


async def test_journey_finishes_after_the_server_restarts_on_the_same_file(tmp_path, harness_factory):
    port, db_path = free_port(), tmp_path / "temporal.db"
    env = await start_server(db_path, port)
    harness = harness_factory(env.client, tmp_path, FAST_POLICY)
    scenario = Scenario.model_validate(
        {
            "id": "in_restart",
            "amount": 1500,
            "currency": "eur",
            "failed_at": datetime.now(timezone.utc).isoformat(),
            "customer": {"id": "cus_restart", "email": "r@example.com", "timezone": "Europe/Paris"},
            "payment_methods": [
                {"id": "pm_r", "brand": "visa", "default": True, "behavior": {"default": {"decline_code": "insufficient_funds"}}}
            ],
            "initial_decline": {"payment_method": "pm_r", "decline_code": "insufficient_funds"},
        }
    )
    try:
        async with harness.worker():
            handle = await harness.start(scenario)
            for _ in range(100):  # until the first retry has run
                status = await handle.query("status", result_type=JourneyStatus)
                if status and any(a.number > 0 for a in status.attempts):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the first retry never ran")
    finally:
        await env.shutdown()

    env = await start_server(db_path, port)
    try:
        harness.client = env.client
        async with harness.worker():
            final = await asyncio.wait_for(
                env.client.get_workflow_handle(handle.id, result_type=JourneyStatus).result(), timeout=90
            )
    finally:
        await env.shutdown()
    assert final.stage is Stage.handed_off
    retries = [a for a in final.attempts if a.number > 0]
    assert [a.number for a in retries] == [1, 2, 3]
    assert harness.gateway.count_charges(handle.id) == 3, "one charge per attempt number across the restart"
