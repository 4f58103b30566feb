"""Decline classification: what one failed charge says about the next attempt.

Four tables under `dunning/data/` (each row names its source) hold the facts:

* `stripe_decline_codes.csv`     Stripe `decline_code`
* `stripe_advice_codes.csv`      Stripe `outcome.advice_code`
* `visa_decline_categories.csv`  Visa response code -> category (`network_decline_code`, Visa)
* `mastercard_advice_codes.csv`  Mastercard Merchant Advice Code (`network_advice_code`, MC)

They are parsed and validated once, at import: a bad row raises `TableError` naming file and line.
`classify` combines every signal of a decline and the strictest wins. Pure: no I/O after import,
no clock.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from types import MappingProxyType

from dunning.durations import format_duration, parse_duration
from dunning.models import Decline


class DeclineClass(StrEnum):
    insufficient_funds = "insufficient_funds"
    temporary = "temporary"
    authentication_required = "authentication_required"
    update_card = "update_card"
    do_not_retry = "do_not_retry"
    generic = "generic"


# Combining signals: the highest rank wins. Classes that stop the payment method outrank the
# retryable ones; a more specific retryable class (insufficient_funds) outranks a vaguer one.
_CLASS_RANK = {
    DeclineClass.generic: 0,
    DeclineClass.temporary: 1,
    DeclineClass.insufficient_funds: 2,
    DeclineClass.authentication_required: 3,
    DeclineClass.update_card: 4,
    DeclineClass.do_not_retry: 5,
}
STOP_CLASSES = frozenset(
    {DeclineClass.authentication_required, DeclineClass.update_card, DeclineClass.do_not_retry}
)

VISA_SOURCE = "Visa Core Rules / Visa decline categories (Apr 2021 update)"
# Category -> the `retry` word the Visa table must carry for it.
VISA_RETRY = {1: "never", 2: "later", 3: "after_update", 4: "within_limit"}
# When one code sits in several categories (14 is both 1 and 3), the strictest governs retries.
_VISA_STRICTNESS = {1: 0, 3: 1, 2: 2, 4: 3}
_VISA_EFFECT = {
    # category: (class, stop_method, customer_action)
    1: (DeclineClass.do_not_retry, True, True),
    2: (DeclineClass.temporary, False, False),
    3: (DeclineClass.update_card, True, True),
    4: (DeclineClass.generic, False, False),
}

TABLES = (
    "stripe_decline_codes",
    "stripe_advice_codes",
    "visa_decline_categories",
    "mastercard_advice_codes",
)


class TableError(ValueError):
    """A data table is malformed; the message starts with `file:line`."""


@dataclass(frozen=True)
class DeclineVerdict:
    decline_class: DeclineClass
    stop_method: bool  # no further attempts on this payment method until it is updated
    customer_action: bool  # the customer must act (send the update link)
    min_delay: (
        timedelta  # earliest next attempt on this card after this decline (timedelta(0) if none)
    )
    visa_category: int | None
    reasons: tuple[str, ...]  # human-readable explanation, each naming the table row's source
    unknown_codes: tuple[str, ...]  # e.g. ("decline_code:foo",): codes found in no table


@dataclass(frozen=True)
class _Effect:
    """What one table row means for the next attempt."""

    decline_class: DeclineClass
    stop_method: bool
    customer_action: bool
    min_delay: timedelta
    # A network rule forbids the card number itself (any payment method carrying it), not just
    # this payment method: Visa category 1 and Mastercard's do-not-retry advice codes.
    stops_card: bool
    visa_category: int | None
    reason: str


@dataclass(frozen=True)
class _Table:
    rows: tuple[Mapping[str, str], ...]
    effects: Mapping[str, tuple[_Effect, ...]]


# ---------------------------------------------------------------------------------------------
# Parsing and validation


_STRIPE_CODE = re.compile(r"^[a-z0-9_]+$")
_VISA_CODE = re.compile(r"^[0-9A-Z]{2}$")
_MAC_CODE = re.compile(r"^[0-9]{2}$")


class _RowError(ValueError):
    pass


def _bool(row: Mapping[str, str], column: str) -> bool:
    value = row[column]
    if value not in ("true", "false"):
        raise _RowError(f"{column} must be 'true' or 'false', got {value!r}")
    return value == "true"


def _class(row: Mapping[str, str]) -> DeclineClass:
    try:
        return DeclineClass(row["decline_class"])
    except ValueError:
        raise _RowError(
            f"decline_class {row['decline_class']!r} is not one of {', '.join(DeclineClass)}"
        ) from None


def _code(row: Mapping[str, str], column: str, pattern: re.Pattern[str]) -> str:
    code = row[column]
    if not pattern.match(code):
        raise _RowError(f"{column} {code!r} does not match {pattern.pattern}")
    return code


def _flags(decline_class: DeclineClass, stop: bool, customer: bool, card: bool = False) -> str:
    parts = [decline_class.value]
    if card:
        parts.append("never again on this card number")
    elif stop:
        parts.append("stop on this payment method")
    if customer:
        parts.append("customer must act")
    return ", ".join(parts)


def _stop_matches_class(decline_class: DeclineClass, stop: bool) -> None:
    # Keeps each table self-consistent: a stop class without a stop (or vice versa) is a typo.
    if stop != (decline_class in STOP_CLASSES):
        raise _RowError(
            f"stop_method={str(stop).lower()} contradicts decline_class {decline_class.value}"
        )


def _stripe_row(column: str, label: str) -> Callable[[Mapping[str, str]], tuple[str, _Effect]]:
    def parse(row: Mapping[str, str]) -> tuple[str, _Effect]:
        code = _code(row, column, _STRIPE_CODE)
        decline_class = _class(row)
        stop, customer = _bool(row, "stop_method"), _bool(row, "customer_action")
        _stop_matches_class(decline_class, stop)
        reason = (
            f"{label} {code}: {row['description']} -> {_flags(decline_class, stop, customer)}"
            f" [{row['source']}]"
        )
        return code, _Effect(decline_class, stop, customer, timedelta(0), False, None, reason)

    return parse


def _visa_effect(code: str, category: int, description: str, source: str) -> _Effect:
    decline_class, stop, customer = _VISA_EFFECT[category]
    reason = (
        f"Visa response code {code} (category {category}, retry {VISA_RETRY[category]}): "
        f"{description} -> {_flags(decline_class, stop, customer, category == 1)} [{source}]"
    )
    return _Effect(decline_class, stop, customer, timedelta(0), category == 1, category, reason)


def _visa_row(row: Mapping[str, str]) -> tuple[str, _Effect]:
    code = _code(row, "code", _VISA_CODE)
    try:
        category = int(row["category"])
    except ValueError:
        raise _RowError(f"category {row['category']!r} is not an integer") from None
    if category not in VISA_RETRY:
        raise _RowError(f"category {category} is not 1, 2, 3 or 4")
    if row["retry"] != VISA_RETRY[category]:
        raise _RowError(
            f"retry {row['retry']!r} contradicts category {category} "
            f"(expected {VISA_RETRY[category]!r})"
        )
    return code, _visa_effect(code, category, row["description"], row["source"])


def _mac_row(row: Mapping[str, str]) -> tuple[str, _Effect]:
    code = _code(row, "code", _MAC_CODE)
    action = row["action"]
    decline_class = _class(row)
    customer = _bool(row, "customer_action")
    if action not in ("stop", "delay", "none"):
        raise _RowError(f"action {action!r} is not stop, delay or none")
    if action == "delay":
        if not row["min_delay"]:
            raise _RowError("action delay needs a min_delay")
        try:
            delay = parse_duration(row["min_delay"])
        except ValueError as exc:
            raise _RowError(str(exc)) from None
        if delay <= timedelta(0):
            raise _RowError("min_delay must be positive")
    elif row["min_delay"]:
        raise _RowError(f"min_delay must be empty for action {action}")
    else:
        delay = timedelta(0)
    stop = action == "stop"
    _stop_matches_class(decline_class, stop)
    stops_card = stop and decline_class is DeclineClass.do_not_retry
    wait = f", wait {format_duration(delay)}" if delay else ""
    reason = (
        f"Mastercard advice code {code}: {row['description']} -> "
        f"{_flags(decline_class, stop, customer, stops_card)}{wait} [{row['source']}]"
    )
    return code, _Effect(decline_class, stop, customer, delay, stops_card, None, reason)


@dataclass(frozen=True)
class _Schema:
    columns: tuple[str, ...]
    parse: Callable[[Mapping[str, str]], tuple[str, _Effect]]
    # The key may repeat only with a different value in this column (Visa 14: categories 1 and 3).
    repeat_by: str | None = None


_SCHEMAS: Mapping[str, _Schema] = MappingProxyType(
    {
        "stripe_decline_codes": _Schema(
            (
                "decline_code",
                "decline_class",
                "stop_method",
                "customer_action",
                "description",
                "source",
            ),
            _stripe_row("decline_code", "decline_code"),
        ),
        "stripe_advice_codes": _Schema(
            (
                "advice_code",
                "decline_class",
                "stop_method",
                "customer_action",
                "description",
                "source",
            ),
            _stripe_row("advice_code", "advice_code"),
        ),
        "visa_decline_categories": _Schema(
            ("code", "category", "retry", "description", "source"), _visa_row, repeat_by="category"
        ),
        "mastercard_advice_codes": _Schema(
            (
                "code",
                "action",
                "min_delay",
                "decline_class",
                "customer_action",
                "description",
                "source",
            ),
            _mac_row,
        ),
    }
)


def parse_table(name: str, text: str) -> _Table:
    """Parse and validate one table's CSV; a defect raises TableError('<name>.csv:<line>: ...')."""
    schema = _SCHEMAS[name]
    filename = f"{name}.csv"
    reader = csv.DictReader(io.StringIO(text), restkey="\0extra")
    if tuple(reader.fieldnames or ()) != schema.columns:
        raise TableError(
            f"{filename}:1: header {reader.fieldnames} must be exactly {list(schema.columns)}"
        )
    rows: list[Mapping[str, str]] = []
    effects: dict[str, list[_Effect]] = {}
    seen: set[tuple[str, str]] = set()
    for row in reader:
        line = reader.line_num
        try:
            if "\0extra" in row or any(value is None for value in row.values()):
                raise _RowError(f"expected {len(schema.columns)} columns")
            clean = {key: value.strip() for key, value in row.items()}
            for column in ("description", "source"):
                if not clean[column]:
                    raise _RowError(f"{column} is empty")
            code, effect = schema.parse(clean)
            identity = (code, clean[schema.repeat_by] if schema.repeat_by else "")
            if identity in seen or (not schema.repeat_by and code in effects):
                raise _RowError(f"duplicate row for {code}")
        except _RowError as exc:
            raise TableError(f"{filename}:{line}: {exc}") from None
        seen.add(identity)
        rows.append(MappingProxyType(clean))
        effects.setdefault(code, []).append(effect)
    if not rows:
        raise TableError(f"{filename}:1: no rows")
    return _Table(
        tuple(rows), MappingProxyType({code: tuple(found) for code, found in effects.items()})
    )


def _load() -> Mapping[str, _Table]:
    package = resources.files("dunning.data")
    return MappingProxyType(
        {name: parse_table(name, (package / f"{name}.csv").read_text("utf-8")) for name in TABLES}
    )


_TABLES = _load()


def table_rows(name: str) -> list[dict[str, str]]:
    """The validated rows of one table (copies), in file order; `name` is one of TABLES."""
    return [dict(row) for row in _TABLES[name].rows]


# ---------------------------------------------------------------------------------------------
# Classification


@lru_cache(maxsize=256)  # asked for each attempt on every budget check; few spellings exist
def normalize_brand(brand: str | None) -> str | None:
    """Stripe spells brands `visa`, `mastercard`, ...; tolerate case and spacing variants."""
    if brand is None:
        return None
    return brand.strip().lower().replace(" ", "").replace("_", "") or None


def _normalize_mac(code: str) -> str:
    code = code.strip()
    return code.zfill(2) if code.isdigit() and len(code) == 1 else code


# The fields of a `Decline` that classification reads, as a small hashable cache key:
# (decline_code, advice_code, network_decline_code, network_advice_code).
_Codes = tuple[str | None, str | None, str | None, str | None]


def _codes(decline: Decline) -> _Codes:
    # From the model's dict: one attribute read rather than four, each through pydantic's
    # `__getattr__` hook (classification runs for every known decline on each budget check).
    fields = decline.__dict__
    return (
        fields["decline_code"],
        fields["advice_code"],
        fields["network_decline_code"],
        fields["network_advice_code"],
    )


def _effects(codes: _Codes, brand: str | None) -> tuple[list[_Effect], list[str], int | None]:
    found: list[_Effect] = []
    unknown: list[str] = []
    visa_category: int | None = None
    brand = normalize_brand(brand)

    def look(table: str, code: str) -> bool:
        hits = _TABLES[table].effects.get(code)
        if hits is not None:
            found.extend(hits)
        return hits is not None

    decline_code, advice_code, network_decline_code, network_advice_code = codes
    stripe_fields = (
        ("decline_code", decline_code, "stripe_decline_codes"),
        ("advice_code", advice_code, "stripe_advice_codes"),
    )
    for field, raw, table in stripe_fields:
        if raw is not None and raw.strip() and not look(table, raw.strip().lower()):
            unknown.append(f"{field}:{raw}")

    # Network codes mean something only within their own scheme; Amex/Discover have no table here.
    raw = network_decline_code
    if brand == "visa" and raw is not None and raw.strip():
        code = raw.strip().upper()
        hits = _TABLES["visa_decline_categories"].effects.get(code)
        if hits is None and _VISA_CODE.match(code):
            # Category 4 is defined as every code outside categories 1-3.
            hits = (_visa_effect(code, 4, "not listed in categories 1-3, so generic", VISA_SOURCE),)
        if hits is None:
            unknown.append(f"network_decline_code:{raw}")
        else:
            found.extend(hits)
            visa_category = min(
                (hit.visa_category for hit in hits if hit.visa_category is not None),
                key=_VISA_STRICTNESS.__getitem__,
            )
    raw = network_advice_code
    if (
        brand == "mastercard"
        and raw is not None
        and raw.strip()
        and not look("mastercard_advice_codes", _normalize_mac(raw))
    ):
        unknown.append(f"network_advice_code:{raw}")
    return found, unknown, visa_category


def classify(
    decline: Decline, brand: str | None, mastercard_02_delay: timedelta = timedelta(hours=72)
) -> DeclineVerdict:
    """Combine every signal of one decline; the strictest wins.

    `network_decline_code` is read as a Visa response code only when `brand` is visa, and
    `network_advice_code` as a Mastercard MAC only when `brand` is mastercard. Codes found in no
    table are listed in `unknown_codes` and handled as generic (retry within the budgets).
    `mastercard_02_delay` replaces the table's 72h for MAC 02 (ops may wait longer).
    """
    return _classify(_codes(decline), brand, mastercard_02_delay)


# The engine classifies every known decline on each plan and budget check; the tables are fixed
# at import, so a verdict depends only on these arguments. DeclineVerdict is frozen: safe to share.
@lru_cache(maxsize=4096)
def _classify(codes: _Codes, brand: str | None, mastercard_02_delay: timedelta) -> DeclineVerdict:
    found, unknown, visa_category = _effects(codes, brand)
    reasons = [effect.reason for effect in found]
    mac_02 = _TABLES["mastercard_advice_codes"].effects.get("02", ())
    delays = [mastercard_02_delay if effect in mac_02 else effect.min_delay for effect in found]
    if any(effect in mac_02 and effect.min_delay != mastercard_02_delay for effect in found):
        reasons.append(
            f"MAC 02 wait set to {format_duration(mastercard_02_delay)} by the ops policy"
        )
    for code in unknown:
        reasons.append(f"{code.replace(':', ' ', 1)} is in no table: generic, retry within budgets")
    if not found and not unknown:
        reasons.append("no decline codes reported: generic, retry within budgets")
    decline_class = max(
        (effect.decline_class for effect in found),
        key=_CLASS_RANK.__getitem__,
        default=DeclineClass.generic,
    )
    return DeclineVerdict(
        decline_class=decline_class,
        stop_method=any(effect.stop_method for effect in found),
        customer_action=any(effect.customer_action for effect in found),
        min_delay=max(delays, default=timedelta(0)),
        visa_category=visa_category,
        reasons=tuple(reasons),
        unknown_codes=tuple(unknown),
    )


def stops_card(decline: Decline, brand: str | None) -> bool:
    """True when a network rule forbids the card number itself, whichever payment method carries it.

    That is Visa category 1 and Mastercard's do-not-retry advice codes (03, 21, 40, 41). Other
    stops (`DeclineVerdict.stop_method`) concern one payment method and end when it is replaced.
    """
    return _stops_card(_codes(decline), brand)


@lru_cache(maxsize=4096)
def _stops_card(codes: _Codes, brand: str | None) -> bool:
    found, _, _ = _effects(codes, brand)
    return any(effect.stops_card for effect in found)
