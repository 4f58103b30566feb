"""The daily export Schedule, created (or brought up to date) by `make up` once Temporal is ready."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from dunning.collections.config import CollectionsConfig
from dunning.collections.export import SCHEDULE_ID, WORKFLOW_NAME

CATCHUP_WINDOW = timedelta(days=1)
RUN_TIMEOUT = timedelta(hours=23)  # a stuck run ends before the next day's


def export_schedule(config: CollectionsConfig, task_queue: str) -> Schedule:
    at = config.export_time
    return Schedule(
        # No arguments: the run takes its business date from its scheduled time, so whatever
        # data converter a client uses, the Schedule's stored action is the same.
        action=ScheduleActionStartWorkflow(
            WORKFLOW_NAME,
            id=SCHEDULE_ID,
            task_queue=task_queue,
            execution_timeout=RUN_TIMEOUT,
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    second=[ScheduleRange(0)],
                    minute=[ScheduleRange(at.minute)],
                    hour=[ScheduleRange(at.hour)],
                    comment="daily collections export",
                )
            ],
            time_zone_name=config.merchant_timezone,
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.BUFFER_ONE, catchup_window=CATCHUP_WINDOW),
        state=ScheduleState(note="collections export for the collection partner (dunning make up)"),
    )


async def ensure_export_schedule(client: Client, config: CollectionsConfig, task_queue: str) -> str:
    """Create the Schedule, or update an existing one to the current settings while keeping its
    state (ops may have paused it). Returns "created" or "updated"; safe to call on every start."""
    desired = export_schedule(config, task_queue)
    try:
        await client.create_schedule(SCHEDULE_ID, desired)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        return ScheduleUpdate(schedule=Schedule(action=desired.action, spec=desired.spec, policy=desired.policy, state=state))

    await client.get_schedule_handle(SCHEDULE_ID).update(update)
    return "updated"
