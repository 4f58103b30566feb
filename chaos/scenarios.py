"""What the chaos run and the journey benchmark play: failed payments with known card behaviour,
the Stripe events that drive them (in order, repeated, or out of order), and the end each must reach.

Every case is registered in the sandbox gateway before its first event, so how each card answers a
charge is fixed in advance and the expected end follows from the case's kind alone:

| kind          | cards and customer                                   | events (each delivered 3×)                    | expected end |
|---------------|------------------------------------------------------|-----------------------------------------------|--------------|
| `retry-<k>`   | declines until between retry k-1 and k, then pays    | payment_failed                                | recovered by a retry on the card on file |
| `handoff`     | always declines                                      | payment_failed                                | handed_off, one placement |
| `paid`        | always declines; customer pays by bank transfer      | payment_failed, invoice.paid, a late copy of payment_failed | recovered out of band, no successful charge |
| `paid-first`  | paid before the failure event was delivered          | invoice.paid, then payment_failed             | no journey; the failure event is ignored |
| `card-update` | always declines; customer adds a working card        | payment_failed, payment_method.attached       | recovered by a retry on the new card |
| `card-first`  | the new card is attached before the failure arrives  | payment_method.attached, then payment_failed  | recovered by a retry on the new card |

Times in the cards' behaviour are absolute (the sandbox evaluates a charge at the workflow's
decision time), derived from the policy's retry offsets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from dunning.durations import parse_duration
from dunning.enums import Action
from dunning.models import journey_id_for
from dunning.policy import Policy, load_policy
from dunning.scenarios import Scenario

# Short journeys first, the longest (hand-off: charged on every retry step) last, so that charges
# keep reaching the gateway until late in a run: worker kills need charges in flight.
KINDS = ("retry-1", "paid-first", "card-first", "retry-2", "paid", "card-update", "retry-3", "handoff")
DECLINE = {"decline_code": "do_not_honor"}  # generic: retried on every ladder step
DELIVERIES_PER_EVENT = 3

Copies = Literal["together", "spaced"]


# --- the policy ------------------------------------------------------------------------------------


def scaled_policy(source: Path, target: Path, scale: float) -> Path:
    """Write `source` with every step offset (`at:`), the policy `window:` and the `grace_period:`
    multiplied by `scale`; step windows stay as they are (they absorb stalls). Returns `target`."""

    def scaled(match: re.Match[str]) -> str:
        seconds = round(parse_duration(match.group(2)).total_seconds() * scale, 3)
        return f"{match.group(1)}{seconds:g}s"

    text = source.read_text(encoding="utf-8")
    text = re.sub(r"(\bat: )(\d+(?:\.\d+)?[smhd])\b", scaled, text)
    text = re.sub(r"(?m)^((?:window|grace_period): )(\d+(?:\.\d+)?[smhd])\b", scaled, text)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# {source.name} with its offsets scaled by {scale:g} for one run\n" + text, encoding="utf-8")
    load_policy(target)  # validates
    return target


def retry_offsets(policy: Policy) -> list[float]:
    """Seconds from the failure of each retry step, in ladder order."""
    return [step.at.total_seconds() for step in policy.steps if step.action is Action.retry]


def ladder_seconds(policy: Policy) -> float:
    return max(step.at.total_seconds() for step in policy.steps)


# --- Stripe events (signed by dunning.stripe_events.signature_header) --------------------------------


def _event(event_id: str, kind: str, created: datetime, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": int(created.timestamp()),
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": obj},
    }


def _invoice(case: Case, status: str) -> dict[str, Any]:
    # No phone or country: the customer's zone comes from the policy's merchant zone (UTC).
    return {
        "id": case.invoice_id,
        "object": "invoice",
        "customer": case.customer_id,
        "customer_email": f"{case.customer_id}@example.com",
        "customer_name": f"Customer {case.index}",
        "customer_phone": None,
        "customer_address": None,
        "status": status,
        "amount_due": case.amount,
        "amount_remaining": 0 if status == "paid" else case.amount,
        "amount_paid": case.amount if status == "paid" else 0,
        "currency": case.currency,
        "attempted": True,
        "attempt_count": 1,
        "due_date": None,
        "created": int(case.failed_at.timestamp()) - 3600,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": f"sub_{case.customer_id}"}},
        "lines": {"object": "list", "data": [{"id": "il_1", "pricing": {"price_details": {"price": "price_chaos"}}}]},
    }


def _card(case: Case, pm_id: str) -> dict[str, Any]:
    return {
        "id": pm_id,
        "object": "payment_method",
        "type": "card",
        "customer": case.customer_id,
        "card": {"brand": "mastercard", "country": None, "exp_month": 12, "exp_year": 2035, "fingerprint": f"fp_{pm_id}", "funding": "credit"},
    }


# --- cases ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """At `after` seconds from the case's start: deliver `event` (`copies` times), or attach `attach`."""

    after: float
    event: dict[str, Any] | None = None
    copies: int = DELIVERIES_PER_EVENT
    how: Copies = "together"
    attach: str | None = None  # the customer adds this card (the sandbox's hosted page)


@dataclass(frozen=True)
class Expected:
    journey: bool
    stage: str | None = None
    recovered_via: str | None = None
    succeeded_charges: int = 0
    paying_method: str | None = None
    placement: bool = False
    failure_inbox_status: str = "processed"


@dataclass
class Case:
    index: int
    kind: str
    run: str
    start: datetime  # when its first event is delivered
    failed_at: datetime
    amount: int
    currency: str
    plan: list[Delivery] = field(default_factory=list)
    scenario: Scenario | None = None
    expected: Expected = Expected(journey=True)

    @property
    def invoice_id(self) -> str:
        return f"in_chaos_{self.run}_{self.index:04d}"

    @property
    def customer_id(self) -> str:
        return f"cus_chaos_{self.run}_{self.index:04d}"

    @property
    def journey_id(self) -> str:
        return journey_id_for(self.invoice_id)

    @property
    def old_card(self) -> str:
        return f"pm_chaos_{self.run}_{self.index:04d}_old"

    @property
    def new_card(self) -> str:
        return f"pm_chaos_{self.run}_{self.index:04d}_new"

    @property
    def failure_event_id(self) -> str:
        return f"evt_chaos_{self.run}_{self.index:04d}_failed"

    def events(self) -> list[dict[str, Any]]:
        return [d.event for d in self.plan if d.event is not None]


def _scenario(case: Case, old_behavior: dict[str, Any], new_card: bool) -> Scenario:
    data: dict[str, Any] = {
        "id": case.invoice_id,
        "amount": case.amount,
        "currency": case.currency,
        "failed_at": case.failed_at.isoformat(),
        "customer": {"id": case.customer_id, "email": f"{case.customer_id}@example.com"},
        "payment_methods": [
            {"id": case.old_card, "brand": "visa", "default": True, "fingerprint": f"fp_{case.old_card}", "behavior": old_behavior}
        ],
        "subscription_id": f"sub_{case.customer_id}",
    }
    if new_card:
        data["customer_response"] = {
            "after_messages": 1,
            "delay": "0s",
            "action": "update_payment_method",
            "new_payment_method": {
                "id": case.new_card, "brand": "mastercard", "fingerprint": f"fp_{case.new_card}", "behavior": {"default": "succeeded"},
            },
        }
    return Scenario.model_validate(data)


def build_case(index: int, kind: str, run: str, start: datetime, policy: Policy) -> Case:
    """One case of `kind` whose first event goes out at `start`."""
    retries = retry_offsets(policy)
    first_retry = retries[0]
    currency, amount = (("usd", 1900 + 100 * (index % 7)), ("eur", 4900 + 50 * (index % 5)))[index % 2]
    # Stripe's `created` is whole seconds, and the journey's ladder starts from it.
    failed_at = (start - timedelta(seconds=1) if kind == "paid-first" else start).replace(microsecond=0)
    case = Case(index=index, kind=kind, run=run, start=start, failed_at=failed_at, amount=amount, currency=currency)
    failed = _event(case.failure_event_id, "invoice.payment_failed", failed_at, _invoice(case, "open"))
    paid = _event(f"evt_chaos_{run}_{index:04d}_paid", "invoice.paid", start + timedelta(seconds=first_retry * 2), _invoice(case, "paid"))
    attached = _event(f"evt_chaos_{run}_{index:04d}_attached", "payment_method.attached", start, _card(case, case.new_card))
    always_declines = {"default": DECLINE}
    if kind.startswith("retry-"):
        k = int(kind.split("-", 1)[1])
        if not 1 <= k <= len(retries):
            raise ValueError(f"{kind}: the policy has {len(retries)} retries")
        # Declines until halfway between retry k-1 and retry k (the failure itself for k = 1).
        until = failed_at + timedelta(seconds=((retries[k - 2] if k > 1 else 0.0) + retries[k - 1]) / 2)
        behavior = {"default": "succeeded", "windows": [{"from": (failed_at - timedelta(hours=1)).isoformat(), "until": until.isoformat(), "outcome": DECLINE}]}
        case.scenario = _scenario(case, behavior, new_card=False)
        case.plan = [Delivery(0, failed, how="together" if index % 2 else "spaced")]
        case.expected = Expected(True, "recovered", "retry", 1, case.old_card)
    elif kind == "handoff":
        case.scenario = _scenario(case, always_declines, new_card=False)
        case.plan = [Delivery(0, failed, how="spaced")]
        case.expected = Expected(True, "handed_off", None, 0, placement=True)
    elif kind == "paid":
        # Paid by bank transfer after the first retry; the third copy of the failure arrives
        # after the payment (a late duplicate must not reopen anything).
        case.scenario = _scenario(case, always_declines, new_card=False)
        at = first_retry * 2
        case.plan = [
            Delivery(0, failed, copies=2, how="together"),
            Delivery(at, paid, how="together"),
            Delivery(at + 0.5, failed, copies=1),
        ]
        case.expected = Expected(True, "recovered", "out_of_band", 0)
    elif kind == "paid-first":
        # Paid (created after the failure), but Stripe delivers the payment first.
        case.scenario = _scenario(case, always_declines, new_card=False)
        paid = _event(paid["id"], "invoice.paid", start, _invoice(case, "paid"))
        case.plan = [Delivery(0, paid, how="spaced"), Delivery(0.5, failed, how="together")]
        case.expected = Expected(False, failure_inbox_status="ignored")
    elif kind == "card-update":
        case.scenario = _scenario(case, always_declines, new_card=True)
        at = first_retry * 1.7
        attached = _event(attached["id"], "payment_method.attached", start + timedelta(seconds=at), _card(case, case.new_card))
        case.plan = [Delivery(0, failed, how="together"), Delivery(at, attach=case.new_card), Delivery(at, attached, how="spaced")]
        case.expected = Expected(True, "recovered", "retry", 1, case.new_card)
    elif kind == "card-first":
        # The customer added a card right after the failure; its event overtakes the failure's.
        case.scenario = _scenario(case, always_declines, new_card=True)
        attached = _event(attached["id"], "payment_method.attached", start + timedelta(seconds=1), _card(case, case.new_card))
        case.plan = [Delivery(0, attach=case.new_card), Delivery(0, attached, how="together"), Delivery(0.5, failed, how="spaced")]
        case.expected = Expected(True, "recovered", "retry", 1, case.new_card)
    else:
        raise ValueError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    return case


def build_cases(n: int, policy: Policy, first_start: datetime, spread: float, run: str, kinds: tuple[str, ...] = KINDS) -> list[Case]:
    """`n` cases cycling through `kinds`, their starts spread evenly over `spread` seconds."""
    step = spread / max(n - 1, 1) if n > 1 else 0.0
    return [build_case(i, kinds[i % len(kinds)], run, first_start + timedelta(seconds=i * step), policy) for i in range(n)]


def run_tag(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%H%M%S")


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


# activities/outbox.py logs `outbox <channel>: <dedupe key> to <recipient>` once per message it is
# handed. A log record is one write, so the line stays whole even when two activity threads print
# their message blocks at the same moment (those blocks can interleave).
_OUTBOX_LOG = re.compile(r"activities\.outbox: outbox \w+: (\S+) to ")


def outbox_keys(log_text: str) -> list[str]:
    """Dedupe keys of the messages the outbox sent, one per sending, from a worker's output."""
    return [m.group(1) for line in log_text.splitlines() if (m := _OUTBOX_LOG.search(line))]
