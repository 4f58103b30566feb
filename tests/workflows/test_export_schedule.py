"""The export Schedule on the real dev server: created once, kept current without losing ops'
pause, and its runs export the merchant's date of the scheduled time."""

from __future__ import annotations

import asyncio
import time as clock
from datetime import UTC, datetime, time, timedelta

from temporalio.client import ScheduleActionStartWorkflow, ScheduleRange

from dunning.collections import CollectionsConfig
from dunning.collections.export import SCHEDULE_ID, ExportResult, business_date_for
from dunning.collections.schedule import CATCHUP_WINDOW, ensure_export_schedule
from tests.support import start_dev_server
from tests.workflows.test_dev_server import free_port
from tests.workflows.test_hand_off_placement import worker


async def eventually(probe, timeout: float = 20.0, what: str = "condition"):
    deadline = clock.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if clock.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s")
        await asyncio.sleep(0.2)


async def test_schedule_is_idempotent_keeps_ops_pause_and_runs_the_export(tmp_path, harness_factory, default_policy_text):
    env = await start_dev_server(
        port=free_port(),
    )
    try:
        harness = harness_factory(env.client, tmp_path, default_policy_text)
        queue = harness.task_queue
        config = CollectionsConfig(export_url=(tmp_path / "exports").as_uri(), merchant_timezone="Europe/Bucharest")
        assert await ensure_export_schedule(env.client, config, queue) == "created"
        assert await ensure_export_schedule(env.client, config, queue) == "updated"

        async def listed():
            return [s.id async for s in await env.client.list_schedules()]

        assert await eventually(listed, what="the schedule listed") == [SCHEDULE_ID], "exactly one"
        handle = env.client.get_schedule_handle(SCHEDULE_ID)
        schedule = (await handle.describe()).schedule
        calendar = schedule.spec.calendars[0]
        assert (calendar.hour, calendar.minute, calendar.second) == ((ScheduleRange(2),), (ScheduleRange(0),), (ScheduleRange(0),))
        assert schedule.spec.time_zone_name == "Europe/Bucharest"
        assert schedule.policy.catchup_window == CATCHUP_WINDOW == timedelta(days=1)
        assert isinstance(schedule.action, ScheduleActionStartWorkflow)
        assert (schedule.action.workflow, schedule.action.task_queue) == ("CollectionsExportWorkflow", queue)

        await handle.pause(note="partner maintenance")
        moved = CollectionsConfig(
            export_url=config.export_url, merchant_timezone="America/New_York", export_time=time(3, 30)
        )
        assert await ensure_export_schedule(env.client, moved, queue) == "updated"
        description = await handle.describe()
        calendar = description.schedule.spec.calendars[0]
        assert (calendar.hour, calendar.minute) == ((ScheduleRange(3),), (ScheduleRange(30),))
        assert description.schedule.spec.time_zone_name == "America/New_York"
        assert description.schedule.state.paused and description.schedule.state.note == "partner maintenance"
        assert await eventually(listed, what="the schedule listed") == [SCHEDULE_ID]

        await handle.unpause()
        async with worker(harness, tmp_path, merchant_timezone="America/New_York"):
            triggered_at = datetime.now(UTC)
            await handle.trigger()

            async def started():
                return (await handle.describe()).info.recent_actions

            action = (await eventually(started, what="a triggered run"))[0]
            run = env.client.get_workflow_handle(action.action.workflow_id, result_type=ExportResult)
            result = await asyncio.wait_for(run.result(), timeout=60)
        assert result.business_date == business_date_for(triggered_at, "America/New_York")
        assert (tmp_path / "exports" / f"manifest-{result.business_date}.json").is_file()
    finally:
        await env.shutdown()
