"""Plausible scenario files for demos, tests and backtests: `dunning scenarios generate`.

Deterministic for a seed. Every share and rule below is documented in docs/scenarios.md (keep
the two in step); the figures are round numbers in line with published decline breakdowns
(insufficient funds is the largest class, then do-not-honor / generic; a few percent are lost or
stolen cards) — a starting point for backtests, not a measurement of any merchant.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import PhoneNumberType

from dunning.timing import is_business_day

UTC = timezone.utc
DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)
FAILURE_SPREAD_DAYS = 30  # failures are spread over this many days from the start
HORIZON = timedelta(days=62)  # behaviour windows cover the longest journey (60 days) and a margin
FAR_FUTURE = timedelta(days=400)
SALARY_HOUR = time(5)  # salaries are credited overnight: funds are there from 05:00 local


@dataclass(frozen=True)
class Country:
    code: str
    weight: int
    currency: str
    zones: tuple[str, ...]
    locale: str
    bank_debit: str | None  # the local bank-debit payment method type, if any
    prices: tuple[int, ...]  # plan prices in the currency's minor unit (JPY has none: yen)
    paydays: tuple[tuple[str, int], ...]  # (schedule, weight)


COUNTRIES: tuple[Country, ...] = (
    Country("US", 30, "usd", ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"),
            "en", "us_bank_account", (999, 1999, 4900, 9900, 24900),
            (("biweekly_friday", 45), ("semi_monthly", 30), ("weekly_friday", 15), ("monthly_1", 10))),
    Country("GB", 10, "gbp", ("Europe/London",), "en", "bacs_debit", (799, 1499, 3900, 7900),
            (("last_business_day", 70), ("monthly_25", 15), ("weekly_friday", 15))),
    Country("DE", 8, "eur", ("Europe/Berlin",), "de", "sepa_debit", (899, 1799, 4500, 8900),
            (("last_business_day", 75), ("monthly_1", 25))),
    Country("FR", 6, "eur", ("Europe/Paris",), "fr", "sepa_debit", (899, 1799, 4500, 8900),
            (("last_business_day", 80), ("monthly_1", 20))),
    Country("NL", 4, "eur", ("Europe/Amsterdam",), "nl", "sepa_debit", (899, 1799, 4500, 8900),
            (("monthly_25", 60), ("last_business_day", 40))),
    Country("JP", 8, "jpy", ("Asia/Tokyo",), "ja", None, (980, 1980, 4980, 9800, 29800),
            (("monthly_25", 85), ("last_business_day", 15))),
    Country("RO", 4, "ron", ("Europe/Bucharest",), "ro", None, (4900, 9900, 24900),
            (("monthly_10_25", 60), ("monthly_1", 40))),
    Country("AE", 3, "aed", ("Asia/Dubai",), "ar", None, (3700, 7300, 18300),
            (("last_business_day", 60), ("monthly_25", 40))),
    Country("BR", 6, "brl", ("America/Sao_Paulo",), "pt", None, (4990, 9990, 24990),
            (("fifth_business_day_and_20", 80), ("monthly_1", 20))),
    Country("AU", 6, "aud", ("Australia/Sydney", "Australia/Perth"), "en", "au_becs_debit", (1499, 2999, 7499),
            (("biweekly_thursday", 70), ("monthly_1", 30))),
    Country("IN", 5, "inr", ("Asia/Kolkata",), "en", None, (49900, 99900, 249900),
            (("last_business_day", 60), ("monthly_1", 40))),
    Country("CA", 6, "cad", ("America/Toronto", "America/Vancouver"), "en", None, (1299, 2699, 6499),
            (("biweekly_friday", 60), ("semi_monthly", 40))),
    Country("MX", 4, "mxn", ("America/Mexico_City",), "es", None, (19900, 39900, 99900),
            (("semi_monthly", 85), ("weekly_friday", 15))),
)
PLANS = ("starter", "pro", "business", "scale", "enterprise")

# Shares (percent). Card declines: the decline a card failure starts with.
CARD_DECLINES: tuple[tuple[str, int], ...] = (
    ("insufficient_funds", 42),
    ("do_not_honor", 18),
    ("generic_decline", 8),
    ("temporary", 6),  # issuer_not_available / processing_error / try_again_later advice
    ("expired_card", 9),
    ("lost_stolen", 3),  # lost_card / stolen_card / pickup_card
    ("authentication_required", 3),
    ("mastercard_advice", 11),  # Mastercard only: MAC 02, 01, 03, 24-30 (see MAC_SPLIT)
)
MAC_SPLIT: tuple[tuple[str, int], ...] = (("02", 45), ("01", 18), ("03", 9), ("24-30", 28))
MAC_24_30_WAIT_DAYS = {"24": 1 / 24, "25": 1, "26": 2, "27": 4, "28": 6, "29": 8, "30": 10}
# The Stripe decline codes each card decline class is drawn from (uniformly) ...
CARD_DECLINE_CODES: dict[str, tuple[str, ...]] = {
    "insufficient_funds": ("insufficient_funds",),
    "do_not_honor": ("do_not_honor",),
    "generic_decline": ("generic_decline",),
    "temporary": ("issuer_not_available", "processing_error", "try_again_later"),
    "expired_card": ("expired_card",),
    "lost_stolen": ("lost_card", "stolen_card", "pickup_card"),
    "authentication_required": ("authentication_required",),
}
CARD_BEHAVIOURS = {"do_not_honor": "generic", "generic_decline": "generic"}  # else the class itself
# ... and the Visa response code a Visa card's decline carries with it.
VISA_RESPONSE_CODES = {
    "insufficient_funds": "51", "do_not_honor": "05", "generic_decline": "05", "issuer_not_available": "91",
    "expired_card": "54", "lost_card": "41", "stolen_card": "43", "pickup_card": "04",
}
BANK_DECLINES: tuple[tuple[str, int], ...] = (
    ("insufficient_funds", 70),
    ("generic_decline", 18),
    ("invalid_account", 12),
)
BANK_DEBIT_SHARE = 0.20  # of customers in countries with a local bank debit
BRANDS: tuple[tuple[str, int], ...] = (("visa", 56), ("mastercard", 33), ("amex", 8), ("discover", 3))

# How declines clear.
INSUFFICIENT_NEVER = 0.25  # never has the money within the journey
INSUFFICIENT_FUNDED_PER_PAYDAY = 0.65  # otherwise: each payday brings enough money with this chance
FUNDS_LAST_DAYS = (1.0, 7.0)  # ... for U(1, 7) days, then spent again
GENERIC_CLEARS = 0.45  # do_not_honor / generic: the issuer approves from U(0.5, 25) days on
TEMPORARY_CLEARS = 0.85  # temporary: clears after U(1, 48) hours
MAC_DELAY_CLEARS = 0.60  # MAC 02 / 24-30: clears U(0, 9) days after the advised wait

# Customers.
BACKUP_CARD = 0.15  # a second, non-default card on file; it works half of the time
SECOND_SUBSCRIPTION = 0.03  # the same customer's second subscription, same card, same billing run
HAS_PHONE = 0.55
HAS_EMAIL = 0.98
PROFILE_TIMEZONE = 0.70  # else the zone comes from the phone number or the country
OPTED_OUT_SMS = 0.06  # of customers with a phone
OPTED_OUT_EMAIL = 0.01

# Customer responses: (action, percent) for declines the customer must fix (stopped methods) and
# for declines that may clear by themselves; the rest of the customers do nothing.
RESPONSES_MUST_ACT: tuple[tuple[str, int], ...] = (
    ("update_payment_method", 50), ("pay_out_of_band", 8), ("cancel", 10), ("dispute", 1),
)
RESPONSES_AUTHENTICATION: tuple[tuple[str, int], ...] = (
    ("pay_out_of_band", 40), ("update_payment_method", 15), ("cancel", 8), ("dispute", 1),
)
RESPONSES_MAY_CLEAR: tuple[tuple[str, int], ...] = (
    ("update_payment_method", 10), ("pay_out_of_band", 5), ("cancel", 5), ("dispute", 1.5),
)
AFTER_MESSAGES: tuple[tuple[int, int], ...] = ((1, 45), (2, 30), (3, 15), (4, 10))
NEW_CARD_WORKS = 0.90

MUST_ACT = {"expired_card", "lost_stolen", "mac_01", "mac_03", "invalid_account"}


def _pick(rng: random.Random, table: tuple[tuple[Any, float], ...]) -> Any:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def _pick_or_none(rng: random.Random, table: tuple[tuple[Any, float], ...]) -> Any:
    """A value with its percent chance, None for the remaining percent."""
    roll = rng.random() * 100
    for value, percent in table:
        if roll < percent:
            return value
        roll -= percent
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _hash(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:14]


# --- paydays -------------------------------------------------------------------------------------


def _business_day_on_or_before(day: date, country: str) -> date:
    while not is_business_day(day, country):
        day -= timedelta(days=1)
    return day


def _nth_business_day(year: int, month: int, n: int, country: str) -> date:
    day = date(year, month, 1)
    count = 0
    while True:
        if is_business_day(day, country):
            count += 1
            if count == n:
                return day
        day += timedelta(days=1)


def _month_days(schedule: str, year: int, month: int, country: str) -> list[date]:
    last = date(year, month, calendar.monthrange(year, month)[1])
    fixed = {
        "monthly_1": [1], "monthly_25": [25], "monthly_10_25": [10, 25], "semi_monthly": [15, last.day],
    }
    if schedule == "last_business_day":
        return [_business_day_on_or_before(last, country)]
    if schedule == "fifth_business_day_and_20":
        return [_nth_business_day(year, month, 5, country), _business_day_on_or_before(date(year, month, 20), country)]
    # A fixed payday on a weekend or holiday is paid on the business day before it.
    return [_business_day_on_or_before(date(year, month, d), country) for d in fixed[schedule]]


def paydays(schedule: str, first: date, last: date, country: str, phase: int) -> list[date]:
    """The customer's paydays between two local dates; `phase` picks the biweekly week."""
    found: list[date] = []
    if schedule.startswith(("weekly_", "biweekly_")):
        weekday = 4 if schedule.endswith("friday") else 3
        step = 7 if schedule.startswith("weekly_") else 14
        day = first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (phase % 2 if step == 14 else 0))
        while day <= last:
            found.append(_business_day_on_or_before(day, country))
            day += timedelta(days=step)
        return found
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        found.extend(_month_days(schedule, year, month, country))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return sorted(d for d in set(found) if first <= d <= last)


# --- one scenario --------------------------------------------------------------------------------


@cache
def _example_mobile(country: str) -> phonenumbers.PhoneNumber:
    return phonenumbers.example_number_for_type(country, PhoneNumberType.MOBILE)


def _phone(rng: random.Random, country: str) -> str:
    example = _example_mobile(country)
    number = phonenumbers.PhoneNumber(country_code=example.country_code, national_number=example.national_number)
    national = str(example.national_number)
    for _ in range(5):  # vary the last digits; keep the example when a variant is not valid
        candidate = int(national[:-3] + f"{rng.randrange(1000):03d}")
        number.national_number = candidate
        if phonenumbers.is_valid_number(number):
            break
    else:
        number.national_number = example.national_number
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _decline(kind: str, brand: str | None, rng: random.Random, bank: bool) -> tuple[dict[str, str], str]:
    """(decline fields, behaviour class) for the failure that starts the journey."""
    if bank:
        return {"decline_code": kind}, kind
    codes = CARD_DECLINE_CODES[kind]
    # Draw only when there is a choice: a draw from one code still consumes the random stream.
    code = rng.choice(codes) if len(codes) > 1 else codes[0]
    behaviour = CARD_BEHAVIOURS.get(kind, kind)
    if code == "try_again_later":  # Stripe's advice on a generic decline, no network code
        return {"decline_code": "generic_decline", "advice_code": "try_again_later"}, behaviour
    fields = {"decline_code": code}
    if brand == "visa" and code in VISA_RESPONSE_CODES:
        fields["network_decline_code"] = VISA_RESPONSE_CODES[code]
    return fields, behaviour


def _mac_decline(rng: random.Random) -> tuple[dict[str, str], str, timedelta]:
    """(decline fields, behaviour class, the advised wait) for a Mastercard advice-code decline."""
    mac = _pick(rng, MAC_SPLIT)
    if mac == "24-30":
        code = rng.choice(tuple(MAC_24_30_WAIT_DAYS))
        wait = timedelta(days=MAC_24_30_WAIT_DAYS[code])
        return {"decline_code": "do_not_honor", "network_advice_code": code}, "mac_delay", wait
    if mac == "02":
        return {"decline_code": "generic_decline", "network_advice_code": "02"}, "mac_delay", timedelta(hours=72)
    return {"decline_code": "do_not_honor", "network_advice_code": mac}, f"mac_{mac}", timedelta(0)


def _local(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _windows(
    behaviour: str, failed_at: datetime, rng: random.Random, zone: ZoneInfo, country: str,
    schedule: str, phase: int, wait: timedelta,
) -> list[dict[str, Any]]:
    """The windows in which a method's decline clears (its default stays the decline)."""
    windows: list[dict[str, Any]] = []

    def forever_from(start: datetime) -> None:
        windows.append({"from": _iso(start), "until": _iso(start + FAR_FUTURE), "outcome": "succeeded"})

    if behaviour == "insufficient_funds":
        if rng.random() >= INSUFFICIENT_NEVER:
            first = failed_at.astimezone(zone).date()
            last = (failed_at + HORIZON).astimezone(zone).date()
            for payday in paydays(schedule, first, last, country, phase):
                start = _local(payday, SALARY_HOUR, zone)
                if start <= failed_at or rng.random() >= INSUFFICIENT_FUNDED_PER_PAYDAY:
                    continue
                until = start + timedelta(seconds=round(rng.uniform(*FUNDS_LAST_DAYS) * 86400))
                windows.append({"from": _iso(start), "until": _iso(until), "outcome": "succeeded"})
    elif behaviour == "generic":
        if rng.random() < GENERIC_CLEARS:
            forever_from(failed_at + timedelta(seconds=round(rng.uniform(0.5, 25) * 86400)))
    elif behaviour == "temporary":
        if rng.random() < TEMPORARY_CLEARS:
            forever_from(failed_at + timedelta(seconds=round(rng.uniform(1, 48) * 3600)))
    elif behaviour == "mac_delay":
        if rng.random() < MAC_DELAY_CLEARS:
            forever_from(failed_at + wait + timedelta(seconds=round(rng.uniform(0, 9) * 86400)))
    return windows


def _delay(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.2:
        return f"{rng.randint(2, 59)}m"
    if roll < 0.6:
        return f"{rng.randint(1, 23)}h"
    return f"{rng.randint(24, 120)}h"


def _scenario(rng: random.Random, index: int, seed: int, start: datetime) -> list[dict[str, Any]]:
    country = rng.choices(COUNTRIES, weights=[c.weight for c in COUNTRIES])[0]
    zone_name = rng.choice(country.zones)
    zone = ZoneInfo(zone_name)
    failed_at = start + timedelta(seconds=rng.randrange(FAILURE_SPREAD_DAYS * 86400))
    key = f"g{seed}_{index:06d}"
    plan_index = rng.randrange(len(country.prices))

    customer: dict[str, Any] = {"id": f"cus_{key}", "country": country.code, "locale": country.locale}
    if rng.random() < HAS_EMAIL:
        customer["email"] = f"customer.{key}@example.com"
    if rng.random() < HAS_PHONE:
        customer["phone"] = _phone(rng, country.code)
    if rng.random() < PROFILE_TIMEZONE:
        customer["timezone"] = zone_name
    opted_out = []
    if "phone" in customer and rng.random() < OPTED_OUT_SMS:
        opted_out.append("sms")
    if "email" in customer and rng.random() < OPTED_OUT_EMAIL:
        opted_out.append("email")

    schedule = _pick(rng, country.paydays)
    phase = rng.randrange(2)
    bank = country.bank_debit is not None and rng.random() < BANK_DEBIT_SHARE
    wait = timedelta(0)
    if bank:
        brand = None
        decline, behaviour = _decline(_pick(rng, BANK_DECLINES), None, rng, bank=True)
        if behaviour == "generic_decline":
            behaviour = "generic"
    else:
        kind = _pick(rng, CARD_DECLINES)
        if kind == "mastercard_advice":
            brand = "mastercard"
            decline, behaviour, wait = _mac_decline(rng)
        else:
            brand = _pick(rng, BRANDS if country.code == "US" else BRANDS[:3])
            decline, behaviour = _decline(kind, brand, rng, bank=False)

    pm_id = f"pm_{key}"
    method: dict[str, Any] = {"id": pm_id, "default": True, "country": country.code, "fingerprint": f"fp_{_hash(key, 'a')}"}
    if bank:
        method["type"] = country.bank_debit
    else:
        method |= {"brand": brand, "funding": rng.choice(("credit", "debit", "debit")), "exp_month": rng.randint(1, 12)}
        if behaviour == "expired_card":  # expired before the failure
            expired = failed_at.date().replace(day=1) - timedelta(days=rng.randint(1, 60))
            method |= {"exp_month": expired.month, "exp_year": expired.year}
        else:
            method["exp_year"] = failed_at.year + rng.randint(1, 5)
    windows = _windows(behaviour, failed_at, rng, zone, country.code, schedule, phase, wait)
    method["behavior"] = {"default": decline, "windows": windows} if windows else {"default": decline}
    methods = [method]

    if not bank and rng.random() < BACKUP_CARD:
        works = rng.random() < 0.5
        backup_brand = _pick(rng, BRANDS[:3])
        methods.append({
            "id": f"pm_{key}_b", "brand": backup_brand, "country": country.code, "funding": "credit",
            "exp_month": rng.randint(1, 12), "exp_year": failed_at.year + rng.randint(1, 4),
            "fingerprint": f"fp_{_hash(key, 'b')}",
            "behavior": {"default": "succeeded" if works else {"decline_code": "do_not_honor"}},
        })

    if behaviour == "authentication_required":
        table = RESPONSES_AUTHENTICATION
    elif behaviour in MUST_ACT:
        table = RESPONSES_MUST_ACT
    else:
        table = RESPONSES_MAY_CLEAR
    action = _pick_or_none(rng, table)
    response = None
    if action is not None:
        response = {"after_messages": _pick(rng, AFTER_MESSAGES), "delay": _delay(rng), "action": action}
        if action == "update_payment_method":
            new_brand = _pick(rng, BRANDS[:3])
            works = rng.random() < NEW_CARD_WORKS
            response["new_payment_method"] = {
                "id": f"pm_{key}_new", "brand": new_brand, "country": country.code, "funding": "debit",
                "exp_month": rng.randint(1, 12), "exp_year": failed_at.year + rng.randint(2, 5),
                "fingerprint": f"fp_{_hash(key, 'new')}",
                "behavior": {"default": "succeeded" if works else {"decline_code": "insufficient_funds"}},
            }

    scenario: dict[str, Any] = {
        "id": f"in_{key}",
        "amount": country.prices[plan_index],
        "currency": country.currency,
        "failed_at": _iso(failed_at),
        "customer": customer,
        "payment_methods": methods,
        "initial_decline": {"payment_method": pm_id, **decline},
        "plan": PLANS[plan_index],
        "subscription_id": f"sub_{key}",
    }
    if opted_out:
        scenario["opted_out"] = opted_out
    if response is not None:
        scenario["customer_response"] = response
    scenarios = [scenario]
    if rng.random() < SECOND_SUBSCRIPTION:
        # Billed in the same run on the same card: the card's network budget is shared.
        other = (plan_index + 1) % len(country.prices)
        second = {k: v for k, v in scenario.items() if k != "customer_response"}
        second |= {
            "id": f"in_{key}_2",
            "amount": country.prices[other],
            "plan": PLANS[other],
            "subscription_id": f"sub_{key}_2",
            "failed_at": _iso(failed_at + timedelta(minutes=rng.randint(1, 20))),
        }
        scenarios.append(second)
    return scenarios


def scenario_group(seed: int, index: int, start: datetime = DEFAULT_START) -> list[dict[str, Any]]:
    """The scenarios of group `index` (one, or two for a second subscription on the same card).

    Each group has its own random stream, so group i is the same whatever N is and groups can
    be made in parallel.
    """
    return _scenario(random.Random(f"dunning-scenarios:{seed}:{index}"), index, seed, start)


def generate(n: int, seed: int, start: datetime = DEFAULT_START) -> Iterator[dict[str, Any]]:
    """`n` scenarios (JSON-ready dicts, the shape `dunning.scenarios.Scenario` validates)."""
    if n < 0:
        raise ValueError("the number of scenarios cannot be negative")
    if start.tzinfo is None:
        raise ValueError("start must include a UTC offset")
    made = 0
    index = 0
    while made < n:
        for scenario in scenario_group(seed, index, start)[: n - made]:
            made += 1
            yield scenario
        index += 1


def to_line(scenario: dict[str, Any]) -> str:
    """One scenario as a JSON Lines line, newline included."""
    return json.dumps(scenario, separators=(",", ":")) + "\n"


def write(n: int, seed: int, handle: Any, start: datetime = DEFAULT_START) -> int:
    """Write `n` scenarios as JSON Lines to an open text handle; returns how many."""
    count = 0
    for scenario in generate(n, seed, start):
        handle.write(to_line(scenario))
        count += 1
    return count
