"""When to act: local-time retry slots, paydays, bank business days and messaging quiet hours.

Pure and deterministic (it runs inside Temporal workflows): no clock, no randomness, no I/O
beyond the zone and holiday data the libraries ship. Every datetime going in must be
timezone-aware; every datetime coming out is UTC.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays
import phonenumbers
from phonenumbers import PhoneNumberType
from phonenumbers import timezone as phone_timezone

from dunning.models import Customer, PaymentMethod
from dunning.rules import LAST_BUSINESS_DAY, TimingRules, load_zone

UTC = timezone.utc

# libphonenumber matches a number against its region's patterns, compiling each by its text; the re
# module's own cache (512 patterns) is too small for numbers from many countries. Keep them all:
# about 1,200 for the numbers of every region, compiled once.
phonenumbers.enable_pattern_cache()

# Real UTC offsets stay within about ±15h (historic local mean times included), so this
# margin around a local wall-clock interval always contains every instant that maps into it.
_OFFSET_MARGIN = timedelta(hours=18)
# tzdata never has two transitions closer than this, so sampling at this step finds them all.
_TRANSITION_STEP = timedelta(hours=6)
_EPSILON = timedelta(microseconds=1)
_ONE_DAY = timedelta(days=1)
_ONE_SECOND = timedelta(seconds=1)
_ZERO = timedelta(0)
_PAYDAY_LOOKBACK = timedelta(days=14)
_WEEKEND = frozenset({5, 6})


# --- zones -------------------------------------------------------------------------------


def _first_zone(names: tuple[str, ...] | list[str]) -> ZoneInfo | None:
    for name in sorted(names):
        if name != phone_timezone.UNKNOWN_TIMEZONE and (zone := load_zone(name)) is not None:
            return zone
    return None


@lru_cache(maxsize=512)
def _country_zone(country: str) -> ZoneInfo | None:
    """A representative zone: the one of the country's example landline in libphonenumber.

    That is usually the capital's zone; large countries get one of their zones (e.g. RU ->
    Asia/Irkutsk, CA -> America/Halifax), so a profile timezone or phone number is better.
    """
    region = country.strip().upper()
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.FIXED_LINE)
    example = example or phonenumbers.example_number(region)
    if example is None:
        return None
    return _first_zone(phone_timezone.time_zones_for_geographical_number(example))


# Parsing is slow and a journey asks about the same number again and again (its zone when
# planning, its validity when sending): parse each once. Frozen, so sharing it is safe.
@lru_cache(maxsize=4096)
def valid_phone_number(phone: str, country: str | None) -> phonenumbers.FrozenPhoneNumber | None:
    """The number parsed in the customer's country, or None unless libphonenumber deems it valid."""
    try:
        number = phonenumbers.parse(phone, (country or "").upper() or None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.FrozenPhoneNumber(number) if phonenumbers.is_valid_number(number) else None


def _phone_zone(phone: str, country: str | None) -> ZoneInfo | None:
    number = valid_phone_number(phone, country)
    if number is None:
        return None
    names = [
        name
        for name in phone_timezone.time_zones_for_number(number)
        if name != phone_timezone.UNKNOWN_TIMEZONE
    ]
    if len(names) > 1:
        # Mobile and toll-free numbers map to every zone of the country: use its representative.
        region = phonenumbers.region_code_for_number(number)
        representative = _country_zone(region) if region else None
        if representative is not None and representative.key in names:
            return representative
    return _first_zone(names)


def customer_zone(
    customer: Customer, payment_method: PaymentMethod | None, merchant_timezone: str
) -> ZoneInfo:
    """Profile timezone > phone number > card/bank country > customer country > merchant default."""
    return _resolve_zone(
        customer.timezone,
        customer.phone,
        customer.country,
        payment_method.country if payment_method is not None else None,
        merchant_timezone,
    )


# The engine asks on every plan; the answer depends only on these strings (and the zone data
# the libraries ship).
@lru_cache(maxsize=4096)
def _resolve_zone(
    timezone_name: str | None,
    phone: str | None,
    country: str | None,
    method_country: str | None,
    merchant_timezone: str,
) -> ZoneInfo:
    zone = load_zone(timezone_name)
    if zone is None and phone:
        zone = _phone_zone(phone, country)
    if zone is None and method_country:
        zone = _country_zone(method_country)
    if zone is None and country:
        zone = _country_zone(country)
    if zone is None:
        zone = load_zone(merchant_timezone)
    if zone is None:
        raise ValueError(f"unknown merchant time zone {merchant_timezone!r}")
    return zone


# --- business days and paydays -----------------------------------------------------------


@lru_cache(maxsize=1024)
def _bank_calendar(
    country: str, year: int
) -> tuple[frozenset[date], frozenset[int], frozenset[date]]:
    """(holidays, weekend weekdays, weekend days that are working days) for one country-year."""
    try:
        supported = holidays.country_holidays(country).supported_categories
        categories = tuple(c for c in ("public", "bank") if c in supported)
        table = holidays.country_holidays(country, years=year, categories=categories, expand=False)
    except (NotImplementedError, KeyError, ValueError):
        return frozenset(), _WEEKEND, frozenset()  # no calendar for this code: weekends only
    workdays = frozenset(d for d in getattr(table, "weekend_workdays", ()) if d.year == year)
    return frozenset(table.keys()), frozenset(table.weekend), workdays


def is_business_day(day: date, country: str | None) -> bool:
    """Not a weekend and not a public or bank holiday of `country` (None/unknown: weekends only)."""
    if not country:
        return day.weekday() not in _WEEKEND
    closed, weekend, weekend_workdays = _bank_calendar(country.strip().upper(), day.year)
    if day in closed:
        return False
    return day.weekday() not in weekend or day in weekend_workdays


def _last_business_day(year: int, month: int, country: str | None) -> date:
    day = date(year, month, calendar.monthrange(year, month)[1])
    first = date(year, month, 1)
    while day > first and not is_business_day(day, country):
        day -= _ONE_DAY
    return day


# Pure in its arguments (bank calendars are fixed data); payday-preferring plans ask for the same
# few months over and over.
@lru_cache(maxsize=4096)
def _month_paydays(
    year: int, month: int, paydays: tuple[int | str, ...], country: str | None
) -> frozenset[date]:
    length = calendar.monthrange(year, month)[1]
    days: set[date] = set()
    for payday in paydays:
        if payday == LAST_BUSINESS_DAY:
            days.add(_last_business_day(year, month, country))
        else:
            days.add(date(year, month, min(int(payday), length)))
    return frozenset(days)


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is UTC:  # the common case: nothing to check or convert
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value.astimezone(UTC)


def paydays_in(
    start: datetime, end: datetime, zone: ZoneInfo, rules: TimingRules, country: str | None
) -> list[date]:
    """The paydays whose local date lies between the local dates of `start` and `end`."""
    first = _utc(start, "start").astimezone(zone).date()
    last = _utc(end, "end").astimezone(zone).date()
    return _paydays_between(first, last, rules.paydays, country)


def _paydays_between(
    first: date, last: date, paydays: tuple[int | str, ...], country: str | None
) -> list[date]:
    found: set[date] = set()
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        found |= _month_paydays(year, month, paydays, country)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return sorted(d for d in found if first <= d <= last)


def _allowed_day(day: date, bank: bool, country: str | None) -> bool:
    """Cards may be retried any day; bank debits only on the country's business days."""
    return not bank or is_business_day(day, country)


# Journeys failing around the same dates share these: cache them like the calendars they come from.
@lru_cache(maxsize=16384)
def _preferred_days(
    first: date, last: date, paydays: tuple[int | str, ...], country: str | None, bank: bool
) -> frozenset[date]:
    """Each payday with a local date in [first, last], and the first allowed day after it."""
    preferred: set[date] = set()
    for payday in _paydays_between(first, last, paydays, country):
        preferred.add(payday)
        following = payday + _ONE_DAY
        while not _allowed_day(following, bank, country):
            following += _ONE_DAY
        preferred.add(following)
    return frozenset(preferred)


# --- local wall-clock intervals ----------------------------------------------------------


def _offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def _constant_offset_pieces(
    start: datetime, end: datetime, zone: ZoneInfo
) -> Iterator[tuple[datetime, datetime, timedelta]]:
    """Split the UTC range [start, end) at the zone's transitions."""
    piece_start, piece_offset = start, _offset(start, zone)
    probe = start
    while probe < end:
        nxt = min(probe + _TRANSITION_STEP, end)
        if _offset(nxt, zone) != piece_offset:
            low, high = probe, nxt  # offset(low) == piece_offset != offset(high)
            while high - low > _EPSILON:
                mid = low + (high - low) / 2
                if _offset(mid, zone) == piece_offset:
                    low = mid
                else:
                    high = mid
            yield piece_start, high, piece_offset
            piece_start, piece_offset = high, _offset(high, zone)
        probe = nxt
    yield piece_start, end, piece_offset


# Every retry and message placement walks these day by day; a few hundred zone-days cover a run.
@lru_cache(maxsize=16384)
def _local_intervals(
    day: date, begin: time, finish: time, zone: ZoneInfo
) -> tuple[tuple[datetime, datetime], ...]:
    """Exactly the UTC instants whose local wall clock reads `day` between begin and finish.

    Built per constant-offset piece, so a wall time skipped by a DST gap starts the interval at
    the transition (moved forward) and a repeated hour is covered once per occurrence.
    """
    wall_begin = datetime.combine(day, begin)
    wall_end = datetime.combine(day, finish)
    search_start = (wall_begin - _OFFSET_MARGIN).replace(tzinfo=UTC)
    search_end = (wall_end + _OFFSET_MARGIN).replace(tzinfo=UTC)
    intervals: list[tuple[datetime, datetime]] = []
    for piece_start, piece_end, offset in _constant_offset_pieces(search_start, search_end, zone):
        lo = max(piece_start, (wall_begin - offset).replace(tzinfo=UTC))
        hi = min(piece_end, (wall_end - offset).replace(tzinfo=UTC))
        if lo >= hi:
            continue
        if intervals and intervals[-1][1] == lo:
            intervals[-1] = (intervals[-1][0], hi)
        else:
            intervals.append((lo, hi))
    return tuple(intervals)


# --- retries -----------------------------------------------------------------------------


def _jitter(key: str, limit: timedelta) -> timedelta:
    """A deterministic offset in [0, limit), whole seconds when the limit allows it."""
    seconds = limit // _ONE_SECOND
    if seconds < 1:
        return _ZERO
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return _ONE_SECOND * (digest % seconds)


def _pick(start: datetime, end: datetime, rules: TimingRules, key: str) -> datetime:
    """A moment in the half-open [start, end), spread by the key's jitter.

    A slot shorter than the jitter gets the key's offset scaled into it, not taken modulo its
    length: a start a moment later (a plan made when the workflow acted, just after the planned
    instant) then moves the pick later by at most that moment, instead of to an unrelated second.
    """
    offset, span = _jitter(key, rules.jitter), end - start
    if span >= rules.jitter:
        return start + offset
    span_us, rest_us, jitter_us = span // _EPSILON, (rules.jitter - offset) // _EPSILON, rules.jitter // _EPSILON
    # end - ceil(span * (jitter - offset) / jitter), in whole microseconds
    return end - _EPSILON * -(-span_us * rest_us // jitter_us)


def is_bank_debit(method: PaymentMethod) -> bool:
    return method.type != "card"


def place_retry(
    *,
    window_start: datetime,
    window_end: datetime,
    not_before: datetime,
    zone: ZoneInfo,
    payment_method: PaymentMethod,
    prefer_payday: bool,
    rules: TimingRules,
    jitter_key: str,
) -> datetime | None:
    """The moment to retry a charge within [max(window_start, not_before), window_end].

    Cards: inside `retry_hours` on the earliest local day possible; with `prefer_payday`, the
    first payday or day after a payday (salaries often post overnight or a day late) wins.
    Without any retry-hours moment in range, the earliest moment in range (a preference, not a
    rule). Bank debits: only `business_hours` on business days of the method's country; the
    payday preference covers the payday and the first business day after it; None without any
    such moment. Returns None for an empty range.
    """
    low = max(_utc(window_start, "window_start"), _utc(not_before, "not_before"))
    high = _utc(window_end, "window_end")
    if low > high:
        return None
    stop = high + _EPSILON  # [low, high] as a half-open interval
    bank = is_bank_debit(payment_method)
    country = payment_method.country
    begin, finish = rules.business_hours if bank else rules.retry_hours
    last_day = high.astimezone(zone).date()

    preferred: frozenset[date] = frozenset()
    if prefer_payday and rules.paydays:
        # Look back far enough that the first allowed day after a payday can land in range.
        first_day = (low - _PAYDAY_LOOKBACK).astimezone(zone).date()
        preferred = _preferred_days(first_day, last_day, rules.paydays, country, bank)

    earliest: tuple[datetime, datetime] | None = None  # the first usable interval, if no payday
    day = low.astimezone(zone).date() - _ONE_DAY  # a midnight fold can step back a day
    while day <= last_day:
        # once the fallback is known, only a preferred day can still change the answer
        if (earliest is None or day in preferred) and _allowed_day(day, bank, country):
            for start, end in _local_intervals(day, begin, finish, zone):
                usable_start, usable_end = max(start, low), min(end, stop)
                if usable_start >= usable_end:
                    continue
                if not preferred or day in preferred:
                    return _pick(usable_start, usable_end, rules, jitter_key)
                if earliest is None:
                    earliest = (usable_start, usable_end)
                break
        day += _ONE_DAY
    if earliest is not None:
        start, end = earliest
        return _pick(start, end, rules, jitter_key)
    return None if bank else _pick(low, stop, rules, jitter_key)


# --- messaging ---------------------------------------------------------------------------


def in_quiet_hours(at: datetime, zone: ZoneInfo, rules: TimingRules) -> bool:
    """True when the recipient's local clock is outside [quiet_hours_end, quiet_hours_start)."""
    wall = _utc(at, "at").astimezone(zone).time()  # naive; time comparisons ignore fold
    return not rules.quiet_hours_end <= wall < rules.quiet_hours_start


def next_message_time(at: datetime, zone: ZoneInfo, rules: TimingRules) -> datetime:
    """The earliest moment >= `at` outside the recipient's quiet hours."""
    moment = _utc(at, "at")
    if not in_quiet_hours(moment, zone, rules):
        return moment
    day = moment.astimezone(zone).date() - _ONE_DAY
    # A week covers any allowed window swallowed whole by a DST gap on some day.
    for _ in range(9):
        allowed = _local_intervals(day, rules.quiet_hours_end, rules.quiet_hours_start, zone)
        for start, end in allowed:
            if end > moment:
                return max(start, moment)
        day += _ONE_DAY
    raise ValueError(f"no allowed messaging time in {zone.key} after {moment.isoformat()}")
