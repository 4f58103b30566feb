"""`dunning journeys list | show | pause | resume | cancel | retry-now` against a real dev server,
a worker and the store, as an ops user runs them (Settings from the environment)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import Result
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from dunning.cli import app
from dunning.config import Settings
from dunning.journey import QUERY_STATUS, JourneyStatus
from dunning.scenarios import Scenario
from dunning.temporal import connect
from tests.support import ROOT, start_dev_server

# The default policy, messaging at any hour: the journeys start at the real current time, and the
# tests expect the first notices sent whatever the hour is in the customers' Tokyo.
DEFAULT = (
    (ROOT / "policies" / "default.yaml")
    .read_text()
    .replace('quiet_hours_end: "08:00"', 'quiet_hours_end: "00:00"')
    .replace('quiet_hours_start: "21:00"', 'quiet_hours_start: "23:59:59"')
)
WAIT = 20.0
runner = CliRunner()


@pytest.fixture(scope="module")
async def dev_env():
    env = await start_dev_server()
    yield env
    await env.shutdown()


@pytest.fixture
async def engine(dev_env, harness_factory, tmp_path):
    # The worker reaches Temporal the way the CLI does (same Settings, so the same payload codec).
    client = await connect(Settings(dunning_data_dir=tmp_path, temporal_address=target_of(dev_env)))
    harness = harness_factory(client, tmp_path, DEFAULT)
    async with harness.worker():
        yield harness
    await terminate_open(dev_env.client)


def cli_env(tmp_path: Path, target: str, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'dunning.db'}",
        "DUNNING_DATA_DIR": str(tmp_path),
        "TEMPORAL_ADDRESS": target,
        "USER": "dana",
        "COLUMNS": "250",
        **extra,
    }


def target_of(env: WorkflowEnvironment) -> str:
    return env.client.service_client.config.target_host


async def invoke(args: list[str], env: dict[str, str]) -> Result:
    """The CLI runs its own event loop: run it in a thread while the worker runs in ours."""
    return await asyncio.wait_for(asyncio.to_thread(runner.invoke, app, args, env=env), 60)


async def eventually(check: Callable[[], Awaitable[object]], what: str, timeout: float = WAIT) -> object:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


async def terminate_open(client: Client) -> None:
    async for execution in client.list_workflows("ExecutionStatus = 'Running'"):
        await client.get_workflow_handle(execution.id).terminate("test over")

    async def none_open():
        return not [e async for e in client.list_workflows("ExecutionStatus = 'Running'")]

    await eventually(none_open, "visibility to show no open journeys")


async def settled(handle) -> JourneyStatus:
    """Wait until nothing is due soon, so the outbox does not print into the CLI's captured output."""

    async def quiet():
        status = await handle.query(QUERY_STATUS, result_type=JourneyStatus)
        soon = datetime.now(timezone.utc) + timedelta(minutes=1)
        return status if status and status.messages and status.next_action and status.next_action.at > soon else None

    return await eventually(quiet, f"{handle.id} to settle")


def failure(name: str, customer: str | None = None) -> Scenario:
    return Scenario.model_validate(
        {
            "id": f"in_{name}",
            "amount": 1250,
            "currency": "usd",
            "failed_at": datetime.now(timezone.utc).isoformat(),
            "customer": {"id": customer or f"cus_{name}", "email": "c@example.com", "timezone": "Asia/Tokyo"},
            "payment_methods": [{"id": f"pm_{name}", "brand": "visa", "default": True}],
            "initial_decline": {
                "payment_method": f"pm_{name}",
                "decline_code": "insufficient_funds",
                "network_decline_code": "51",
            },
        }
    )


async def test_list_filters_and_joins_the_projection(engine, dev_env, tmp_path):
    one = await engine.start(failure("list1", "cus_lister"))
    two = await engine.start(failure("list2", "cus_other"))
    for handle in (one, two):
        await settled(handle)
    env = cli_env(tmp_path, target_of(dev_env))

    async def listed():
        result = await invoke(["journeys", "list", "--customer", "cus_lister", "--json"], env)
        assert result.exit_code == 0, result.output
        journeys = json.loads(result.stdout)["journeys"]
        return journeys if journeys else None

    journeys = await eventually(listed, "visibility to list the journey")
    assert [j["journey_id"] for j in journeys] == [one.id]
    assert journeys[0] | {"started_at": None, "next_action_at": None} == {
        "journey_id": one.id, "stage": "retrying", "customer_id": "cus_lister", "amount_due": 1250, "currency": "usd",
        "decline_class": "insufficient_funds", "running": True, "started_at": None, "closed_at": None,
        "policy_version": engine.policy_version, "segment": "default", "next_action": journeys[0]["next_action"],
        "next_action_at": None, "attempts": 0,
    }
    assert journeys[0]["next_action"].startswith("attempt")

    table = await invoke(["journeys", "list", "--stage", "retrying", "--since", "1h"], env)
    assert table.exit_code == 0, table.output
    assert one.id in table.stdout and two.id in table.stdout and "$12.50" in table.stdout
    future = await invoke(["journeys", "list", "--since", "2999-01-01"], env)
    assert future.exit_code == 0 and "no journeys match" in future.stdout
    bad = await invoke(["journeys", "list", "--since", "last week"], env)
    assert bad.exit_code == 2 and "--since 'last week'" in bad.stderr


async def test_show_prints_status_attempts_and_local_times(engine, dev_env, tmp_path):
    handle = await engine.start(failure("show"))
    status = await settled(handle)
    env = cli_env(tmp_path, target_of(dev_env))
    result = await invoke(["journeys", "show", handle.id], env)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{handle.id}" in out and "stage       retrying" in out
    assert "times in Asia/Tokyo and UTC" in out and "local (Asia/Tokyo)" in out
    assert f"why         {status.next_action.reason[:40]}" in out
    assert "insufficient_funds" in out and "51" in out  # decline fields of attempt 0
    started = status.started_at.astimezone(timezone.utc)
    tokyo = started.astimezone(ZoneInfo("Asia/Tokyo"))
    assert tokyo.strftime("%Y-%m-%d %H:%M") in out and started.strftime("%Y-%m-%d %H:%M") in out
    for message in status.messages:
        assert message.step_id in out
    as_json = await invoke(["journeys", "show", handle.id, "--json"], env)
    assert JourneyStatus.model_validate_json(as_json.stdout).journey_id == handle.id

    unknown = await invoke(["journeys", "show", "dunning-in_missing"], env)
    assert unknown.exit_code == 1 and "no journey 'dunning-in_missing'" in unknown.stderr


async def test_pause_resume_cancel_are_audited_with_the_actor(engine, dev_env, tmp_path):
    handle = await engine.start(failure("steer"))
    await settled(handle)
    env = cli_env(tmp_path, target_of(dev_env))

    paused = await invoke(["journeys", "pause", handle.id, "--reason", "dispute opened"], env)
    assert paused.exit_code == 0, paused.output
    assert "pause sent to dunning-in_steer by dana" in paused.stdout

    async def is_paused():
        status = await handle.query(QUERY_STATUS, result_type=JourneyStatus)
        return status.paused

    await eventually(is_paused, "the journey to pause")
    resumed = await invoke(["journeys", "resume", handle.id, "--reason", "dispute won", "--actor", "erin"], env)
    assert resumed.exit_code == 0, resumed.output
    cancelled = await invoke(["journeys", "cancel", handle.id, "--reason", "customer left"], env)
    assert cancelled.exit_code == 0, cancelled.output
    final = await asyncio.wait_for(handle.result(), WAIT)
    assert final.stage.value == "cancelled"
    assert any(e.kind == "resumed" and "dispute won" in e.text for e in final.timeline)

    entries = engine.store.audit_entries(handle.id)
    assert [(e.action, e.actor, e.reason) for e in entries] == [
        ("journey.pause", "dana", "dispute opened"),
        ("journey.resume", "erin", "dispute won"),
        ("journey.cancel", "dana", "customer left"),
    ]
    again = await invoke(["journeys", "pause", handle.id, "--reason", "late"], env)
    assert again.exit_code == 1 and "already ended (cancelled" in again.stderr
    blank = await invoke(["journeys", "cancel", handle.id, "--reason", "  "], env)
    assert blank.exit_code == 1 and "a reason is required" in blank.stderr
    missing = await invoke(["journeys", "cancel", "dunning-in_nobody", "--reason", "x"], env)
    assert missing.exit_code == 1 and "no journey 'dunning-in_nobody'" in missing.stderr
    assert len(engine.store.audit_entries(handle.id)) == 3


async def test_retry_now_prints_the_plan_and_one_key_retries_once(engine, dev_env, tmp_path):
    handle = await engine.start(failure("retrycli"))
    await settled(handle)
    env = cli_env(tmp_path, target_of(dev_env))
    args = ["journeys", "retry-now", handle.id, "--reason", "customer called", "--idempotency-key", "call-1"]
    first = await invoke(args, env)
    assert first.exit_code == 0, first.output
    assert "next: attempt prompt-1 pm_retrycli" in first.stdout
    assert "why:  retry requested by ops: customer called" in first.stdout
    second = await invoke(args, env)
    assert second.exit_code == 0 and second.stdout == first.stdout
    status = await handle.query(QUERY_STATUS, result_type=JourneyStatus)
    assert sum("retry now requested" in e.text for e in status.timeline) == 1
    assert [(e.action, e.actor) for e in engine.store.audit_entries(handle.id)] == [("journey.retry_now", "dana")]


async def test_unreachable_temporal_and_unmigrated_store_are_clear_errors(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    env = cli_env(tmp_path, closed)
    result = await invoke(["journeys", "pause", "dunning-in_x", "--reason", "r"], env)
    assert result.exit_code == 1
    assert f"Temporal at {closed} is unreachable" in result.stderr and "TEMPORAL_ADDRESS" in result.stderr
    empty = await invoke(["policy", "list"], cli_env(tmp_path, closed, DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}"))
    assert empty.exit_code == 1 and "dunning db upgrade" in empty.stderr
