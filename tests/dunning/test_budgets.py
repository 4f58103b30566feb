from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dunning.budgets import (
    NETWORK_WINDOWS,
    NetworkWindow,
    earliest_attempt,
    journey_card_keys,
    violations,
)
from dunning.journey_state import CardAttempt
from dunning.rules import RetryLimits
from dunning.models import Decline, PaymentMethod

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
LIMITS = RetryLimits()
INSUFFICIENT = Decline(decline_code="insufficient_funds")


def card(brand: str | None = "visa", pm: str = "pm_1", **extra: object) -> PaymentMethod:
    return PaymentMethod(id=pm, brand=brand, fingerprint="fp_1", **extra)


def attempt(
    at: datetime,
    *,
    brand: str | None = "visa",
    amount: int = 1000,
    currency: str = "usd",
    journey: str = "j1",
    pm: str = "pm_1",
    card_key: str = "fp_1",
    decline: Decline | None = INSUFFICIENT,
) -> CardAttempt:
    return CardAttempt(at, card_key, brand, amount, currency, journey, pm, decline)


def ask(
    history: list[CardAttempt],
    *,
    method: PaymentMethod | None = None,
    not_before: datetime,
    journey: str = "j1",
    amount: int = 1000,
    currency: str = "usd",
    limits: RetryLimits = LIMITS,
):
    return earliest_attempt(
        card=method or card(),
        amount=amount,
        currency=currency,
        journey_id=journey,
        history=history,
        not_before=not_before,
        limits=limits,
    )


def spread(
    n: int, start: datetime, step: timedelta, journey: str | None = None, **kwargs: object
) -> list[CardAttempt]:
    # Without a journey, spread over several so the journey caps stay out of the way.
    return [
        attempt(start + i * step, journey=journey or f"j{i // 6 + 10}", **kwargs) for i in range(n)
    ]


# --- limits configuration -----------------------------------------------------------------------


def test_a_journeys_cards_are_its_methods_and_the_failed_one_once_each_sorted() -> None:
    shared = card(pm="pm_b")  # the same physical card (fingerprint fp_1) as pm_1
    other = PaymentMethod(id="pm_a", brand="visa")  # no fingerprint: its own id is its card
    failed_elsewhere = PaymentMethod(id="pm_failed", brand="visa", fingerprint="fp_0")
    assert journey_card_keys([card(), shared, other], None) == ["fp_1", "pm_a"]
    assert journey_card_keys([card(), other], failed_elsewhere) == ["fp_0", "fp_1", "pm_a"]
    assert journey_card_keys([], card()) == ["fp_1"]


def test_limits_defaults_and_yaml_values() -> None:
    assert (
        LIMITS.visa_reattempts_30d,
        LIMITS.mastercard_attempts_24h,
        LIMITS.mastercard_attempts_30d,
    ) == (15, 10, 35)
    assert LIMITS.mastercard_02_delay == timedelta(hours=72)
    assert (LIMITS.max_attempts_per_payment_method, LIMITS.max_attempts_per_journey) == (8, 12)
    custom = RetryLimits.model_validate({"visa_reattempts_30d": 20, "mastercard_02_delay": "4d"})
    assert custom.visa_reattempts_30d == 20
    assert custom.mastercard_02_delay == timedelta(days=4)
    assert custom.model_dump(mode="json")["mastercard_02_delay"] == "4d"


@pytest.mark.parametrize(
    "bad",
    [
        {"visa_reattempts_30d": 0},
        {"mastercard_attempts_24h": 0},
        {"mastercard_02_delay": "48h"},
        {"max_attempts_per_payment_method": 0},
        {"max_attempts_per_journey": -1},
        {"visa_retries": 3},
    ],
)
def test_limits_reject_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetryLimits.model_validate(bad)


# --- no constraint ------------------------------------------------------------------------------


def test_nothing_in_the_way_returns_not_before() -> None:
    history = [attempt(T0)]
    decision = ask(history, not_before=T0 + timedelta(days=1))
    assert (decision.allowed_at, decision.reasons) == (T0 + timedelta(days=1), ())


# --- Visa 30-day window -------------------------------------------------------------------------


def test_visa_allows_one_original_plus_15_reattempts_in_30_days() -> None:
    history = spread(15, T0, timedelta(days=1))  # 15 attempts: one more fits
    assert ask(history, not_before=T0 + timedelta(days=15)).allowed_at == T0 + timedelta(days=15)
    history = spread(16, T0, timedelta(days=1))  # original + 15 reattempts: full
    decision = ask(history, not_before=T0 + timedelta(days=16))
    assert decision.allowed_at == T0 + timedelta(days=30)  # the original leaves the window
    assert any("Visa" in reason for reason in decision.reasons)
    just_before = ask(history, not_before=T0 + timedelta(days=30) - US)
    assert just_before.allowed_at == T0 + timedelta(days=30)
    assert violations([*history, attempt(T0 + timedelta(days=30), journey="jx")], LIMITS) == []
    late = violations([*history, attempt(T0 + timedelta(days=30) - US, journey="jx")], LIMITS)
    assert any("Visa 30-day" in v for v in late)


def test_visa_limit_follows_the_2026_rule_when_configured() -> None:
    limits = RetryLimits(visa_reattempts_30d=20)
    history = spread(20, T0, timedelta(hours=12))
    assert ask(
        history, not_before=T0 + timedelta(days=10), limits=limits
    ).allowed_at == T0 + timedelta(days=10)
    history = spread(21, T0, timedelta(hours=12))
    assert ask(
        history, not_before=T0 + timedelta(days=11), limits=limits
    ).allowed_at == T0 + timedelta(days=30)


def test_visa_window_counts_only_the_same_amount_and_currency() -> None:
    history = spread(16, T0, timedelta(hours=1))
    later = T0 + timedelta(days=1)
    assert ask(history, not_before=later, amount=2000).allowed_at == later
    assert ask(history, not_before=later, currency="EUR").allowed_at == later
    assert ask(history, not_before=later, currency="USD").allowed_at == T0 + timedelta(days=30)


def test_visa_window_ignores_other_cards() -> None:
    history = spread(16, T0, timedelta(hours=1), card_key="fp_other", pm="pm_other")
    later = T0 + timedelta(days=1)
    assert ask(history, not_before=later).allowed_at == later


def test_visa_window_waits_until_enough_attempts_have_left() -> None:
    # Over the limit already (the limit was lowered): two attempts must age out, not one.
    limits = RetryLimits(visa_reattempts_30d=3)
    history = [attempt(T0 + timedelta(days=d), journey=f"j{d}") for d in (0, 1, 2, 3, 20)]
    decision = ask(history, not_before=T0 + timedelta(days=21), limits=limits)
    assert decision.allowed_at == T0 + timedelta(days=31)


# --- Mastercard windows -------------------------------------------------------------------------


def test_mastercard_24h_limit() -> None:
    history = spread(10, T0, timedelta(hours=1), brand="mastercard")
    decision = ask(history, method=card("mastercard"), not_before=T0 + timedelta(hours=10))
    assert decision.allowed_at == T0 + timedelta(hours=24)
    assert any("24 hours" in reason for reason in decision.reasons)
    edge = ask(history, method=card("mastercard"), not_before=T0 + timedelta(hours=24) - US)
    assert edge.allowed_at == T0 + timedelta(hours=24)
    nine = history[:9]
    assert ask(
        nine, method=card("mastercard"), not_before=T0 + timedelta(hours=9)
    ).allowed_at == T0 + timedelta(hours=9)


def test_mastercard_24h_limit_counts_every_amount() -> None:
    history = spread(10, T0, timedelta(hours=1), brand="mastercard", amount=500)
    decision = ask(
        history, method=card("mastercard"), not_before=T0 + timedelta(hours=10), amount=1000
    )
    assert decision.allowed_at == T0 + timedelta(hours=24)


def test_mastercard_30d_limit() -> None:
    # Every 12 hours: never more than 2 in 24 hours, 35 within 17 days.
    history = spread(35, T0, timedelta(hours=12), brand="mastercard")
    decision = ask(history, method=card("mastercard"), not_before=T0 + timedelta(days=18))
    assert decision.allowed_at == T0 + timedelta(days=30)
    assert any("30 days" in reason for reason in decision.reasons)
    other_amount = ask(
        history, method=card("mastercard"), not_before=T0 + timedelta(days=18), amount=7
    )
    assert other_amount.allowed_at == T0 + timedelta(days=18)
    full = [*history, attempt(T0 + timedelta(days=30) - US, brand="mastercard", journey="jx")]
    assert any("Mastercard 30-day" in v for v in violations(full, LIMITS))


def test_both_mastercard_windows_combine() -> None:
    limits = RetryLimits(mastercard_attempts_24h=2, mastercard_attempts_30d=3)
    history = [
        attempt(T0, brand="mastercard", journey="a"),
        attempt(T0 + timedelta(hours=30), brand="mastercard", journey="b"),
        attempt(T0 + timedelta(hours=31), brand="mastercard", journey="c"),
    ]
    # 24h window frees at T0+54h; the 30-day window (3 attempts) frees at T0+30d.
    decision = ask(
        history, method=card("mastercard"), not_before=T0 + timedelta(hours=32), limits=limits
    )
    assert decision.allowed_at == T0 + timedelta(days=30)


def test_amex_has_only_the_generic_caps() -> None:
    history = spread(40, T0, timedelta(minutes=1), brand="amex")
    later = T0 + timedelta(hours=1)
    assert ask(history, method=card("amex"), not_before=later).allowed_at == later


# --- decline waits ------------------------------------------------------------------------------


def test_mac_02_waits_from_the_decline() -> None:
    history = [attempt(T0, brand="mastercard", decline=Decline(network_advice_code="02"))]
    method = card("mastercard")
    decision = ask(history, method=method, not_before=T0 + timedelta(hours=1))
    assert decision.allowed_at == T0 + timedelta(hours=72)
    assert any("advice code 02" in reason for reason in decision.reasons)
    slower = RetryLimits(mastercard_02_delay="5d")
    assert ask(history, method=method, not_before=T0, limits=slower).allowed_at == T0 + timedelta(
        days=5
    )
    assert ask(
        history, method=method, not_before=T0 + timedelta(days=4)
    ).allowed_at == T0 + timedelta(days=4)


@pytest.mark.parametrize(
    ("code", "wait"),
    [
        ("24", timedelta(hours=1)),
        ("25", timedelta(hours=24)),
        ("26", timedelta(days=2)),
        ("27", timedelta(days=4)),
        ("28", timedelta(days=6)),
        ("29", timedelta(days=8)),
        ("30", timedelta(days=10)),
    ],
)
def test_mac_retry_after_codes(code: str, wait: timedelta) -> None:
    history = [attempt(T0, brand="mastercard", decline=Decline(network_advice_code=code))]
    assert ask(history, method=card("mastercard"), not_before=T0).allowed_at == T0 + wait
    assert violations([*history, attempt(T0 + wait, brand="mastercard")], LIMITS) == []
    assert violations([*history, attempt(T0 + wait - US, brand="mastercard")], LIMITS)


def test_the_longest_wait_wins_even_from_an_older_decline() -> None:
    history = [
        attempt(T0, brand="mastercard", decline=Decline(network_advice_code="30")),
        attempt(
            T0 + timedelta(days=1),
            brand="mastercard",
            decline=Decline(network_advice_code="24"),
            journey="j2",
        ),
    ]
    assert ask(history, method=card("mastercard"), not_before=T0).allowed_at == T0 + timedelta(
        days=10
    )


def test_wait_applies_to_another_amount_and_payment_method_of_the_card() -> None:
    history = [
        attempt(
            T0, brand="mastercard", amount=5, pm="pm_old", decline=Decline(network_advice_code="26")
        )
    ]
    decision = ask(history, method=card("mastercard", pm="pm_new"), not_before=T0)
    assert decision.allowed_at == T0 + timedelta(days=2)


# --- stops --------------------------------------------------------------------------------------


def test_visa_category_1_stops_the_card_for_every_amount_and_method() -> None:
    history = [attempt(T0, amount=5, pm="pm_old", decline=Decline(network_decline_code="43"))]
    decision = ask(history, method=card("visa", pm="pm_new"), not_before=T0 + timedelta(days=40))
    assert decision.allowed_at is None
    assert any("Visa" in reason and "stopped for good" in reason for reason in decision.reasons)


@pytest.mark.parametrize("code", ["03", "21", "40", "41"])
def test_mastercard_do_not_retry_stops_the_card(code: str) -> None:
    history = [attempt(T0, brand="mastercard", amount=5, decline=Decline(network_advice_code=code))]
    assert (
        ask(
            history, method=card("mastercard", pm="pm_new"), not_before=T0 + timedelta(days=40)
        ).allowed_at
        is None
    )


def test_method_stop_blocks_that_payment_method_until_it_is_replaced() -> None:
    history = [attempt(T0, decline=Decline(decline_code="expired_card"))]
    blocked = ask(history, not_before=T0 + timedelta(days=1))
    assert blocked.allowed_at is None
    assert any("expired_card" in reason for reason in blocked.reasons)
    # The customer attached the same card again with a new expiry: a new payment method id.
    replaced = ask(history, method=card("visa", pm="pm_2"), not_before=T0 + timedelta(days=1))
    assert replaced.allowed_at == T0 + timedelta(days=1)


def test_method_stop_is_lifted_by_a_later_success() -> None:
    history = [attempt(T0, decline=Decline(decline_code="authentication_required"))]
    succeeded = card("visa", last_succeeded_at=T0 + timedelta(hours=2))
    assert ask(
        history, method=succeeded, not_before=T0 + timedelta(days=1)
    ).allowed_at == T0 + timedelta(days=1)
    before = card("visa", last_succeeded_at=T0 - timedelta(hours=2))
    assert ask(history, method=before, not_before=T0 + timedelta(days=1)).allowed_at is None
    assert any(
        "follows a stop on pm_1" in v
        for v in violations([*history, attempt(T0 + timedelta(days=1))], LIMITS)
    )
    assert violations([*history, attempt(T0 + timedelta(days=1), pm="pm_2")], LIMITS) == []


def test_network_stop_is_not_lifted_by_a_success() -> None:
    history = [
        attempt(T0, decline=Decline(network_decline_code="04")),
        attempt(T0 + timedelta(hours=1), decline=None),
    ]
    method = card("visa", last_succeeded_at=T0 + timedelta(hours=1))
    assert ask(history, method=method, not_before=T0 + timedelta(days=1)).allowed_at is None


def test_visa_code_on_a_mastercard_does_not_stop() -> None:
    history = [attempt(T0, brand="mastercard", decline=Decline(network_decline_code="04"))]
    later = T0 + timedelta(days=1)
    assert ask(history, method=card("mastercard"), not_before=later).allowed_at == later


# --- journey caps -------------------------------------------------------------------------------


def test_per_payment_method_cap_counts_retries_after_the_initial_failure() -> None:
    # initial failure + 7 retries: an 8th retry is allowed (Stripe's guidance: at most 8)
    eight = spread(8, T0, timedelta(days=1), journey="j1")
    later = T0 + timedelta(days=9)
    assert ask(eight, not_before=later).allowed_at == later
    nine = spread(9, T0, timedelta(days=1), journey="j1")
    decision = ask(nine, not_before=later)
    assert decision.allowed_at is None
    assert any("8 retries on pm_1 (cap 8)" in reason for reason in decision.reasons)
    assert (
        ask(nine, not_before=later, journey="j2").allowed_at == later
    )  # another journey's budget
    assert ask(nine, method=card("visa", pm="pm_2"), not_before=later).allowed_at == later
    assert violations(nine, LIMITS) == []
    assert any(
        "9 retries on pm_1 (cap 8)" in v for v in violations([*nine, attempt(later)], LIMITS)
    )


def test_per_journey_cap_allows_12_retries_after_the_initial_failure() -> None:
    limits = RetryLimits(max_attempts_per_payment_method=20)
    first = spread(7, T0, timedelta(days=1), journey="j1", pm="pm_a", card_key="fp_a")
    second = spread(5, T0 + timedelta(days=7), timedelta(days=1), journey="j1")
    later = T0 + timedelta(days=13)
    # 12 attempts so far = initial + 11 retries: one more retry is allowed.
    assert ask(first + second, not_before=later, limits=limits).allowed_at == later
    more = [*second, attempt(later)]
    decision = ask(first + more, not_before=later + timedelta(days=1), limits=limits)
    assert decision.allowed_at is None
    assert any("12 retries" in reason for reason in decision.reasons)
    assert violations(first + more, limits) == []
    assert any(
        "13 retries" in v
        for v in violations([*first, *more, attempt(later + timedelta(days=1))], limits)
    )


# --- cross-journey sharing ----------------------------------------------------------------------


def test_two_journeys_on_one_card_share_the_visa_budget() -> None:
    # Two failed invoices of one customer, same price, same card.
    limits = RetryLimits(max_attempts_per_payment_method=10)
    j1 = spread(8, T0, timedelta(days=1), journey="inv_1")
    j2 = spread(8, T0 + timedelta(hours=12), timedelta(days=1), journey="inv_2")
    later = T0 + timedelta(days=9)
    decision = ask(j1 + j2, not_before=later, journey="inv_2", limits=limits)
    assert decision.allowed_at == T0 + timedelta(days=30)  # inv_1's first attempt ages out
    assert ask(j1 + j2[:7], not_before=later, journey="inv_2", limits=limits).allowed_at == later
    assert ask(j2, not_before=later, journey="inv_2", limits=limits).allowed_at == later


def test_two_journeys_share_the_mastercard_day() -> None:
    j1 = spread(6, T0, timedelta(hours=1), journey="inv_1", brand="mastercard")
    j2 = spread(
        4,
        T0 + timedelta(minutes=30),
        timedelta(hours=1),
        journey="inv_2",
        brand="mastercard",
        amount=2500,
    )
    decision = ask(
        j1 + j2, method=card("mastercard"), not_before=T0 + timedelta(hours=6), journey="inv_1"
    )
    assert decision.allowed_at == T0 + timedelta(hours=24)


def test_another_journeys_wait_applies() -> None:
    history = [
        attempt(T0, brand="mastercard", journey="inv_1", decline=Decline(network_advice_code="28"))
    ]
    decision = ask(history, method=card("mastercard"), not_before=T0, journey="inv_2", amount=99)
    assert decision.allowed_at == T0 + timedelta(days=6)


# --- violations on its own ----------------------------------------------------------------------


def test_violations_accepts_a_compliant_ledger() -> None:
    history = [
        attempt(T0, brand="mastercard", decline=Decline(network_advice_code="02")),
        attempt(
            T0 + timedelta(hours=72),
            brand="mastercard",
            decline=Decline(decline_code="insufficient_funds"),
        ),
        attempt(T0 + timedelta(days=4), brand="mastercard", decline=None),
    ]
    assert violations(history, LIMITS) == []
    assert violations([], LIMITS) == []


def test_violations_reports_a_retry_after_a_card_stop_on_another_method() -> None:
    history = [
        attempt(T0, brand="mastercard", decline=Decline(network_advice_code="03")),
        attempt(T0 + timedelta(days=30), brand="mastercard", pm="pm_2", journey="j2", amount=1),
    ]
    assert any("card-level stop" in v for v in violations(history, LIMITS))


def test_violations_orders_by_time() -> None:
    stop = attempt(T0, decline=Decline(decline_code="lost_card"))
    after = attempt(T0 + timedelta(days=1))
    assert violations([after, stop], LIMITS)
    assert violations([attempt(T0 - timedelta(days=1)), stop], LIMITS) == []


def test_violations_check_each_attempt_against_every_earlier_decline_on_its_card_only() -> None:
    hour = timedelta(hours=1)
    ledger = [  # out of order: violations sorts by time
        attempt(T0 + 4 * hour, brand="mastercard", card_key="fp_a", pm="pm_a", decline=None),
        attempt(T0 + hour, card_key="fp_b", pm="pm_b", decline=Decline(decline_code="lost_card")),
        attempt(T0 + 3 * hour, card_key="fp_b", pm="pm_b", journey="j2"),
        attempt(T0, brand="mastercard", card_key="fp_a", pm="pm_a", decline=Decline(network_advice_code="02")),
        attempt(T0 + 2 * hour, brand="mastercard", card_key="fp_a", pm="pm_a2", journey="j3"),
    ]
    assert violations(ledger, LIMITS) == [
        f"attempt at {(T0 + 2 * hour).isoformat()} on fp_a/pm_a2 by j3 is within 3d of the decline at {T0.isoformat()}",
        f"attempt at {(T0 + 3 * hour).isoformat()} on fp_b/pm_b by j2 follows a stop on pm_b at {(T0 + hour).isoformat()}",
        f"attempt at {(T0 + 4 * hour).isoformat()} on fp_a/pm_a by j1 is within 3d of the decline at {T0.isoformat()}",
    ]


# --- property: following earliest_attempt never breaks a rule -----------------------------------

RETRYABLE = [
    None,
    Decline(decline_code="insufficient_funds"),
    Decline(decline_code="generic_decline"),
    Decline(decline_code="do_not_honor", network_decline_code="05"),
    Decline(decline_code="insufficient_funds", network_decline_code="51"),
    Decline(advice_code="try_again_later"),
    Decline(decline_code="mystery_code", network_advice_code="77"),
]
# Retryable outcomes dominate so that windows and caps fill up before a stop ends the card.
DECLINES = RETRYABLE * 4 + [
    Decline(decline_code="expired_card", network_decline_code="54"),
    Decline(decline_code="lost_card", network_decline_code="41"),
    Decline(decline_code="authentication_required"),
    Decline(advice_code="confirm_card_data"),
    Decline(network_advice_code="02"),
    Decline(network_advice_code="24"),
    Decline(network_advice_code="25"),
    Decline(network_advice_code="30"),
    Decline(network_advice_code="03"),
    Decline(network_advice_code="01"),
]

limits_strategy = st.builds(
    RetryLimits,
    visa_reattempts_30d=st.integers(1, 5),
    mastercard_attempts_24h=st.integers(1, 4),
    mastercard_attempts_30d=st.integers(1, 8),
    mastercard_02_delay=st.sampled_from([timedelta(hours=72), timedelta(days=5)]),
    max_attempts_per_payment_method=st.integers(1, 12),
    max_attempts_per_journey=st.integers(0, 15),
)
step_strategy = st.tuples(
    st.sampled_from(["inv_1", "inv_2", "inv_3"]),
    st.sampled_from(["pm_a", "pm_b"]),
    st.sampled_from([1000, 1000, 2500]),
    st.one_of(st.integers(0, 3600), st.integers(0, 3 * 86400)),
    st.sampled_from(range(len(DECLINES))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    brand=st.sampled_from(["visa", "mastercard", "amex"]),
    limits=limits_strategy,
    steps=st.lists(step_strategy, min_size=1, max_size=60),
)
def test_following_earliest_attempt_never_violates(
    brand: str, limits: RetryLimits, steps: list[tuple[str, str, int, int, int]]
) -> None:
    history: list[CardAttempt] = []
    clock = T0
    for journey, pm, amount, gap, decline_index in steps:
        method = PaymentMethod(id=pm, brand=brand, fingerprint="fp_shared")
        not_before = clock + timedelta(seconds=gap)
        decision = earliest_attempt(
            card=method,
            amount=amount,
            currency="usd",
            journey_id=journey,
            history=history,
            not_before=not_before,
            limits=limits,
        )
        probe = CardAttempt(not_before, "fp_shared", brand, amount, "usd", journey, pm, None)
        if decision.allowed_at is None:
            # Refusing is justified: an attempt right away would break a rule.
            assert decision.reasons
            assert violations([*history, probe], limits)
            continue
        assert decision.allowed_at >= not_before
        if decision.allowed_at > not_before:
            # Tight: a moment earlier would break the rule that moved it.
            assert decision.reasons
            earlier = replace(probe, at=decision.allowed_at - US)
            assert violations([*history, earlier], limits)
        else:
            assert decision.reasons == ()
        clock = decision.allowed_at
        history.append(
            CardAttempt(
                clock, "fp_shared", brand, amount, "usd", journey, pm, DECLINES[decline_index]
            )
        )
        assert violations(history, limits) == []


# --- the network window table -----------------------------------------------------------------


@pytest.mark.parametrize("rule", NETWORK_WINDOWS, ids=lambda rule: rule.name)
def test_each_network_window_waits_until_its_oldest_attempt_ages_out(rule: NetworkWindow) -> None:
    cap = rule.cap(LIMITS)
    step = rule.length / (cap + 1)
    history = spread(cap, T0, step, brand=rule.brand, decline=None)
    asked = history[-1].at + step
    decision = ask(history, method=card(rule.brand), not_before=asked, journey="j_new")
    assert decision.allowed_at == T0 + rule.length
    assert any(reason.startswith(rule.label.format(cap=cap, reattempts=cap - 1)) for reason in decision.reasons)


@pytest.mark.parametrize("rule", NETWORK_WINDOWS, ids=lambda rule: rule.name)
def test_each_network_window_is_reported_when_broken(rule: NetworkWindow) -> None:
    cap = rule.cap(LIMITS)
    found = violations(spread(cap + 1, T0, rule.length / (cap + 2), brand=rule.brand, decline=None), LIMITS)
    assert any(item.startswith(f"{rule.name} broken") for item in found)
    assert not violations(spread(cap + 1, T0, rule.length / cap + US, brand=rule.brand, decline=None), LIMITS)


def test_every_network_window_names_its_source() -> None:
    assert all(rule.source for rule in NETWORK_WINDOWS)
