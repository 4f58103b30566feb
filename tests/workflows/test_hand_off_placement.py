"""A journey reaching its policy's end on the time-skipping server: hand_off places once, write_off never."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta

from activities.collections import CollectionsActivities
from activities.outbox import OutboxSender
from dunning.collections import CollectionsConfig, placement_id_for
from dunning.enums import Channel, Stage
from dunning.journey import JourneyStatus, OpsAction
from tests.workflows.test_dunning_workflow import now_of, scenario
from worker import build_worker

WRITE_OFF_POLICY = """\
name: write-off-quickly
window: 3d
grace_period: 1d
steps:
  - {id: notice, at: 0s, window: 1d, action: notify, channels: [email], template: payment_failed}
  - {id: retry-1, at: 1d, window: 1d, action: retry}
  - {id: write-off, at: 3d, action: write_off}
"""


@asynccontextmanager
async def worker(harness, tmp_path, partner_fields=("name", "email", "phone", "country"), **config_extra):
    """The harness's engine with collections settings of the test's choosing."""
    config_extra.setdefault("export_url", (tmp_path / "exports").as_uri())
    config = CollectionsConfig(partner_fields=partner_fields, **config_extra)
    async with build_worker(
        harness.client,
        store=harness.store,
        gateway=harness.gateway,
        senders={channel: OutboxSender(channel, harness.store) for channel in Channel},
        task_queue=harness.task_queue,
        executor=ThreadPoolExecutor(8),
        collections=CollectionsActivities(harness.store, config),
    ) as running:
        yield running


async def test_hand_off_creates_exactly_one_placement_with_the_journeys_facts(time_env, harness, tmp_path):
    now = await now_of(time_env)
    due = now - timedelta(days=3)
    async with worker(harness, tmp_path, partner_fields=("name", "email", "country")):
        handle = await harness.start(scenario(now, name="placed", due_date=due.isoformat()))
        status: JourneyStatus = await handle.result()
    assert status.stage is Stage.handed_off and status.end_reason == "handed off to the collection partner"
    assert [e.action for e in harness.gateway.escalations(handle.id)] == ["restrict_access", "cancel_subscription", "hand_off"]

    placements = harness.store.list_placements()
    assert len(placements) == 1
    placed = placements[0]
    assert placed.placement_id == placement_id_for(handle.id) and placed.journey_id == handle.id
    assert (placed.payment_reference, placed.customer_id) == ("in_placed", "cus_placed")
    assert placed.contact == {"name": "Ana Pop", "email": "ana@example.com", "country": None}, "phone is not agreed"
    assert (placed.amount, placed.currency) == (4200, "usd")
    assert placed.original_due_date == due and placed.first_failure_at == status.started_at
    attempts = status.attempts
    assert placed.attempts_summary["count"] == len(attempts) == 9
    assert placed.attempts_summary["last_decline_class"] == attempts[-1].decline_class.value == "insufficient_funds"
    sent = [m for m in status.messages if m.status == "sent"]
    by_channel = {c: sum(1 for m in sent if m.channel.value == c) for c in ("email", "sms", "in_app")}
    assert placed.messages_summary["count_by_channel"] == {c: n for c, n in by_channel.items() if n}
    assert placed.disputed is False and placed.policy_version == status.policy_version
    hand_off = next(e for e in status.timeline if e.kind == "escalation" and e.text.startswith("hand_off"))
    assert timedelta(0) <= hand_off.at - placed.created_at < timedelta(seconds=5) and hand_off.at == status.ended_at
    assert placed.export_id is None and placed.recalled_at is None


async def test_a_disputed_journey_is_placed_flagged(time_env, harness, tmp_path):
    now = await now_of(time_env)
    async with worker(harness, tmp_path):
        handle = await harness.start(scenario(now, name="disputed"))
        await time_env.sleep(timedelta(hours=12))
        await handle.signal("pause", OpsAction(reason="charge.dispute.created", event_id="evt_dp"))
        await time_env.sleep(timedelta(days=2))
        await handle.signal("resume", OpsAction(reason="charge.dispute.closed", event_id="evt_dc"))
        status: JourneyStatus = await handle.result()
    assert status.stage is Stage.handed_off
    placed = harness.store.placement_for_journey(handle.id)
    assert placed.disputed is True
    assert placed.contact == {"name": "Ana Pop", "email": "ana@example.com", "phone": "+40712345678", "country": None}


async def test_write_off_ends_handed_off_without_a_placement(time_env, harness_factory, tmp_path):
    harness = harness_factory(time_env.client, tmp_path, WRITE_OFF_POLICY)
    now = await now_of(time_env)
    async with worker(harness, tmp_path):
        handle = await harness.start(scenario(now, name="writeoff"))
        status: JourneyStatus = await handle.result()
    assert status.stage is Stage.handed_off and status.end_reason == "written off"
    assert [e.action for e in harness.gateway.escalations(handle.id)] == ["write_off"]
    assert harness.store.list_placements() == []
