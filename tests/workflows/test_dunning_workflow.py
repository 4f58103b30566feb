"""Full ~60-day journeys on the time-skipping server, with the real activities on sandbox + outbox."""

from __future__ import annotations

import asyncio
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import WorkflowUpdateFailedError

from dunning.enums import Stage
from dunning.journey import (
    AdoptPolicy,
    JourneyStatus,
    NextAction,
    OpsAction,
    PaymentMethodUpdated,
    PaymentSucceeded,
)
from dunning.models import PaymentMethod
from dunning.scenarios import Scenario
from tests.support import keep_history

DECLINE = {"decline_code": "insufficient_funds", "network_decline_code": "51"}
CUSTOMER_ZONE = ZoneInfo("Europe/Bucharest")  # the zone of `scenario`'s customer


def scenario(now: datetime, *, name: str, cards=None, **extra) -> Scenario:
    cards = cards or [{"id": f"pm_{name}", "brand": "visa", "default": True, "behavior": {"default": DECLINE}}]
    data = {
        "id": f"in_{name}",
        "amount": 4200,
        "currency": "usd",
        "failed_at": now.isoformat(),
        "customer": {
            "id": f"cus_{name}",
            "name": "Ana Pop",
            "email": "ana@example.com",
            "phone": "+40712345678",
            "timezone": "Europe/Bucharest",
            "locale": "ro",
        },
        "payment_methods": cards,
        "initial_decline": {"payment_method": cards[0]["id"], **DECLINE},
        "subscription_id": f"sub_{name}",
    }
    data.update(extra)
    return Scenario.model_validate(data)


async def now_of(env) -> datetime:
    return (await env.get_current_time()).astimezone(timezone.utc)


async def customer_daytime(env) -> datetime:
    """Now, or 10:00 the next morning in the customer's zone when it is outside 09:00-17:00 there.

    The session's clock stands wherever earlier tests left it: a journey starting in the
    customer's night sends its first notice only when her quiet hours end.
    """
    now = await now_of(env)
    local = now.astimezone(CUSTOMER_ZONE)
    if 9 <= local.hour < 17:
        return now
    day = local.date() + timedelta(days=1 if local.hour >= 17 else 0)
    await env.sleep(datetime.combine(day, time(10), tzinfo=CUSTOMER_ZONE) - now)
    return await now_of(env)


async def test_recovered_on_a_retry(time_env, harness):
    now = await now_of(time_env)
    card = {
        "id": "pm_ok_later",
        "brand": "visa",
        "default": True,
        "behavior": {
            "default": "succeeded",
            "windows": [{"from": (now - timedelta(days=1)).isoformat(), "until": (now + timedelta(days=5)).isoformat(), "outcome": DECLINE}],
        },
    }
    async with harness.worker():
        handle = await harness.start(scenario(now, name="retry", cards=[card]))
        status: JourneyStatus = await handle.result()
        await keep_history(handle, "recovered_on_retry")
    assert status.stage is Stage.recovered
    retries = [a for a in status.attempts if a.number > 0]
    assert retries[-1].status == "succeeded" and all(a.status == "declined" for a in retries[:-1])
    assert retries[-1].at - now >= timedelta(days=5)
    assert harness.gateway.count_charges(handle.id) == len(retries)
    assert [m.step_id for m in status.messages][-1] == "recovered"
    journey = harness.store.get_journey(handle.id)
    assert journey.stage == "recovered" and journey.attempts_count == len(retries)


async def test_reaching_hand_off_after_sixty_days(time_env, harness):
    now = await now_of(time_env)
    async with harness.worker():
        handle = await harness.start(scenario(now, name="handoff"))
        status: JourneyStatus = await handle.result()
        await keep_history(handle, "hand_off")
    assert status.stage is Stage.handed_off
    assert timedelta(days=60) <= status.ended_at - now < timedelta(days=60, minutes=1)
    assert len([a for a in status.attempts if a.number > 0]) == 8
    actions = [e.action for e in harness.gateway.escalations(handle.id)]
    assert actions == ["restrict_access", "cancel_subscription", "hand_off"]
    sent = [m for m in status.messages if m.status == "sent"]
    assert {m.channel.value for m in sent} == {"email", "sms", "in_app"}
    assert harness.gateway.count_charges(handle.id) == 8


async def test_paid_out_of_band(time_env, harness):
    now = await now_of(time_env)
    async with harness.worker():
        handle = await harness.start(scenario(now, name="oob"))
        await time_env.sleep(timedelta(days=4))
        await handle.signal("payment_succeeded", PaymentSucceeded(event_id="evt_paid", source="invoice.paid"))
        await handle.signal("payment_succeeded", PaymentSucceeded(event_id="evt_paid", source="invoice.paid"))
        status: JourneyStatus = await handle.result()
        await keep_history(handle, "paid_out_of_band")
    assert status.stage is Stage.recovered
    assert "paid out of band (invoice.paid)" in status.end_reason
    assert sum(1 for e in status.timeline if e.kind == "recovered") == 1, "the duplicate signal is ignored"
    charges = harness.gateway.count_charges(handle.id)
    assert charges == len([a for a in status.attempts if a.number > 0]) <= 2


async def test_payment_method_updated_gets_a_prompt_retry(time_env, harness):
    now = await now_of(time_env)
    new_card = {"id": "pm_new", "brand": "mastercard", "behavior": {"default": "succeeded"}}
    response = {"after_messages": 1, "delay": "P2D", "action": "update_payment_method", "new_payment_method": new_card}
    async with harness.worker():
        handle = await harness.start(scenario(now, name="update", customer_response=response))
        await time_env.sleep(timedelta(days=2, hours=5))
        harness.gateway.attach_payment_method("in_update", "pm_new")
        update = PaymentMethodUpdated(
            event_id="evt_pm", payment_method=PaymentMethod(id="pm_new", brand="mastercard", default=True)
        )
        planned: NextAction = await handle.execute_update("payment_method_updated", update, id="evt_pm", result_type=NextAction)
        assert planned.kind == "attempt" and planned.payment_method_id == "pm_new"
        status: JourneyStatus = await handle.result()
        await keep_history(handle, "payment_method_updated")
    assert status.stage is Stage.recovered
    last = status.attempts[-1]
    assert last.payment_method_id == "pm_new" and last.status == "succeeded"
    assert last.at - planned.at < timedelta(minutes=1)


async def test_paused_then_resumed(time_env, harness):
    now = await now_of(time_env)
    async with harness.worker():
        handle = await harness.start(scenario(now, name="pause"))
        await time_env.sleep(timedelta(hours=12))
        await handle.signal("pause", OpsAction(reason="charge.dispute.created", event_id="evt_dp"))
        await time_env.sleep(timedelta(days=20))
        paused: JourneyStatus = await handle.query("status", result_type=JourneyStatus)
        assert paused.stage is Stage.paused and paused.paused
        assert [a for a in paused.attempts if a.number > 0] == [], "nothing is charged while paused"
        await handle.signal("resume", OpsAction(reason="charge.dispute.closed", event_id="evt_dc"))
        status: JourneyStatus = await handle.result()
        await keep_history(handle, "paused_resumed")
    assert status.stage is Stage.handed_off
    first_retry = next(a for a in status.attempts if a.number > 0)
    assert first_retry.at - now >= timedelta(days=21)
    assert status.ended_at - now >= timedelta(days=80)


async def test_cancelled(time_env, harness):
    now = await now_of(time_env)
    async with harness.worker():
        handle = await harness.start(scenario(now, name="cancel"))
        await time_env.sleep(timedelta(days=9))
        await handle.signal("cancel", OpsAction(reason="invoice.voided", event_id="evt_void"))
        status: JourneyStatus = await handle.result()
        await keep_history(handle, "cancelled")
    assert status.stage is Stage.cancelled and status.end_reason == "invoice.voided"
    assert harness.gateway.count_charges(handle.id) == len([a for a in status.attempts if a.number > 0])


async def test_a_repeated_failure_event_starts_one_journey(time_env, harness):
    now = await now_of(time_env)
    case = scenario(now, name="dupe")
    async with harness.worker():
        first, second = await asyncio.gather(harness.start(case), harness.start(case))
        assert first.id == second.id
        assert first.result_run_id == second.result_run_id
        await handle_cancel(first)
        status: JourneyStatus = await first.result()
    assert status.stage is Stage.cancelled
    assert sum(1 for e in status.timeline if e.kind == "started") == 1
    assert not any(e.kind == "payment_failed" for e in status.timeline), "the start event is applied once"


async def handle_cancel(handle) -> None:
    await handle.signal("cancel", OpsAction(reason="test over", event_id="evt_end"))


async def test_status_query_reports_the_next_action(time_env, harness):
    now = await customer_daytime(time_env)  # else the notice, not retry-1, may still be next
    async with harness.worker():
        handle = await harness.start(scenario(now, name="query"))
        await time_env.sleep(timedelta(hours=2))
        status: JourneyStatus = await handle.query("status", result_type=JourneyStatus)
        await handle_cancel(handle)
        await handle.result()
    assert status.stage is Stage.retrying
    assert status.next_action is not None and status.next_action.step_id == "retry-1"
    assert status.attempts[0].number == 0 and status.attempts[0].decline_class.value == "insufficient_funds"
    assert status.policy_version == harness.policy_version


async def test_journeys_keep_their_policy_version_until_an_explicit_rollout(time_env, harness, default_policy_text):
    now = await now_of(time_env)
    async with harness.worker():
        handle = await harness.start(scenario(now, name="rollout"))
        await time_env.sleep(timedelta(days=5))
        faster = default_policy_text.replace("id: retry-3, at: 7d, window: 3d", "id: retry-3, at: 5d, window: 1d")
        new_version = harness.publish(faster)
        before: JourneyStatus = await handle.query("status", result_type=JourneyStatus)
        assert before.policy_version == harness.policy_version != new_version, "publishing alone moves nothing"
        await handle.signal("adopt_policy", AdoptPolicy(version=new_version, reason="rollout 42"))
        await time_env.sleep(timedelta(days=2))
        after: JourneyStatus = await handle.query("status", result_type=JourneyStatus)
        await handle_cancel(handle)
        await handle.result()
    assert after.policy_version == new_version
    assert any(e.kind == "policy" and "rollout 42" in e.text for e in after.timeline)
    steps = [a.step_id for a in after.attempts]
    assert steps.count("retry-1") == 1 and steps.count("retry-2") == 1, "steps already done are not repeated"
    retry_3 = next(a for a in after.attempts if a.step_id == "retry-3")
    assert timedelta(days=5) <= retry_3.at - now <= timedelta(days=6, hours=1)


async def test_updates_are_rejected_once_the_journey_is_recovered(time_env, harness_factory, tmp_path, default_policy_text):
    slow_confirmation = default_policy_text.replace(
        "{id: recovered, at: 0s, window: 2d,", "{id: recovered, at: 1d, window: 2d,"
    )
    harness = harness_factory(time_env.client, tmp_path, slow_confirmation)
    now = await now_of(time_env)
    async with harness.worker():
        handle = await harness.start(scenario(now, name="late"))
        await handle.signal("payment_succeeded", PaymentSucceeded(event_id="evt_paid_late"))
        for _ in range(50):
            status = await handle.query("status", result_type=JourneyStatus)
            if status is not None and status.stage is Stage.recovered:
                break
            await asyncio.sleep(0.1)
        late = PaymentMethodUpdated(event_id="evt_late", payment_method=PaymentMethod(id="pm_too_late", default=True))
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update("payment_method_updated", late, id="evt_late")
        assert "is recovered" in str(rejected.value.cause)
        final: JourneyStatus = await handle.result()
    assert final.stage is Stage.recovered
    assert not any(a.payment_method_id == "pm_too_late" for a in final.attempts)


async def test_a_long_gateway_outage_delays_the_attempt_then_reads_it_back(time_env, harness):
    now = await now_of(time_env)
    harness.gateway.fail_next(10_000, kind="server_error")  # longer than the charge deadline
    async with harness.worker():
        handle = await harness.start(scenario(now, name="outage"))
        # retry-1 is placed within days 1-3; its charge retries until the 20 h deadline
        await time_env.sleep(timedelta(days=4))
        harness.gateway.fail_next(0)
        status: JourneyStatus = await handle.result()
    first = next(a for a in status.attempts if a.number == 1)
    assert first.status == "declined", "read back after the deadline: nothing was charged"
    assert any(e.kind == "reconciled" and "attempt 1" in e.text for e in status.timeline)
    charged = harness.gateway.charges_by_key()
    assert f"{handle.id}:attempt:1" not in charged, "the outage never charged attempt 1"
    assert status.stage is Stage.handed_off


async def test_cards_with_an_issuer_country_plan_on_real_bank_calendars(time_env, harness):
    now = await now_of(time_env)
    cards = [
        {"id": "pm_us", "brand": "visa", "country": "US", "default": True,
         "behavior": {"default": "succeeded", "windows": [{"from": (now - timedelta(days=1)).isoformat(),
                                                         "until": (now + timedelta(days=2)).isoformat(), "outcome": DECLINE}]}},
        {"id": "pm_sepa", "type": "sepa_debit", "country": "DE", "behavior": {"default": DECLINE}},
    ]
    async with harness.worker():
        handle = await harness.start(scenario(now, name="calendars", cards=cards))
        # a workflow task failing inside the sandbox would retry forever: bound the wait
        status: JourneyStatus = await asyncio.wait_for(handle.result(), timeout=60)
    assert status.stage is Stage.recovered, status.timeline
    assert status.attempts[-1].payment_method_id == "pm_us"
