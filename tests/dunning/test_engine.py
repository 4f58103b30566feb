"""The pure engine, driven offline: plans, network rules, cycling, messaging rules, signals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dunning import budgets, declines, engine, offline, timing
from dunning.budgets import violations
from dunning.enums import Channel, Stage
from dunning.journey_state import CardAttempt
from dunning.models import ChargeOutcome, Decline, FailedPayment, PaymentMethod
from dunning.policy import load_policy, parse_policy
from dunning.timing import customer_zone, in_quiet_hours

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = load_policy(ROOT / "policies" / "default.yaml")
UTC = timezone.utc


def failure(**overrides) -> FailedPayment:
    data = {
        "id": "in_test",
        "amount": 2500,
        "currency": "usd",
        "failed_at": "2026-11-03T14:00:00Z",
        "customer": {
            "id": "cus_1",
            "country": "US",
            "timezone": "America/New_York",
            "email": "ana@example.com",
            "phone": "+14155550100",
            "name": "Ana",
        },
        "payment_methods": [
            {"id": "pm_visa", "brand": "visa", "default": True, "exp_month": 12, "exp_year": 2030},
            {"id": "pm_mc", "brand": "mastercard", "exp_month": 1, "exp_year": 2031},
        ],
        "initial_decline": {
            "payment_method": "pm_visa",
            "decline_code": "insufficient_funds",
            "network_decline_code": "51",
        },
    }
    data.update(overrides)
    return FailedPayment.model_validate(data)


def attempts(executed):
    return [e for e in executed if e.decision.kind == "attempt"]


def messages(executed):
    return [e for e in executed if e.decision.kind == "message"]


def test_default_policy_plans_a_full_journey_to_hand_off():
    payment = failure()
    state, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    assert state.stage is Stage.handed_off
    assert state.ended_at == payment.failed_at + DEFAULT.window
    assert len(attempts(executed)) == 8
    zone = ZoneInfo("America/New_York")
    for e in attempts(executed):
        local = e.at.astimezone(zone)
        assert 9 <= local.hour < 12, f"retry at {local} is outside the preferred morning hours"
    for e in messages(executed):
        assert not in_quiet_hours(e.at, zone, DEFAULT.timing)


def test_cycling_alternates_usable_methods_and_each_has_its_own_budget():
    payment = failure()
    _, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    used = [e.decision.payment_method_id for e in attempts(executed)]
    assert used[:4] == ["pm_mc", "pm_visa", "pm_mc", "pm_visa"]


def test_cycling_switched_off_retries_only_the_default():
    policy = DEFAULT.model_copy(update={"cycle_payment_methods": False})
    payment = failure()
    _, executed = offline.play(policy, payment, offline.decline_like_initial(payment))
    assert {e.decision.payment_method_id for e in attempts(executed)} == {"pm_visa"}


def test_visa_category_1_stops_the_card_and_moves_to_the_next_method():
    payment = failure(initial_decline={"payment_method": "pm_visa", "decline_code": "lost_card", "network_decline_code": "41"})
    state, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    assert "pm_visa" in state.stopped_methods
    assert all(e.decision.payment_method_id == "pm_mc" for e in attempts(executed))


def test_only_a_stopped_card_leaves_reminders_and_awaits_the_customer():
    payment = failure(
        payment_methods=[{"id": "pm_visa", "brand": "visa", "default": True}],
        initial_decline={"payment_method": "pm_visa", "decline_code": "stolen_card"},
    )
    state, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    assert attempts(executed) == []
    assert messages(executed), "reminders still go out so the customer can add a card"
    skipped = [e for e in executed if e.decision.kind == "skip" and e.decision.step_id == "retry-1"]
    assert "no usable payment method" in skipped[0].decision.reason
    assert state.stage is Stage.handed_off


def test_mastercard_advice_02_waits_72_hours_on_that_card():
    payment = failure(
        payment_methods=[{"id": "pm_mc", "brand": "mastercard", "default": True}],
        initial_decline={"payment_method": "pm_mc", "decline_code": "do_not_honor", "network_advice_code": "02"},
    )
    _, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    times = [payment.failed_at] + [e.at for e in attempts(executed)]
    assert all(b - a >= timedelta(hours=72) for a, b in zip(times, times[1:]))


def test_mastercard_advice_03_never_retries_that_card():
    payment = failure(
        payment_methods=[{"id": "pm_mc", "brand": "mastercard", "default": True}],
        initial_decline={"payment_method": "pm_mc", "decline_code": "do_not_honor", "network_advice_code": "03"},
    )
    _, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    assert attempts(executed) == []


def test_expired_methods_are_skipped():
    payment = failure(
        payment_methods=[
            {"id": "pm_visa", "brand": "visa", "default": True, "exp_month": 1, "exp_year": 2026},
            {"id": "pm_mc", "brand": "mastercard", "exp_month": 1, "exp_year": 2031},
        ],
    )
    _, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    assert {e.decision.payment_method_id for e in attempts(executed)} == {"pm_mc"}


def test_success_recovers_and_runs_the_recovery_steps():
    payment = failure()

    def outcome(decision, method, at):
        if decision.attempt_number == 2:
            return ChargeOutcome(status="succeeded", charge_id="ch_ok")
        return ChargeOutcome(status="declined", decline=payment.initial_decline)

    state, executed = offline.play(DEFAULT, payment, outcome)
    assert state.stage is Stage.recovered
    assert len(attempts(executed)) == 2
    recovery = [e.decision for e in executed if e.decision.step_id in ("recovered", "restore")]
    assert [d.kind for d in recovery] == ["message", "skip"]  # access was never restricted
    assert recovery[0].template == "payment_recovered"


def test_recovery_after_restriction_restores_access():
    payment = failure()

    def outcome(decision, method, at):
        ok = at > payment.failed_at + timedelta(days=15)
        return ChargeOutcome(status="succeeded") if ok else ChargeOutcome(status="declined", decline=payment.initial_decline)

    state, executed = offline.play(DEFAULT, payment, outcome)
    assert state.stage is Stage.recovered
    assert state.access_restricted is False
    kinds = [(e.decision.step_id, e.decision.kind) for e in executed]
    assert ("restrict", "escalation") in kinds and ("restore", "escalation") in kinds


def test_payment_method_update_gets_a_prompt_attempt():
    payment = failure()
    state = engine.start_journey(DEFAULT, payment)
    now = payment.failed_at + timedelta(days=2, hours=3)
    new_card = PaymentMethod(id="pm_new", brand="visa", default=True, fingerprint="fp_new")
    engine.apply_payment_method_updated(DEFAULT, state, new_card, now, "webhook")
    decision = engine.next_decision(DEFAULT, state, now)
    assert decision.kind == "attempt" and decision.payment_method_id == "pm_new"
    assert now < decision.at <= now + timedelta(minutes=10)
    engine.apply_attempt(DEFAULT, state, decision, ChargeOutcome(status="succeeded"), decision.at)
    assert state.stage is Stage.recovered


def test_paid_out_of_band_ends_retries():
    payment = failure()
    state = engine.start_journey(DEFAULT, payment)
    at = payment.failed_at + timedelta(days=5)
    assert engine.apply_payment_succeeded(DEFAULT, state, at, "invoice.paid")
    decision = engine.next_decision(DEFAULT, state, at)
    assert decision.kind == "message" and decision.template == "payment_recovered"
    assert not engine.apply_payment_succeeded(DEFAULT, state, at, "duplicate")


def test_pause_waits_and_resume_shifts_the_ladder():
    payment = failure()
    state = engine.start_journey(DEFAULT, payment)
    paused_at = payment.failed_at + timedelta(hours=12)
    engine.apply_pause(DEFAULT, state, paused_at, "dispute opened")
    assert engine.next_decision(DEFAULT, state, paused_at).kind == "wait"
    assert state.stage is Stage.paused
    resumed_at = paused_at + timedelta(days=10)
    engine.apply_resume(DEFAULT, state, resumed_at, "dispute closed")
    state.steps_done["notice"] = "done"
    decision = engine.next_decision(DEFAULT, state, resumed_at)
    assert decision.step_id == "retry-1"
    assert decision.at >= payment.failed_at + timedelta(days=11)


def test_cancel_ends_the_journey():
    payment = failure()
    state = engine.start_journey(DEFAULT, payment)
    engine.apply_cancel(DEFAULT, state, payment.failed_at + timedelta(days=1), "invoice voided")
    assert state.stage is Stage.cancelled and state.finished
    assert engine.next_decision(DEFAULT, state, payment.failed_at).kind == "finish"


def test_opted_out_channel_falls_back_and_is_explained():
    payment = failure(opted_out=["email"])
    _, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    channels = {e.decision.channel for e in messages(executed)}
    assert Channel.email not in channels
    fallback = [e.decision for e in messages(executed) if e.decision.step_id == "reminder-2"]
    assert fallback[0].channel is Channel.sms
    assert "instead of email (opted out)" in fallback[0].reason


def test_customer_without_contact_details_gets_in_app_only():
    payment = failure(customer={"id": "cus_2", "country": "RO"})
    _, executed = offline.play(DEFAULT, payment, offline.decline_like_initial(payment))
    assert {e.decision.channel for e in messages(executed)} == {Channel.in_app}


def test_other_journeys_on_the_same_card_share_the_visa_budget():
    policy = parse_policy(
        (ROOT / "policies" / "default.yaml").read_text().replace("visa_reattempts_30d: 15", "visa_reattempts_30d: 3")
    )
    payment = failure(payment_methods=[{"id": "pm_visa", "brand": "visa", "default": True}])
    other = [
        CardAttempt(
            at=payment.failed_at - timedelta(days=d),
            card_key="pm_visa",
            brand="visa",
            amount=payment.amount,
            currency="usd",
            journey_id="dunning-in_other",
            payment_method_id="pm_visa",
            decline=Decline(decline_code="insufficient_funds", network_decline_code="51"),
        )
        for d in (1, 2, 3)
    ]
    state = engine.start_journey(policy, payment, ledger=other)
    _, executed = offline.play(policy, payment, offline.decline_like_initial(payment), state=state)
    history = [
        CardAttempt(at=e.at, card_key="pm_visa", brand="visa", amount=2500, currency="usd",
                    journey_id="dunning-in_other", payment_method_id="pm_visa",
                    decline=Decline(network_decline_code="51"))
        for e in other
    ] + [
        CardAttempt(at=a.at, card_key=a.card_key, brand="visa", amount=2500, currency="usd",
                    journey_id=state.journey_id, payment_method_id=a.payment_method_id, decline=a.decline)
        for a in state.attempts
    ]
    assert violations(history, policy.limits) == []
    first = attempts(executed)[0]
    assert first.at >= other[-1].at + timedelta(days=30), "waits until the oldest attempt leaves the 30-day window"


def test_processing_outcome_is_read_back_before_any_new_attempt():
    payment = failure()
    state = engine.start_journey(DEFAULT, payment)
    state.steps_done["notice"] = "done"
    decision = engine.next_decision(DEFAULT, state, payment.failed_at)
    engine.apply_attempt(DEFAULT, state, decision, ChargeOutcome(status="processing"), decision.at)
    follow = engine.next_decision(DEFAULT, state, decision.at)
    assert follow.kind == "reconcile" and follow.attempt_number == decision.attempt_number
    engine.apply_reconciled(DEFAULT, state, ChargeOutcome(status="succeeded", charge_id="ch_1"), follow.at)
    assert state.stage is Stage.recovered
    assert state.attempts[-1].status == "succeeded"


def test_unknown_decline_codes_are_handled_as_generic_and_reported():
    payment = failure(initial_decline={"payment_method": "pm_visa", "decline_code": "brand_new_code"})
    state = engine.start_journey(DEFAULT, payment)
    assert state.attempts[0].decline_class.value == "generic"
    assert "unknown codes handled as generic" in state.timeline[-1].text


# --- properties ---------------------------------------------------------------------------------

DECLINES = st.sampled_from(
    [
        Decline(decline_code="insufficient_funds", network_decline_code="51"),
        Decline(decline_code="do_not_honor", network_decline_code="05"),
        Decline(decline_code="generic_decline"),
        Decline(decline_code="do_not_honor", network_advice_code="02"),
        Decline(decline_code="insufficient_funds", network_advice_code="24"),
        Decline(decline_code="insufficient_funds", network_advice_code="29"),
        Decline(decline_code="do_not_honor", network_advice_code="03"),
        Decline(decline_code="lost_card", network_decline_code="41"),
        Decline(decline_code="expired_card", network_decline_code="54"),
        Decline(decline_code="authentication_required"),
        Decline(decline_code="processing_error", advice_code="try_again_later"),
        Decline(decline_code="card_velocity_exceeded", network_decline_code="61"),
        Decline(decline_code="unheard_of"),
    ]
)
METHODS = st.lists(
    st.builds(
        lambda i, brand, kind, country: PaymentMethod(
            id=f"pm_{i}", brand=brand if kind == "card" else None, type=kind, country=country, default=i == 0
        ),
        st.integers(0, 3),
        st.sampled_from(["visa", "mastercard", "amex"]),
        st.sampled_from(["card", "card", "sepa_debit"]),
        st.sampled_from(["US", "DE", "JP", None]),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda m: m.id,
)
ZONES = st.sampled_from(["America/New_York", "Europe/Bucharest", "Asia/Tokyo", "Australia/Sydney", None])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    methods=METHODS,
    zone=ZONES,
    declines=st.lists(DECLINES, min_size=1, max_size=20),
    succeed_at=st.one_of(st.none(), st.integers(1, 12)),
    opted_out=st.lists(st.sampled_from(list(Channel)), unique=True, max_size=3),
    failed_at=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
    ),
    visa_limit=st.sampled_from([15, 20, 2]),
)
def test_no_journey_breaks_a_network_rule_a_messaging_rule_or_its_window(
    methods, zone, declines, succeed_at, opted_out, failed_at, visa_limit
):
    policy = DEFAULT.model_copy(
        update={"limits": DEFAULT.limits.model_copy(update={"visa_reattempts_30d": visa_limit})}
    )
    payment = FailedPayment(
        id="in_prop",
        amount=1999,
        currency="usd",
        failed_at=failed_at,
        customer={"id": "cus_p", "timezone": zone, "country": "US", "email": "p@example.com", "phone": "+14155550100"},
        payment_methods=tuple(methods),
        initial_decline=declines[0].model_copy(update={"payment_method": methods[0].id}),
        opted_out=tuple(opted_out),
    )

    def outcome(decision, method, at):
        if succeed_at is not None and decision.attempt_number == succeed_at:
            return ChargeOutcome(status="succeeded")
        return ChargeOutcome(status="declined", decline=declines[decision.attempt_number % len(declines)])

    state, executed = offline.play(policy, payment, outcome)
    assert state.finished
    assert state.ended_at <= payment.failed_at + policy.window
    brands = {m.id: m.brand for m in state.payment_methods}
    history = [
        CardAttempt(
            at=a.at, card_key=a.card_key, brand=brands.get(a.payment_method_id), amount=payment.amount,
            currency=payment.currency, journey_id=state.journey_id, payment_method_id=a.payment_method_id,
            decline=a.decline if a.status == "declined" else None,
        )
        for a in state.attempts
    ]
    assert violations(history, policy.limits) == []
    zone_info = customer_zone(payment.customer, None, policy.timing.merchant_timezone)
    for message in state.messages:
        if message.status == "sent":
            assert not in_quiet_hours(message.at, zone_info, policy.timing), message
            assert message.channel not in opted_out
    sent_times = sorted(m.at for m in state.messages if m.status == "sent")
    for t in sent_times:
        assert sum(1 for s in sent_times if t - timedelta(hours=24) < s <= t) <= policy.messaging.max_per_24h
        assert sum(1 for s in sent_times if t - timedelta(days=7) < s <= t) <= policy.messaging.max_per_7d


def test_explain_assumption_repeats_the_initial_decline():
    payment = failure()
    outcome = offline.decline_like_initial(payment)
    result = outcome(None, payment.payment_methods[0], payment.failed_at)
    assert result.status == "declined" and result.decline == payment.initial_decline


@pytest.mark.parametrize("policy_file", ["default.yaml", "demo.yaml"])
def test_shipped_policies_end_every_journey_within_their_window(policy_file):
    policy = load_policy(ROOT / "policies" / policy_file)
    payment = failure()
    state, _ = offline.play(policy, payment, offline.decline_like_initial(payment))
    assert state.stage is Stage.handed_off
    assert state.ended_at - payment.failed_at <= policy.window


def test_a_refused_charge_keeps_its_attempt_number_and_spends_no_budget():
    payment = failure(payment_methods=[{"id": "pm_visa", "brand": "visa", "default": True}])
    state = engine.start_journey(DEFAULT, payment)
    state.steps_done["notice"] = "done"
    first = engine.next_decision(DEFAULT, state, payment.failed_at)
    engine.apply_charge_refused(DEFAULT, state, first, "No such payment_method", first.at)
    assert state.attempts[-1].status == "error" and state.steps_done[first.step_id] == "done"
    following = engine.next_decision(DEFAULT, state, first.at)
    while following.kind != "attempt":
        offline.apply(DEFAULT, state, following, following.at, offline.decline_like_initial(payment), offline.deliver_all)
        following = engine.next_decision(DEFAULT, state, following.at)
    assert following.attempt_number == first.attempt_number + 1, "an idempotency key is never reused"
    history = engine._own_card_attempts(state)
    assert all(h.at != first.at for h in history), "a refused request never reached the network"


def test_the_engines_caches_are_bounded():
    """Workflows share these modules in a long-running worker: no cache may grow without limit."""
    cached = [
        value
        for module in (engine, budgets, declines, timing)
        for value in vars(module).values()
        if hasattr(value, "cache_parameters")
    ]
    assert cached, "the engine caches its pure helpers"
    assert all(f.cache_parameters()["maxsize"] is not None for f in cached)
