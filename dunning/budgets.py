"""Retry budgets: when may this card be charged again without breaking a network rule or a cap.

Pure: no I/O, no clock. The store supplies the ledger of attempts on the card, across every
journey, and the caller supplies `not_before` (its own "now" or its preferred slot).

Network rules (sources in the decline tables' `source` column):

* Visa (Visa Core Rules, decline categories, Apr 2021 update): at most 1 original attempt plus
  `visa_reattempts_30d` reattempts of the same transaction (card, merchant, amount) in any
  rolling 30 days. 15 by default; the 2026 rule raises it to 20.
* Mastercard (Merchant Advice Codes, excessive-retry rules): more than 10 attempts in 24 hours
  or 35 in 30 days are charged, so at most 10 in any rolling 24 h and 35 in any rolling 30 days.
  The 24 h count covers every amount on the card, which is the stricter reading; the 30-day
  count is per card and amount, like Visa's.
* A decline's own wait (Mastercard MAC 02, 24-30) runs from that decline, for every amount.
* A decline that stops the card number (Visa category 1, MAC 03/21/40/41) blocks the card for
  good, whatever the amount or payment method. Other stops (`DeclineVerdict.stop_method`) block
  only the declined payment method, until it is replaced (a new payment method id, even for the
  same card number) or it succeeded after the decline (`PaymentMethod.last_succeeded_at`, e.g. the
  customer authenticated on-session). `violations` sees only the ledger, so it cannot know the
  latter.

Rolling windows: two attempts share a window of length W when they are less than W apart, so
"at most N in any W" means any N + 1 attempts span at least W. A full window frees up at the
exact moment its oldest counted attempt turns W old.

Journey caps count retries: the journey's earliest attempt is the failure that started it.

* `max_attempts_per_payment_method`: retries of this journey on this payment method; the
  journey's initial failed charge is not a retry. 8 (Stripe's guidance) means at most 8 retries.
* `max_attempts_per_journey`: retries of this journey over all its payment methods; the initial
  failure is not a retry, so the journey makes at most `max_attempts_per_journey + 1` attempts.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter

from dunning.declines import DeclineVerdict, classify, normalize_brand, stops_card
from dunning.durations import format_duration
from dunning.journey_state import CardAttempt
from dunning.models import Decline, PaymentMethod
from dunning.rules import RetryLimits

# How far back the store reads a card's attempts: the 30-day rolling windows, one day of slack.
CARD_HISTORY_WINDOW = timedelta(days=31)
_by_time = attrgetter("at")


def card_key(method: PaymentMethod) -> str:
    """Identity used for network budgets: the card fingerprint when known, else the method's id."""
    return method.fingerprint or method.id


def journey_card_keys(methods: Sequence[PaymentMethod], initial: PaymentMethod | None) -> list[str]:
    """The cards a journey may charge, sorted: its methods' and the one whose charge failed.
    Other journeys' attempts on these are what it reads from the card ledger when it opens."""
    keys = {card_key(m) for m in methods}
    if initial is not None:
        keys.add(card_key(initial))
    return sorted(keys)


class BudgetDecision:
    """A plain class: mypyc compiles its `__init__` (a dataclass's is interpreted)."""

    def __init__(self, allowed_at: datetime | None, reasons: tuple[str, ...]) -> None:
        # Earliest time >= not_before when a new attempt respects every rule; None = never on this card.
        self.allowed_at = allowed_at
        self.reasons = reasons  # why: each rule that moved or blocked it, readable by ops

    def __repr__(self) -> str:
        return f"BudgetDecision({self.allowed_at!r}, {self.reasons!r})"


@dataclass(frozen=True)
class NetworkWindow:
    """A network's rolling limit: at most `cap` attempts on a card (of one amount and currency,
    when `per_amount`) in any `length`."""

    brand: str
    per_amount: bool
    length: timedelta
    limit: str  # the RetryLimits field that sets the cap
    originals: int  # attempts allowed on top of it (Visa limits reattempts after the original)
    label: str  # for ops, with {cap} and {reattempts}: written only when the rule moves an attempt
    name: str  # in violation reports
    source: str

    def cap(self, limits: RetryLimits) -> int:
        return self.originals + getattr(limits, self.limit)


NETWORK_WINDOWS = (
    NetworkWindow(
        "visa", True, timedelta(days=30), "visa_reattempts_30d", 1,
        "Visa: at most 1 + {reattempts} attempts per card and amount in any 30 days",
        "Visa 30-day reattempt limit", "Visa Core Rules, decline categories (Apr 2021 update)",
    ),
    NetworkWindow(
        "mastercard", False, timedelta(hours=24), "mastercard_attempts_24h", 0,
        "Mastercard: at most {cap} attempts per card in any 24 hours",
        "Mastercard 24-hour limit", "Mastercard Merchant Advice Codes, excessive-retry rules",
    ),
    NetworkWindow(
        "mastercard", True, timedelta(days=30), "mastercard_attempts_30d", 0,
        "Mastercard: at most {cap} attempts per card and amount in any 30 days",
        "Mastercard 30-day limit", "Mastercard Merchant Advice Codes, excessive-retry rules",
    ),
)
_WINDOWS_BY_BRAND: dict[str | None, tuple[NetworkWindow, ...]] = {
    brand: tuple(rule for rule in NETWORK_WINDOWS if rule.brand == brand)
    for brand in {rule.brand for rule in NETWORK_WINDOWS}
}


@dataclass(slots=True)
class _Window:
    rule: NetworkWindow
    times: list[datetime]
    cap: int


def _fits(times: Sequence[datetime], cap: int, length: timedelta, candidate: datetime) -> bool:
    """True when adding `candidate` leaves every run of cap + 1 attempts spanning >= length."""
    if len(times) < cap:  # with the candidate, still no run of cap + 1
        return True
    merged = sorted([*times, candidate])
    k = bisect_left(merged, candidate)
    for start in range(max(0, k - cap), k + 1):
        end = start + cap
        if end < len(merged) and merged[end] - merged[start] < length:
            return False
    return True


def _earliest_fit(window: _Window, t: datetime) -> datetime:
    # A feasible stretch starts at t or where some attempt turns `length` old; try those in order
    # (t nearly always fits: check it before collecting the others).
    length = window.rule.length
    if _fits(window.times, window.cap, length, t):
        return t
    candidates = sorted({x + length for x in window.times if x + length > t})
    for candidate in candidates:
        if _fits(window.times, window.cap, length, candidate):
            return candidate
    raise AssertionError("unreachable: the last attempt + length always fits")


def earliest_attempt(
    *,
    card: PaymentMethod,
    amount: int,
    currency: str,
    journey_id: str,
    history: Sequence[CardAttempt],
    not_before: datetime,
    limits: RetryLimits,
) -> BudgetDecision:
    """Earliest moment >= not_before when journey `journey_id` may charge `amount` to `card`.

    `history` is every known attempt on this card (matching `card_key(card)`) by any journey,
    including each journey's initial failed charge. Attempts on other cards may be included: they
    count only towards this journey's `max_attempts_per_journey`. Returns allowed_at=None when no
    attempt on this card may ever follow (a stop or a journey cap). See the module docstring for
    how each rule counts.
    """
    key = card_key(card)
    brand = normalize_brand(card.brand)
    currency = currency.lower()
    on_card = [a for a in history if a.card_key == key]
    on_card.sort(key=_by_time)

    blocked: list[str] = []
    longest_wait: tuple[datetime, CardAttempt, DeclineVerdict] | None = None
    mastercard_02_delay = limits.mastercard_02_delay
    for a in on_card:
        decline = a.decline
        if decline is None:
            continue
        attempt_brand = a.brand or card.brand
        verdict = classify(decline, attempt_brand, mastercard_02_delay)
        # the reasons are written only for what is reported: the longest wait and any stop
        if verdict.min_delay and (longest_wait is None or a.at + verdict.min_delay > longest_wait[0]):
            longest_wait = (a.at + verdict.min_delay, a, verdict)
        if not verdict.stop_method:
            continue
        explained = "; ".join(verdict.reasons)
        if stops_card(decline, attempt_brand):
            blocked.append(f"card stopped for good by the decline at {a.at.isoformat()}: {explained}")
        elif a.payment_method_id == card.id and not (
            card.last_succeeded_at is not None and card.last_succeeded_at > a.at
        ):
            blocked.append(
                f"payment method {card.id} stopped until updated by the decline at "
                f"{a.at.isoformat()}: {explained}"
            )

    # retries: every attempt but the journey's earliest, its initial failure
    mine = on_method = 0
    first: CardAttempt | None = None
    for a in history:
        if a.journey_id == journey_id:
            mine += 1
            on_method += a.payment_method_id == card.id
            if first is None or a.at < first.at:
                first = a
    if first is not None and first.payment_method_id == card.id:
        on_method -= 1
    if on_method >= limits.max_attempts_per_payment_method:
        blocked.append(
            f"journey {journey_id} made {on_method} retries on {card.id} "
            f"(cap {limits.max_attempts_per_payment_method})"
        )
    if mine >= limits.max_attempts_per_journey + 1:
        blocked.append(
            f"journey {journey_id} made {mine - 1} retries after its initial failure "
            f"(cap {limits.max_attempts_per_journey})"
        )
    if blocked:
        return BudgetDecision(None, tuple(blocked))

    reasons: list[str] = []
    t = not_before
    if longest_wait is not None and longest_wait[0] > t:
        t, a, verdict = longest_wait
        reasons.append(
            f"wait {format_duration(verdict.min_delay)} after the decline at {a.at.isoformat()}: "
            + "; ".join(verdict.reasons)
        )

    windows: list[_Window] = []
    for rule in _WINDOWS_BY_BRAND.get(brand, ()):
        cap = rule.cap(limits)
        # fewer attempts than the cap can never fill the window, whatever t (the common case)
        if len(on_card) < cap:
            continue
        if rule.per_amount:
            times = [a.at for a in on_card if a.amount == amount and (a.currency == currency or a.currency.lower() == currency)]
        else:
            times = [a.at for a in on_card]
        windows.append(_Window(rule, times, cap))
    # Each window only ever pushes t later; repeat until every window accepts the same t.
    moved = True
    while moved:
        moved = False
        for window in windows:
            fit = _earliest_fit(window, t)
            if fit > t:
                t, moved = fit, True
                label = window.rule.label.format(cap=window.cap, reattempts=window.cap - 1)
                reasons.append(f"{label}: full until {fit.isoformat()}")
    return BudgetDecision(t, tuple(reasons))


def violations(attempts: Sequence[CardAttempt], limits: RetryLimits) -> list[str]:
    """Every network rule and cap that an executed sequence of attempts breaks (empty = compliant).

    Checks the whole ledger at once, possibly several journeys and cards, written independently
    of `earliest_attempt` so that each checks the other. Attempts are taken in time order; the
    caps count as `earliest_attempt` documents.
    """
    ordered = sorted(attempts, key=_by_time)
    found: list[str] = []

    def label(a: CardAttempt) -> str:
        return (
            f"attempt at {a.at.isoformat()} on {a.card_key}/{a.payment_method_id} by {a.journey_id}"
        )

    # Only an earlier decline on the same card can constrain an attempt: keep each card's declines
    # so far, in order, rather than comparing every pair of attempts.
    earlier_declines: dict[str, list[tuple[CardAttempt, Decline, DeclineVerdict]]] = defaultdict(list)
    for later in ordered:
        for earlier, decline, verdict in earlier_declines[later.card_key]:
            if later.at < earlier.at + verdict.min_delay:
                found.append(
                    f"{label(later)} is within {format_duration(verdict.min_delay)} of the "
                    f"decline at {earlier.at.isoformat()}"
                )
            if not verdict.stop_method:
                continue
            if stops_card(decline, earlier.brand):
                found.append(
                    f"{label(later)} follows a card-level stop at {earlier.at.isoformat()}"
                )
            elif earlier.payment_method_id == later.payment_method_id:
                found.append(
                    f"{label(later)} follows a stop on {earlier.payment_method_id} at "
                    f"{earlier.at.isoformat()}"
                )
        if later.decline is not None:
            verdict = classify(later.decline, later.brand, limits.mastercard_02_delay)
            earlier_declines[later.card_key].append((later, later.decline, verdict))

    brands = [normalize_brand(a.brand) for a in ordered]
    for rule in NETWORK_WINDOWS:
        cap = rule.cap(limits)
        if brands.count(rule.brand) <= cap:  # too few attempts of this brand to break it anywhere
            continue
        groups: dict[object, list[datetime]] = defaultdict(list)
        for a, brand in zip(ordered, brands):
            if brand == rule.brand:
                key = (a.card_key, a.amount, a.currency.lower()) if rule.per_amount else a.card_key
                groups[key].append(a.at)
        for group, times in groups.items():
            for start in range(len(times) - cap):
                if times[start + cap] - times[start] < rule.length:
                    found.append(
                        f"{rule.name} broken for {group}: {cap + 1} attempts from "
                        f"{times[start].isoformat()} to {times[start + cap].isoformat()}"
                    )

    per_method: dict[tuple[str, str], int] = defaultdict(int)
    per_journey: dict[str, int] = defaultdict(int)
    for a in ordered:
        if per_journey[a.journey_id]:  # the journey's first attempt is its initial failure
            per_method[(a.journey_id, a.payment_method_id)] += 1
        per_journey[a.journey_id] += 1
    for (journey, method), count in per_method.items():
        if count > limits.max_attempts_per_payment_method:
            found.append(
                f"journey {journey} made {count} retries on {method} "
                f"(cap {limits.max_attempts_per_payment_method})"
            )
    for journey, count in per_journey.items():
        if count > limits.max_attempts_per_journey + 1:
            found.append(
                f"journey {journey} made {count - 1} retries "
                f"(cap {limits.max_attempts_per_journey})"
            )
    return found
