"""Scenario files for the simulator and the sandbox gateway: a failed payment plus how its cards
and its customer behave over time.

One scenario per line (JSON Lines). A card's behaviour is a default outcome plus time windows
that override it, so a journey is reproducible: the outcome depends only on the attempt's time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, overload

from pydantic import ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from dunning.durations import Duration
from dunning.models import (
    ChargeOutcome,
    FailedPayment,
    Frozen,
    PaymentMethod,
)


UTC = timezone.utc
ZERO = timedelta(0)


class DeclineOutcome(Frozen):
    decline_code: str | None = None
    network_decline_code: str | None = None
    advice_code: str | None = None
    network_advice_code: str | None = None


# Charge outcomes are frozen, so charges share them: a declined one is made once per outcome and
# method, as a journey meets the same ones attempt after attempt.
SUCCEEDED = ChargeOutcome(status="succeeded")


@lru_cache(maxsize=4096)
def _declined(outcome: DeclineOutcome, payment_method_id: str) -> ChargeOutcome:
    decline = {**outcome.__dict__, "payment_method": payment_method_id}
    return ChargeOutcome.model_validate({"status": "declined", "decline": decline})  # one pass, in Rust


_OUTCOME_TAGS = ("Succeeded", "Decline")


def _outcome_kind(value: Any) -> str:
    return "Succeeded" if isinstance(value, str) else "Decline"


# Tagged so that a bad outcome reports one clear error (the tags are dropped from error paths).
Outcome = Annotated[
    Annotated[Literal["succeeded"], Tag("Succeeded")] | Annotated[DeclineOutcome, Tag("Decline")],
    Discriminator(_outcome_kind),
]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must include a UTC offset, e.g. 2026-11-01T10:00:00Z")
    return value


@overload
def _utc_as_engine(value: datetime) -> datetime: ...
@overload
def _utc_as_engine(value: None) -> None: ...
def _utc_as_engine(value: datetime | None) -> datetime | None:
    """A UTC time with the tzinfo the engine computes in (`timezone.utc`, not pydantic's own):
    datetimes with different tzinfo objects compare ten times slower. Other offsets are kept,
    as they show in outputs."""
    if value is not None and value.tzinfo is not UTC and value.utcoffset() == ZERO:
        return value.astimezone(UTC)  # the same fields; a third of the cost of replace(tzinfo=...)
    return value


class BehaviorWindow(Frozen):
    """`outcome` applies to attempts at `from` <= t < `until`."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True,
        serialize_by_alias=True,
    )

    from_: datetime = Field(alias="from")
    until: datetime
    outcome: Outcome

    @field_validator("from_", "until")
    @classmethod
    def _aware_times(cls, value: datetime) -> datetime:
        return _utc_as_engine(_aware(value))

    @model_validator(mode="after")
    def _ordered(self) -> BehaviorWindow:
        if self.until <= self.from_:
            raise ValueError("`until` must be after `from`")
        return self


class Behavior(Frozen):
    """How a payment method answers charges; the first window covering the time wins."""

    default: Outcome = DeclineOutcome(decline_code="generic_decline")
    windows: tuple[BehaviorWindow, ...] = ()

    def outcome_at(self, t: datetime, payment_method_id: str) -> ChargeOutcome:
        _aware(t)
        outcome = self.default
        for window in self.windows:
            if window.from_ <= t < window.until:
                outcome = window.outcome
                break
        if isinstance(outcome, DeclineOutcome):
            return _declined(outcome, payment_method_id)
        return SUCCEEDED


class ScenarioPaymentMethod(PaymentMethod):
    behavior: Behavior = Behavior()

    def to_payment_method(self) -> PaymentMethod:
        # From the validated values: pydantic-core takes them as they are, which beats both
        # dumping them first and `model_construct` (plain Python).
        fields = dict(self.__dict__)
        del fields["behavior"]
        fields["last_succeeded_at"] = _utc_as_engine(self.last_succeeded_at)
        return PaymentMethod.model_validate(fields)


CustomerAction = Literal["update_payment_method", "pay_out_of_band", "dispute", "cancel"]


class CustomerResponse(Frozen):
    """What the customer does once they have received `after_messages` messages, `delay` later."""

    after_messages: int = Field(ge=1)
    delay: Duration = Field(description="ISO-8601 (PT2H) or shorthand (2h) after that message")
    action: CustomerAction
    new_payment_method: ScenarioPaymentMethod | None = None

    @model_validator(mode="after")
    def _method_for_update(self) -> CustomerResponse:
        if self.action == "update_payment_method" and self.new_payment_method is None:
            raise ValueError("action update_payment_method needs `new_payment_method`")
        if self.action != "update_payment_method" and self.new_payment_method is not None:
            raise ValueError(f"`new_payment_method` only applies to update_payment_method, not {self.action}")
        if self.delay.total_seconds() < 0:
            raise ValueError("`delay` cannot be negative")
        return self


class Scenario(FailedPayment):
    """A FailedPayment whose methods carry behaviours, plus the customer's reaction (if any)."""

    payment_methods: tuple[ScenarioPaymentMethod, ...] = ()
    customer_response: CustomerResponse | None = None

    @model_validator(mode="after")
    def _unique_methods(self) -> Scenario:
        ids = [m.id for m in self.all_payment_methods()]
        if len(set(ids)) < len(ids):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"payment method ids must be unique: {', '.join(duplicates)}")
        return self

    def all_payment_methods(self) -> tuple[ScenarioPaymentMethod, ...]:
        """The methods on file plus the one the customer adds later (if any)."""
        later = self.customer_response.new_payment_method if self.customer_response else None
        return self.payment_methods + ((later,) if later is not None else ())

    def to_failed_payment(self) -> FailedPayment:
        """The journey's input: what a real processor would tell us (no behaviours, no future)."""
        fields = dict(self.__dict__)  # as in ScenarioPaymentMethod.to_payment_method
        del fields["customer_response"]
        fields["failed_at"] = _utc_as_engine(self.failed_at)
        fields["due_date"] = _utc_as_engine(self.due_date)
        fields["payment_methods"] = tuple(m.to_payment_method() for m in self.payment_methods)
        return FailedPayment.model_validate(fields)

    def behavior_for(self, pm_id: str) -> Behavior:
        """Raises KeyError for a method the scenario does not define."""
        for method in self.all_payment_methods():
            if method.id == pm_id:
                return method.behavior
        raise KeyError(f"scenario {self.id} has no payment method {pm_id!r}")


class ScenarioError(ValueError):
    """A scenario file problem, naming the line and the field."""

    def __init__(self, path: str, line: int, field: str | None, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        where = f"{path}:{line}" + (f": {field}" if field else "")
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type[ScenarioError], tuple[str, int, str | None, str]]:
        # From its parts, so that a worker process can send it back (`args` holds the text only).
        return ScenarioError, (self.path, self.line, self.field, self.message)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in _OUTCOME_TAGS]
    return ".".join(parts) or "(line)"


def load_scenarios(path: str | Path) -> Iterator[Scenario]:
    """Yield the scenarios of a JSON Lines file; blank lines are ignored, ids must be unique."""
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise ScenarioError(str(path), number, None, f"invalid JSON: {error.msg} (column {error.colno})") from None
            if not isinstance(data, dict):
                raise ScenarioError(str(path), number, None, "each line must be a JSON object")
            try:
                scenario = Scenario.model_validate(data)
            except ValidationError as error:
                first = error.errors()[0]
                extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
                raise ScenarioError(str(path), number, _field_path(first["loc"]), first["msg"] + extra) from None
            if scenario.id in seen:
                raise ScenarioError(str(path), number, "id", f"duplicate scenario id {scenario.id!r} (first on line {seen[scenario.id]})")
            seen[scenario.id] = number
            yield scenario
