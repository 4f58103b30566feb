from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dunning.models import Customer, PaymentMethod
from dunning.timing import (
    customer_zone,
    in_quiet_hours,
    is_business_day,
    next_message_time,
    paydays_in,
    place_retry,
    valid_phone_number,
)
from dunning.rules import TimingRules

UTC = timezone.utc
NEW_YORK = ZoneInfo("America/New_York")
BUCHAREST = ZoneInfo("Europe/Bucharest")
TOKYO = ZoneInfo("Asia/Tokyo")
EXACT = TimingRules(jitter="0s")  # no jitter: exact expectations
CARD_US = PaymentMethod(id="pm_card", country="US")
ACH_US = PaymentMethod(id="pm_ach", type="us_bank_account", country="US")
SEPA_RO = PaymentMethod(id="pm_sepa", type="sepa_debit", country="RO")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def retry(
    start: datetime,
    end: datetime,
    *,
    zone: ZoneInfo = NEW_YORK,
    method: PaymentMethod = CARD_US,
    not_before: datetime | None = None,
    prefer_payday: bool = False,
    rules: TimingRules = EXACT,
    key: str = "journey-1",
) -> datetime | None:
    return place_retry(
        window_start=start,
        window_end=end,
        not_before=not_before or start,
        zone=zone,
        payment_method=method,
        prefer_payday=prefer_payday,
        rules=rules,
        jitter_key=key,
    )


# --- rules -------------------------------------------------------------------------------


def test_rules_defaults() -> None:
    rules = TimingRules()
    assert rules.merchant_timezone == "UTC"
    assert rules.paydays == (1, 15, "last_business_day")
    assert rules.retry_hours == (time(9), time(12))
    assert rules.business_hours == (time(9), time(17))
    assert (rules.quiet_hours_end, rules.quiet_hours_start) == (time(8), time(21))
    assert rules.jitter == timedelta(minutes=30)


def test_rules_from_policy_yaml_values() -> None:
    rules = TimingRules.model_validate(
        {
            "merchant_timezone": "Europe/Bucharest",
            "paydays": [14, "last_business_day"],
            "retry_hours": ["00:05", "03:00"],
            "business_hours": ["08:30", "16:00"],
            "quiet_hours_end": "09:00",
            "quiet_hours_start": "20:00",
            "jitter": "15m",
        }
    )
    assert rules.paydays == (14, "last_business_day")
    assert rules.retry_hours == (time(0, 5), time(3))
    assert rules.business_hours == (time(8, 30), time(16))
    assert rules.quiet_hours_end == time(9)
    assert rules.jitter == timedelta(minutes=15)


def test_rules_survive_a_json_round_trip() -> None:
    # Rules travel inside workflow inputs as JSON.
    rules = TimingRules(retry_hours=("00:05", "03:00"), jitter="15m", paydays=(14, "last_business_day"))
    assert TimingRules.model_validate_json(rules.model_dump_json()) == rules


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("merchant_timezone", "Mars/Olympus_Mons", "IANA"),
        ("merchant_timezone", "", "IANA"),
        ("paydays", [0], "1..31"),
        ("paydays", [32], "1..31"),
        ("paydays", ["first_monday"], "last_business_day"),
        ("retry_hours", ["12:00", "09:00"], "before its end"),
        ("business_hours", ["09:00", "09:00"], "before its end"),
        ("quiet_hours_end", "22:00", "quiet_hours_end"),
        ("jitter", timedelta(minutes=-5), "negative"),
    ],
)
def test_rules_reject_invalid_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TimingRules.model_validate({field: value})


# --- zones -------------------------------------------------------------------------------


def test_profile_timezone_wins() -> None:
    customer = Customer(id="c", timezone="Europe/Bucharest", phone="+81312345678", country="US")
    assert customer_zone(customer, CARD_US, "UTC") == BUCHAREST


def test_japan_customer_by_phone() -> None:
    customer = Customer(id="c", phone="+81312345678", country="US")
    assert customer_zone(customer, CARD_US, "America/Los_Angeles") == TOKYO


def test_invalid_profile_timezone_falls_through_to_phone() -> None:
    customer = Customer(id="c", timezone="Not/AZone", phone="+81312345678")
    assert customer_zone(customer, None, "UTC") == TOKYO


def test_phone_area_code_decides_within_a_country() -> None:
    customer = Customer(id="c", phone="+14155550100")  # San Francisco
    assert customer_zone(customer, None, "UTC") == ZoneInfo("America/Los_Angeles")


def test_multi_zone_mobile_number_uses_country_representative() -> None:
    customer = Customer(id="c", phone="+447400123456")  # UK mobile: London and the islands
    assert customer_zone(customer, None, "UTC") == ZoneInfo("Europe/London")


def test_national_format_phone_uses_customer_country() -> None:
    customer = Customer(id="c", phone="03-1234-5678", country="JP")
    assert customer_zone(customer, None, "UTC") == TOKYO


def test_invalid_phone_falls_back_to_card_country() -> None:
    customer = Customer(id="c", phone="+15555550100", country="US")  # 555 is not an area code
    card = PaymentMethod(id="pm", country="RO")
    assert customer_zone(customer, card, "UTC") == BUCHAREST


def test_customer_country_when_card_country_unknown() -> None:
    customer = Customer(id="c", country="jp")
    assert customer_zone(customer, PaymentMethod(id="pm"), "UTC") == TOKYO
    assert customer_zone(Customer(id="c", country="US"), None, "UTC") == NEW_YORK


def test_a_phone_number_is_parsed_once_and_shared_frozen() -> None:
    number = valid_phone_number("03-1234-5678", "JP")
    assert number is not None and number.country_code == 81
    assert valid_phone_number("03-1234-5678", "JP") is number
    with pytest.raises(TypeError):
        number.country_code = 1  # type: ignore[misc]
    assert valid_phone_number("+15555550100", "US") is None  # parses, but 555 is not an area code
    assert valid_phone_number("not a phone", None) is None


def test_unknown_everything_uses_merchant_zone() -> None:
    customer = Customer(id="c", country="ZZ", phone="not a phone")
    unknown_card = PaymentMethod(id="pm", country="XX")
    assert customer_zone(customer, unknown_card, "Europe/Bucharest") == BUCHAREST
    with pytest.raises(ValueError, match="merchant time zone"):
        customer_zone(Customer(id="c"), None, "Nowhere/Land")


# --- business days -----------------------------------------------------------------------


def test_us_business_days_around_independence_day_2026() -> None:
    assert is_business_day(date(2026, 7, 2), "US")  # Thursday
    assert not is_business_day(date(2026, 7, 3), "US")  # Friday, observed holiday
    assert not is_business_day(date(2026, 7, 4), "US")  # Saturday
    assert is_business_day(date(2026, 7, 6), "us")
    assert is_business_day(date(2026, 7, 3), None)  # no country: weekends only
    assert is_business_day(date(2026, 7, 3), "ZZ")  # no calendar: weekends only
    assert not is_business_day(date(2026, 7, 5), None)


def test_bank_holidays_count_where_the_country_has_them() -> None:
    assert not is_business_day(date(2026, 12, 31), "JP")  # bank holiday, not a public one
    assert is_business_day(date(2026, 12, 30), "JP")
    assert not is_business_day(date(2026, 12, 1), "RO")  # National Day, a Tuesday


def test_weekends_follow_the_country() -> None:
    assert not is_business_day(date(2026, 6, 5), "IL")  # Friday
    assert is_business_day(date(2026, 6, 7), "IL")  # Sunday
    assert is_business_day(date(2026, 2, 14), "CN")  # Saturday made a working day


# --- paydays -----------------------------------------------------------------------------


def test_last_business_day_of_a_month_ending_on_sunday() -> None:
    # May 2026 ends on Sunday the 31st: the last business day is Friday the 29th.
    assert paydays_in(utc(2026, 5, 1, 12), utc(2026, 5, 31, 12), NEW_YORK, EXACT, "US") == [
        date(2026, 5, 1),
        date(2026, 5, 15),
        date(2026, 5, 29),
    ]


def test_last_business_day_skips_bank_holidays() -> None:
    rules = TimingRules(paydays=(14, "last_business_day"))
    found = paydays_in(utc(2026, 12, 1), utc(2026, 12, 31), TOKYO, rules, "JP")
    assert found == [date(2026, 12, 14), date(2026, 12, 30)]


def test_day_beyond_month_length_clamps() -> None:
    rules = TimingRules(paydays=(30, 31))
    assert paydays_in(utc(2026, 2, 1, 12), utc(2026, 3, 31, 12), NEW_YORK, rules, None) == [
        date(2026, 2, 28),
        date(2026, 3, 30),
        date(2026, 3, 31),
    ]


def test_paydays_use_local_dates() -> None:
    moment = utc(2026, 5, 14, 16)  # 01:00 on the 15th in Tokyo, noon on the 14th in New York
    assert paydays_in(moment, moment, TOKYO, EXACT, "JP") == [date(2026, 5, 15)]
    assert paydays_in(moment, moment, NEW_YORK, EXACT, "US") == []


def test_paydays_across_a_year_end() -> None:
    found = paydays_in(utc(2026, 12, 20, 12), utc(2027, 1, 20, 12), NEW_YORK, EXACT, "US")
    assert found == [date(2026, 12, 31), date(2027, 1, 1), date(2027, 1, 15)]


# --- card retries ------------------------------------------------------------------------


def test_card_retry_next_morning_local() -> None:
    # 16:00 in New York is past the 09:00-12:00 window: next day 09:00 EDT.
    assert retry(utc(2026, 3, 10, 20), utc(2026, 3, 20)) == utc(2026, 3, 11, 13)


def test_card_retry_today_when_window_still_open() -> None:
    assert retry(utc(2026, 3, 10, 14, 30), utc(2026, 3, 20)) == utc(2026, 3, 10, 14, 30)


def test_card_retry_on_new_york_spring_forward_day() -> None:
    # Saturday afternoon EST; Sunday 8 March 2026 09:00 is already EDT (13:00 UTC, not 14:00).
    assert retry(utc(2026, 3, 7, 18), utc(2026, 3, 20)) == utc(2026, 3, 8, 13)


def test_card_retry_in_a_bucharest_dst_gap_moves_forward() -> None:
    # 29 March 2026: 03:00 jumps to 04:00 in Bucharest, so a 03:00 window opens at 04:00 EEST.
    rules = TimingRules(retry_hours=("03:00", "05:00"), jitter="0s")
    moment = retry(utc(2026, 3, 28, 12), utc(2026, 3, 31), zone=BUCHAREST, rules=rules)
    assert moment == utc(2026, 3, 29, 1)


def test_card_retry_in_a_repeated_hour_covers_both_occurrences() -> None:
    # 1 November 2026: 01:00-02:00 happens twice in New York (05:00-07:00 UTC).
    rules = TimingRules(retry_hours=("01:00", "02:00"), jitter="2h")
    second_pass = utc(2026, 11, 1, 6, 30)  # 01:30 EST
    moment = retry(second_pass, utc(2026, 11, 1, 6, 59), rules=rules)
    assert moment is not None and second_pass <= moment <= utc(2026, 11, 1, 6, 59)
    assert moment.astimezone(NEW_YORK).hour == 1


def test_not_before_moves_the_start() -> None:
    moment = retry(utc(2026, 3, 10, 12), utc(2026, 3, 20), not_before=utc(2026, 3, 12, 15))
    assert moment == utc(2026, 3, 12, 15)


def test_card_ignores_bank_holidays() -> None:
    assert retry(utc(2026, 7, 2, 22), utc(2026, 7, 10)) == utc(2026, 7, 3, 13)


def test_card_fallback_when_range_misses_retry_hours() -> None:
    # 22:00-23:00 New York only: retry hours are a preference, so take the earliest moment.
    assert retry(utc(2026, 3, 11, 2), utc(2026, 3, 11, 3)) == utc(2026, 3, 11, 2)
    rules = TimingRules()
    moment = retry(utc(2026, 3, 11, 2), utc(2026, 3, 11, 2, 10), rules=rules, key="spread")
    assert moment is not None and utc(2026, 3, 11, 2) <= moment < utc(2026, 3, 11, 2, 10)


def test_empty_range_is_none() -> None:
    assert retry(utc(2026, 3, 10), utc(2026, 3, 9)) is None
    assert retry(utc(2026, 3, 10), utc(2026, 3, 12), not_before=utc(2026, 3, 13)) is None


def test_single_instant_range() -> None:
    moment = utc(2026, 3, 10, 14)
    assert retry(moment, moment, rules=TimingRules()) == moment


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        retry(datetime(2026, 3, 10), utc(2026, 3, 12))


# --- paydays in retries ------------------------------------------------------------------


def test_card_prefers_payday() -> None:
    start, end = utc(2026, 5, 11), utc(2026, 5, 25)
    assert retry(start, end) == utc(2026, 5, 11, 13)
    assert retry(start, end, prefer_payday=True) == utc(2026, 5, 15, 13)


def test_day_after_payday_counts_as_payday() -> None:
    # Saturday 16 May follows the Friday payday, so it is taken instead of waiting for the 29th.
    assert retry(utc(2026, 5, 16, 12), utc(2026, 5, 31), prefer_payday=True) == utc(2026, 5, 16, 13)
    # Once the 16th's window has passed, the next payday (last business day, the 29th) wins.
    assert retry(utc(2026, 5, 16, 17), utc(2026, 5, 31), prefer_payday=True) == utc(2026, 5, 29, 13)
    assert retry(utc(2026, 5, 16, 17), utc(2026, 5, 31)) == utc(2026, 5, 17, 13)


def test_no_payday_in_range_falls_back_to_earliest() -> None:
    assert retry(utc(2026, 5, 18), utc(2026, 5, 22), prefer_payday=True) == utc(2026, 5, 18, 13)


def test_bank_debit_payday_on_saturday_prefers_next_business_day() -> None:
    # 15 August 2026 is a Saturday: the money is there on Monday the 17th.
    start, end = utc(2026, 8, 12), utc(2026, 8, 28)
    assert retry(start, end, method=ACH_US) == utc(2026, 8, 12, 13)
    assert retry(start, end, method=ACH_US, prefer_payday=True) == utc(2026, 8, 17, 13)


# --- bank debit retries ------------------------------------------------------------------


def test_bank_debit_skips_friday_bank_holiday_and_weekend() -> None:
    # Thursday 2 July 2026 18:00 EDT is after hours; Friday the 3rd is the observed holiday.
    assert retry(utc(2026, 7, 2, 22), utc(2026, 7, 10), method=ACH_US) == utc(2026, 7, 6, 13)


def test_sepa_debit_skips_romanian_holidays() -> None:
    # Friday 27 November 2026 evening; Monday 30 Nov and Tuesday 1 Dec are public holidays.
    moment = retry(utc(2026, 11, 27, 16), utc(2026, 12, 10), zone=BUCHAREST, method=SEPA_RO)
    assert moment == utc(2026, 12, 2, 7)


def test_bank_debit_without_country_skips_weekends_only() -> None:
    method = PaymentMethod(id="pm", type="bacs_debit")
    assert retry(utc(2026, 7, 2, 22), utc(2026, 7, 10), method=method) == utc(2026, 7, 3, 13)


def test_bank_debit_without_business_moment_is_none() -> None:
    # Saturday to Sunday night in New York.
    assert retry(utc(2026, 7, 4, 13), utc(2026, 7, 6, 3), method=ACH_US) is None
    # A weekday evening only.
    assert retry(utc(2026, 7, 7, 22), utc(2026, 7, 8, 2), method=ACH_US) is None


def test_bank_debit_jitter_stays_in_the_last_minutes_of_business() -> None:
    rules = TimingRules(jitter="1h")
    start, end = utc(2026, 7, 7, 20, 50), utc(2026, 7, 8, 2)  # 16:50 EDT: ten minutes left
    for key in ("a", "b", "c", "d", "e", "f"):
        moment = retry(start, end, method=ACH_US, rules=rules, key=key)
        assert moment is not None and start <= moment < utc(2026, 7, 7, 21)


# --- jitter ------------------------------------------------------------------------------


def test_jitter_is_deterministic() -> None:
    rules = TimingRules()
    first = retry(utc(2026, 3, 10, 20), utc(2026, 3, 20), rules=rules, key="in_123")
    assert first == retry(utc(2026, 3, 10, 20), utc(2026, 3, 20), rules=rules, key="in_123")
    assert first is not None and first.tzinfo is UTC and first.microsecond == 0


def test_jitter_spreads_keys_over_the_jitter_span() -> None:
    rules = TimingRules()
    slot = utc(2026, 3, 11, 13)
    offsets = [
        retry(utc(2026, 3, 10, 20), utc(2026, 3, 20), rules=rules, key=f"in_{n}") - slot
        for n in range(600)
    ]
    assert all(timedelta(0) <= offset < timedelta(minutes=30) for offset in offsets)
    assert len(set(offsets)) > 450  # ~510 expected: 600 keys over 1800 whole seconds
    buckets = [0] * 6
    for offset in offsets:
        buckets[int(offset.total_seconds() // 300)] += 1
    assert min(buckets) > 60  # about 100 each if uniform


def test_jitter_is_capped_by_the_usable_slot() -> None:
    rules = TimingRules(jitter="2h")
    start = utc(2026, 3, 11, 15, 50)  # 11:50 EDT, ten minutes before retry hours end
    for n in range(50):
        moment = retry(start, utc(2026, 3, 20), rules=rules, key=f"k{n}")
        assert moment is not None and start <= moment < utc(2026, 3, 11, 16)


def test_a_later_start_moves_a_capped_pick_later_by_at_most_as_much() -> None:
    # The workflow plans a moment after the simulator (it acts once its timer fired or the
    # customer's update arrived): near the end of retry hours its pick must follow, not jump.
    rules = TimingRules()  # 30 min of jitter
    start = utc(2026, 3, 11, 15, 45, 0, 2000)  # 11:45 EDT: fifteen minutes of retry hours left
    for n in range(200):
        first = retry(start, utc(2026, 3, 20), rules=rules, key=f"k{n}")
        assert first is not None and start <= first < utc(2026, 3, 11, 16)
        for lag in (timedelta(seconds=1), timedelta(seconds=1.5), timedelta(seconds=4)):
            later = retry(start + lag, utc(2026, 3, 20), rules=rules, key=f"k{n}")
            assert later is not None and timedelta(0) <= later - first <= lag


# --- quiet hours -------------------------------------------------------------------------


def test_quiet_hour_boundaries() -> None:
    rules = TimingRules()
    assert in_quiet_hours(utc(2026, 6, 1, 11, 59), NEW_YORK, rules)  # 07:59
    assert not in_quiet_hours(utc(2026, 6, 1, 12), NEW_YORK, rules)  # 08:00
    assert not in_quiet_hours(utc(2026, 6, 2, 0, 59, 59), NEW_YORK, rules)  # 20:59:59
    assert in_quiet_hours(utc(2026, 6, 2, 1), NEW_YORK, rules)  # 21:00


def test_next_message_time_outside_quiet_hours_is_unchanged() -> None:
    at = utc(2026, 6, 1, 15, 12, 5)
    assert next_message_time(at, NEW_YORK, TimingRules()) == at


def test_next_message_time_waits_for_the_morning() -> None:
    # 22:00 EDT -> 08:00 EDT next day.
    assert next_message_time(utc(2026, 6, 2, 2), NEW_YORK, TimingRules()) == utc(2026, 6, 2, 12)
    # 06:00 EDT -> 08:00 EDT the same day.
    assert next_message_time(utc(2026, 6, 2, 10), NEW_YORK, TimingRules()) == utc(2026, 6, 2, 12)


def test_next_message_time_across_new_york_spring_forward() -> None:
    # 01:00 EST on 8 March 2026; 08:00 that morning is EDT.
    assert next_message_time(utc(2026, 3, 8, 6), NEW_YORK, TimingRules()) == utc(2026, 3, 8, 12)


def test_next_message_time_across_bucharest_fall_back() -> None:
    # 23:00 EEST on 24 October 2026; 08:00 on the 25th is EET (06:00 UTC).
    at = utc(2026, 10, 24, 20)
    assert next_message_time(at, BUCHAREST, TimingRules()) == utc(2026, 10, 25, 6)
    assert in_quiet_hours(utc(2026, 10, 25, 5, 30), BUCHAREST, TimingRules())


def test_custom_quiet_hours() -> None:
    rules = TimingRules(quiet_hours_end="09:30", quiet_hours_start="20:00")
    assert next_message_time(utc(2026, 6, 1, 23, 15), TOKYO, rules) == utc(2026, 6, 2, 0, 30)
    assert in_quiet_hours(utc(2026, 6, 1, 11), TOKYO, rules)  # 20:00 Tokyo


# --- properties --------------------------------------------------------------------------

ZONES = st.sampled_from(
    [
        "UTC",
        "America/New_York",
        "Europe/Bucharest",
        "Asia/Tokyo",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",  # 30-minute DST shift
        "America/Santiago",  # DST starts at midnight
        "Pacific/Chatham",
    ]
).map(ZoneInfo)
INSTANTS = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2034, 12, 31), timezones=st.just(UTC)
)
COUNTRIES = st.sampled_from(["US", "GB", "DE", "RO", "JP", "IL", "ZZ", None])


@st.composite
def windows(draw: st.DrawFn, earliest: int, latest: int) -> tuple[time, time]:
    start = draw(st.integers(min_value=earliest * 60, max_value=latest * 60 - 60))
    end = draw(st.integers(min_value=start + 60, max_value=latest * 60))
    return _clock(start), _clock(end)


def _clock(minutes: int) -> time:
    return time(23, 59, 59) if minutes == 1440 else time(minutes // 60, minutes % 60)


@st.composite
def timing_rules(draw: st.DrawFn) -> TimingRules:
    quiet_end = draw(st.integers(min_value=5 * 60, max_value=10 * 60))
    quiet_start = draw(st.integers(min_value=18 * 60, max_value=23 * 60 + 59))
    return TimingRules(
        paydays=draw(
            st.sampled_from([(1, 15, "last_business_day"), (14, "last_business_day"), (31,), ()])
        ),
        retry_hours=draw(windows(0, 24)),
        business_hours=draw(windows(7, 19)),
        quiet_hours_end=time(quiet_end // 60, quiet_end % 60),
        quiet_hours_start=time(quiet_start // 60, quiet_start % 60),
        jitter=timedelta(seconds=draw(st.integers(min_value=0, max_value=3 * 3600))),
    )


def local_wall(moment: datetime, zone: ZoneInfo) -> tuple[date, time]:
    local = moment.astimezone(zone)
    return local.date(), local.time().replace(fold=0)


@settings(max_examples=300, deadline=None)
@given(
    start=INSTANTS,
    length=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=20)),
    lag=st.timedeltas(min_value=timedelta(days=-3), max_value=timedelta(days=5)),
    zone=ZONES,
    bank=st.booleans(),
    country=COUNTRIES,
    prefer_payday=st.booleans(),
    rules=timing_rules(),
    key=st.text(max_size=20),
)
def test_place_retry_properties(
    start: datetime,
    length: timedelta,
    lag: timedelta,
    zone: ZoneInfo,
    bank: bool,
    country: str | None,
    prefer_payday: bool,
    rules: TimingRules,
    key: str,
) -> None:
    method = PaymentMethod(id="pm", type="sepa_debit" if bank else "card", country=country)
    end, not_before = start + length, start + lag
    options = dict(
        zone=zone,
        method=method,
        not_before=not_before,
        prefer_payday=prefer_payday,
        rules=rules,
        key=key,
    )
    moment = retry(start, end, **options)
    assert moment == retry(start, end, **options)
    low = max(start, not_before)
    if low > end:
        assert moment is None
        return
    if not bank:
        assert moment is not None
    if moment is None:
        return
    assert moment.tzinfo is UTC
    assert low <= moment <= end
    day, wall = local_wall(moment, zone)
    if bank:
        assert rules.business_hours[0] <= wall < rules.business_hours[1]
        assert is_business_day(day, country)
        assert day.weekday() not in ((4, 5) if country == "IL" else (5, 6))
    elif end - low >= timedelta(days=3):
        # Three days always contain a full local day, so the preference can be met.
        assert rules.retry_hours[0] <= wall < rules.retry_hours[1]


@settings(max_examples=300, deadline=None)
@given(
    start=INSTANTS,
    zone=ZONES,
    country=st.sampled_from(["US", "GB", "DE", "RO", "JP", None]),
    rules=timing_rules(),
)
def test_bank_debit_finds_a_slot_within_two_weeks(
    start: datetime, zone: ZoneInfo, country: str | None, rules: TimingRules
) -> None:
    method = PaymentMethod(id="pm", type="sepa_debit", country=country)
    end = start + timedelta(days=14)
    assert retry(start, end, zone=zone, method=method, rules=rules) is not None


@settings(max_examples=500, deadline=None)
@given(at=INSTANTS, zone=ZONES, rules=timing_rules())
def test_next_message_time_properties(at: datetime, zone: ZoneInfo, rules: TimingRules) -> None:
    moment = next_message_time(at, zone, rules)
    assert moment.tzinfo is UTC
    assert at <= moment < at + timedelta(hours=24)
    assert not in_quiet_hours(moment, zone, rules)
    _, wall = local_wall(moment, zone)
    assert rules.quiet_hours_end <= wall < rules.quiet_hours_start
    assert (moment == at) == (not in_quiet_hours(at, zone, rules))
    if moment > at:
        # Earliest: just before it, the recipient is still in quiet hours.
        assert in_quiet_hours(moment - timedelta(microseconds=1), zone, rules)
