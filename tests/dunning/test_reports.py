"""Recovery reports on a known set of journeys, on SQLite and PostgreSQL: every figure asserted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest

from dunning.reports import (
    CurrencyFigures,
    FunnelStep,
    GroupBy,
    GroupFigures,
    Interval,
    PeriodFigures,
    ReportError,
    breakdown,
    open_journeys,
    parse_since,
    recovery_report,
)
from dunning.store import CardAttemptRecord, JourneyRecord, MessageRecord, Store
from tests.support import ROOT

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday
H, D = timedelta(hours=1), timedelta(days=1)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:  # noqa: F811
    store = Store(db_url)
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def seeded(store: Store) -> Store:
    seed(store)
    return store


def seed(store: Store) -> str:
    """Eight journeys (see the table in the module's tests); returns the policy version."""
    version = store.publish_policy(
        name="default", yaml_text=(ROOT / "policies" / "default.yaml").read_text(), published_by="test"
    ).version

    def journey(n, *, currency, amount, decline_class, segment, variant, start, stage, recovered_at=None,
                via=None, step=None, attempts=(), messages=(), next_action=None):
        journey_id = f"dunning-in_a{n}"
        card = f"fp_card_{n}"
        for number, step_id, offset, status in [(0, "initial", timedelta(0), "declined"), *attempts]:
            store.reserve_card_attempt(
                CardAttemptRecord(
                    journey_id=journey_id, attempt_number=number, card_key=card, brand="visa",
                    payment_method_id=f"pm_{n}", amount=amount, currency=currency, at=start + offset,
                    status=status, decline_class=decline_class if status == "declined" else None,
                    decline_code="insufficient_funds" if status == "declined" else None, step_id=step_id,
                ),
                check=lambda history: True,
            )
        for step_id, channel, offset, status in messages:
            record = MessageRecord(
                journey_id=journey_id, customer_id=f"cus_{n}", channel=channel, step_id=step_id,
                created_at=start + offset,
            )
            store.claim_message(record)
            store.mark_message(record.dedupe_key, status=status)
        ended = {"recovered": recovered_at, "handed_off": start + 60 * D, "cancelled": start + 2 * D}.get(stage)
        store.upsert_journey(
            JourneyRecord(
                journey_id=journey_id, payment_reference=f"in_a{n}", payment_kind="invoice",
                customer_id=f"cus_{n}", stage=stage, amount=amount, currency=currency,
                decline_class=decline_class, policy_version=version, segment=segment, variant=variant,
                started_at=start, updated_at=ended or start + 4 * D, ended_at=ended,
                next_action=next_action[0] if next_action else None,
                next_action_at=next_action[1] if next_action else None,
                recovered_amount=amount if stage == "recovered" else 0,
                recovered_at=recovered_at, recovered_step=step, recovered_via=via,
                attempts_count=len(attempts),
                messages_count=sum(1 for m in messages if m[3] == "sent"),
                timeline=[{"at": start.isoformat(), "kind": "started", "text": f"payment failed; policy {version}"}],
            )
        )

    journey(1, currency="eur", amount=1000, decline_class="insufficient_funds", segment="default", variant=None,
            start=T0, stage="recovered", recovered_at=T0 + 3 * D, via="retry", step="retry-2",
            attempts=[(1, "retry-1", D, "declined"), (2, "retry-2", 3 * D, "succeeded")],
            messages=[("notice", "email", H, "sent"), ("notice", "in_app", H, "sent"),
                      ("recovered", "email", 3 * D + H, "sent")])
    journey(2, currency="eur", amount=3000, decline_class="insufficient_funds", segment="default", variant=None,
            start=T0 + D, stage="recovered", recovered_at=T0 + 6 * D, via="out_of_band",
            attempts=[(1, "retry-1", D, "declined"), (2, "retry-2", 3 * D, "declined")],
            messages=[("notice", "email", H, "sent"), ("reminder-1", "sms", 4 * D, "sent"),
                      ("recovered", "email", 5 * D + H, "sent")])
    journey(3, currency="usd", amount=2000, decline_class="temporary", segment="high_value", variant="b",
            start=T0, stage="retrying", next_action=("attempt retry-3", T0 + 7 * D),
            attempts=[(1, "retry-1", D, "declined"), (2, "retry-2", 3 * D, "declined")],
            messages=[("notice", "email", H, "sent"), ("reminder-1", "email", 4 * D, "sent"),
                      ("reminder-1", "sms", 4 * D, "skipped")])
    journey(4, currency="usd", amount=5000, decline_class="temporary", segment="high_value", variant="a",
            start=T0 + 8 * D, stage="recovered", recovered_at=T0 + 9 * D + 12 * H, via="retry", step="prompt-2",
            attempts=[(1, "retry-1", D, "declined"), (2, "prompt-2", D + 12 * H, "succeeded")],
            messages=[("notice", "email", H / 2, "sent"), ("notice", "in_app", H / 2, "failed")])
    journey(5, currency="jpy", amount=500, decline_class=None, segment="default", variant=None,
            start=T0 + 8 * D, stage="handed_off",
            attempts=[(1, "retry-1", D, "declined"), (2, "retry-2", 3 * D, "declined")],
            messages=[("notice", "email", H, "sent"), ("reminder-1", "sms", 4 * D, "sent"),
                      ("final-notice", "email", 45 * D, "sent")])
    journey(6, currency="eur", amount=1500, decline_class="insufficient_funds", segment="default", variant=None,
            start=T0, stage="recovered", recovered_at=T0 + H / 2, via="out_of_band",
            messages=[("recovered", "email", H / 2 + 10 * timedelta(minutes=1), "sent")])
    journey(7, currency="eur", amount=2500, decline_class="insufficient_funds", segment="default", variant=None,
            start=T0 - 10 * D, stage="recovered", recovered_at=T0 - 9 * D, via="retry", step="retry-1",
            attempts=[(1, "retry-1", D, "succeeded")], messages=[("notice", "email", H, "sent")])
    journey(8, currency="eur", amount=700, decline_class="temporary", segment="high_value", variant="a",
            start=T0 + 9 * D, stage="cancelled")
    return version


def cur(journeys: int, due: int, recovered: int, rate: float | None) -> CurrencyFigures:
    return CurrencyFigures(journeys=journeys, amount_due=due, recovered_amount=recovered, recovery_rate_by_amount=rate)


def group(key, journeys, open_, recovered, rate, currencies, median, attempts, sent, per) -> GroupFigures:
    return GroupFigures(
        key=key, journeys=journeys, open=open_, recovered=recovered, recovery_rate=rate, currencies=currencies,
        median_days_to_recovery=median, attempts_per_recovery=attempts, messages_sent=sent, messages_per_recovery=per,
    )


EUR_ALL = cur(5, 8700, 8000, 0.9195)
JPY = cur(1, 500, 0, 0.0)
USD = cur(2, 7000, 5000, 0.7143)
NO_STEP = group(None, 2, 0, 1, 0.5, {"eur": cur(2, 2200, 1500, 0.6818)}, 0.02, 0.0, 0, 0.0)
HIGH_VALUE = (3, 1, 1, 0.3333, {"eur": cur(1, 700, 0, 0.0), "usd": USD}, 1.5, 2.0, 3, 1.0)
DEFAULT = (5, 0, 4, 0.8, {"eur": cur(4, 8000, 8000, 1.0), "jpy": JPY}, 2.0, 1.25, 8, 1.25)


def test_totals_groups_by_decline_class_funnel_and_days(seeded: Store):
    report = recovery_report(seeded, now=NOW)
    assert report.generated_at == NOW and report.since is None and report.by is GroupBy.decline_class
    assert report.totals == group(None, 8, 1, 5, 0.625, {"eur": EUR_ALL, "jpy": JPY, "usd": USD}, 1.5, 1.4, 11, 1.2)
    assert list(report.totals.currencies) == ["eur", "jpy", "usd"]
    assert report.groups == [
        group("insufficient_funds", 4, 0, 4, 1.0, {"eur": cur(4, 8000, 8000, 1.0)}, 2.0, 1.25, 5, 1.25),
        group("temporary", *HIGH_VALUE),
        group(None, 1, 0, 0, 0.0, {"jpy": JPY}, None, None, 3, None),
    ]
    assert report.funnel == [
        FunnelStep(step=None, reached=8, reached_rate=1.0, recovered=1, recovery_rate=0.125),
        FunnelStep(step="notice", reached=6, reached_rate=0.75, recovered=0, recovery_rate=0.0),
        FunnelStep(step="retry-1", reached=6, reached_rate=0.75, recovered=1, recovery_rate=0.1667),
        FunnelStep(step="retry-2", reached=4, reached_rate=0.5, recovered=1, recovery_rate=0.25),
        FunnelStep(step="reminder-1", reached=3, reached_rate=0.375, recovered=1, recovery_rate=0.3333),
        FunnelStep(step="final-notice", reached=1, reached_rate=0.125, recovered=0, recovery_rate=0.0),
        FunnelStep(step="prompt", reached=1, reached_rate=0.125, recovered=1, recovery_rate=1.0),
    ]


def test_group_by_step_uses_the_recovering_retry_or_the_last_step_reached(seeded: Store):
    report = recovery_report(seeded, by="step", now=NOW)
    assert report.groups == [
        group("retry-1", 1, 0, 1, 1.0, {"eur": cur(1, 2500, 2500, 1.0)}, 1.0, 1.0, 1, 1.0),
        group("retry-2", 1, 0, 1, 1.0, {"eur": cur(1, 1000, 1000, 1.0)}, 3.0, 2.0, 2, 2.0),
        group("reminder-1", 2, 1, 1, 0.5, {"eur": cur(1, 3000, 3000, 1.0), "usd": cur(1, 2000, 0, 0.0)},
              5.0, 2.0, 4, 2.0),
        group("final-notice", 1, 0, 0, 0.0, {"jpy": JPY}, None, None, 3, None),
        group("prompt", 1, 0, 1, 1.0, {"usd": cur(1, 5000, 5000, 1.0)}, 1.5, 2.0, 1, 1.0),
        NO_STEP,
    ]
    assert breakdown(seeded, by=GroupBy.step) == report.groups


def test_group_by_channel_counts_exposed_journeys_and_their_recoveries(seeded: Store):
    groups = breakdown(seeded, by="channel")
    assert groups == [
        group("email", 6, 1, 4, 0.6667, {"eur": cur(3, 6500, 6500, 1.0), "jpy": JPY, "usd": USD}, 2.25, 1.75, 8, 1.0),
        group("sms", 2, 0, 1, 0.5, {"eur": cur(1, 3000, 3000, 1.0), "jpy": JPY}, 5.0, 2.0, 2, 1.0),
        group("in_app", 1, 0, 1, 1.0, {"eur": cur(1, 1000, 1000, 1.0)}, 3.0, 2.0, 1, 1.0),
        NO_STEP,
    ]
    assert recovery_report(seeded, by="channel", now=NOW).groups == groups


def test_group_by_segment_and_variant(seeded: Store):
    assert breakdown(seeded, by="segment") == [group("default", *DEFAULT), group("high_value", *HIGH_VALUE)]
    assert breakdown(seeded, by="variant") == [
        group("a", 2, 0, 1, 0.5, {"eur": cur(1, 700, 0, 0.0), "usd": cur(1, 5000, 5000, 1.0)}, 1.5, 2.0, 1, 1.0),
        group("b", 1, 1, 0, 0.0, {"usd": cur(1, 2000, 0, 0.0)}, None, None, 2, None),
        group(None, *DEFAULT),
    ]


def period(day: date, journeys=0, recovered=0, rate=None, recoveries=0, amounts=None) -> PeriodFigures:
    return PeriodFigures(period=day, journeys=journeys, recovered=recovered, recovery_rate=rate,
                         recoveries=recoveries, recovered_amount=amounts or {})


def test_over_time_per_day_fills_gaps_and_per_week_starts_monday(seeded: Store):
    report = recovery_report(seeded, now=NOW)
    assert report.interval is Interval.day  # 20 days of data: auto picks days
    expected = {
        date(2026, 2, 20): period(date(2026, 2, 20), 1, 1, 1.0),
        date(2026, 2, 21): period(date(2026, 2, 21), recoveries=1, amounts={"eur": 2500}),
        date(2026, 3, 2): period(date(2026, 3, 2), 3, 2, 0.6667, 1, {"eur": 1500}),
        date(2026, 3, 3): period(date(2026, 3, 3), 1, 1, 1.0),
        date(2026, 3, 5): period(date(2026, 3, 5), recoveries=1, amounts={"eur": 1000}),
        date(2026, 3, 8): period(date(2026, 3, 8), recoveries=1, amounts={"eur": 3000}),
        date(2026, 3, 10): period(date(2026, 3, 10), 2, 1, 0.5),
        date(2026, 3, 11): period(date(2026, 3, 11), 1, 0, 0.0, 1, {"usd": 5000}),
    }
    days = [date(2026, 2, 20) + timedelta(days=i) for i in range(20)]
    assert report.over_time == [expected.get(day, period(day)) for day in days]

    weekly = recovery_report(seeded, interval="week", now=NOW)
    assert weekly.interval is Interval.week
    assert weekly.over_time == [
        period(date(2026, 2, 16), 1, 1, 1.0, 1, {"eur": 2500}),
        period(date(2026, 2, 23)),
        period(date(2026, 3, 2), 4, 3, 0.75, 3, {"eur": 5500}),
        period(date(2026, 3, 9), 3, 1, 0.3333, 1, {"usd": 5000}),
    ]


def test_since_limits_the_cohort_to_journeys_that_failed_from_then_on(seeded: Store):
    # 11:00 at +01:00 is 10:00 UTC: journeys failing exactly then are in.
    report = recovery_report(seeded, since=parse_since("2026-03-02T11:00:00+01:00"), now=NOW)
    assert report.since == T0
    assert report.totals == group(
        None, 7, 1, 4, 0.5714, {"eur": cur(4, 6200, 5500, 0.8871), "jpy": JPY, "usd": USD}, 2.25, 1.5, 10, 1.25
    )
    assert report.funnel == [
        FunnelStep(step=None, reached=7, reached_rate=1.0, recovered=1, recovery_rate=0.1429),
        FunnelStep(step="notice", reached=5, reached_rate=0.7143, recovered=0, recovery_rate=0.0),
        FunnelStep(step="retry-1", reached=5, reached_rate=0.7143, recovered=0, recovery_rate=0.0),
        FunnelStep(step="retry-2", reached=4, reached_rate=0.5714, recovered=1, recovery_rate=0.25),
        FunnelStep(step="reminder-1", reached=3, reached_rate=0.4286, recovered=1, recovery_rate=0.3333),
        FunnelStep(step="final-notice", reached=1, reached_rate=0.1429, recovered=0, recovery_rate=0.0),
        FunnelStep(step="prompt", reached=1, reached_rate=0.1429, recovered=1, recovery_rate=1.0),
    ]
    assert [p.period for p in report.over_time] == [date(2026, 3, 2) + timedelta(days=i) for i in range(10)]
    later = recovery_report(seeded, since=parse_since("2026-03-02T10:00:01Z"), now=NOW)
    assert later.totals.journeys == 4  # J2, J4, J5, J8


def test_an_empty_store_reports_zeros_without_dividing_by_zero(store: Store):
    report = recovery_report(store, by="channel", now=NOW)
    assert report.totals == group(None, 0, 0, 0, None, {}, None, None, 0, None)
    assert report.groups == [] and report.over_time == []
    assert report.funnel == [FunnelStep(step=None, reached=0, reached_rate=None, recovered=0, recovery_rate=None)]


def test_open_journeys_soonest_next_action_first(seeded: Store):
    rows, total = open_journeys(seeded, limit=10)
    assert total == 1 and [r.journey_id for r in rows] == ["dunning-in_a3"]
    assert rows[0].next_action == "attempt retry-3" and rows[0].next_action_at == T0 + 7 * D
    with pytest.raises(ReportError, match="limit must be at least 1"):
        open_journeys(seeded, limit=0)


def test_report_json_is_one_plain_object(seeded: Store):
    data = recovery_report(seeded, by="step", now=NOW).model_dump(mode="json")
    assert data["by"] == "step" and data["interval"] == "day" and data["since"] is None
    assert data["totals"]["currencies"]["eur"] == {
        "journeys": 5, "amount_due": 8700, "recovered_amount": 8000, "recovery_rate_by_amount": 0.9195
    }
    assert data["over_time"][0]["period"] == "2026-02-20"


def test_bad_arguments_get_specific_errors():
    with pytest.raises(ReportError, match=r"by='stage' is not one of decline_class\|step\|channel\|segment\|variant"):
        recovery_report(Store("sqlite://"), by="stage")
    with pytest.raises(ReportError, match="interval='month' is not one of day|week"):
        recovery_report(Store("sqlite://"), interval="month")
    with pytest.raises(ReportError, match="no UTC offset"):
        parse_since("2026-03-02T10:00:00")
    with pytest.raises(ReportError, match="is not a date: use YYYY-MM-DD"):
        parse_since("last tuesday")
    assert parse_since("2026-03-02") == datetime(2026, 3, 2, tzinfo=UTC)
    assert parse_since("2026-03-02T10:00:00Z") == T0
    assert parse_since(None) is None and parse_since("") is None
