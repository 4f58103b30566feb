"""The ops policy language: a YAML document validated by pydantic, versioned by content hash.

A policy is a ladder of steps at offsets from the failure (`at`), each with a window in which the
engine places it at a good moment. Segments pick a different ladder for some payments (first
match wins); variants split a segment's journeys for experiments.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from dunning.durations import Duration
from dunning.enums import Action, Channel
from dunning.models import FailedPayment, Frozen
from dunning.rules import RetryLimits, TimingRules


ENDING_ACTIONS = frozenset({Action.write_off, Action.hand_off})
ESCALATIONS = frozenset(Action) - {Action.retry, Action.notify}
_STEP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Step(Frozen):
    id: str = Field(description="unique slug; part of message dedupe keys, so never reuse one")
    at: Duration = Field(description="offset from the failure (or from recovery, in on_recovery)")
    action: Action
    window: Duration = Field(default=timedelta(days=1), description="placement window after `at`")
    channels: tuple[Channel, ...] = ()
    template: str | None = None
    prefer_payday: bool | None = Field(
        default=None, description="None: prefer paydays only for insufficient-funds declines"
    )
    coupon: str | None = Field(default=None, description="incentive: gateway coupon to apply")
    why: str = Field(default="", description="shown by `policy explain` and in the timeline")

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _STEP_ID.match(value):
            raise ValueError(
                f"step id {value!r} must be a lowercase slug (a-z, 0-9, '-', '_'), e.g. 'retry-1'"
            )
        return value

    @model_validator(mode="after")
    def _action_fields(self) -> Step:
        if self.action is Action.notify:
            if not self.channels:
                raise ValueError("a notify step needs `channels`, e.g. [email, sms]")
            if not self.template:
                raise ValueError("a notify step needs `template`, e.g. payment_failed")
        elif self.channels:
            raise ValueError(f"`channels` only applies to notify steps, not {self.action.value}")
        if self.action is Action.incentive and not self.coupon:
            raise ValueError("an incentive step needs `coupon` (the gateway coupon id)")
        if self.window < timedelta(0):
            raise ValueError("`window` cannot be negative")
        return self


class SegmentMatch(Frozen):
    """All given conditions must hold; lists match any of their entries."""

    amount_min: int | None = Field(default=None, ge=0)
    amount_max: int | None = Field(default=None, ge=0)
    currencies: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    plans: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def matches(self, payment: FailedPayment) -> bool:
        country = payment.customer.country
        return (
            (self.amount_min is None or payment.amount >= self.amount_min)
            and (self.amount_max is None or payment.amount <= self.amount_max)
            and (not self.currencies or payment.currency in {c.lower() for c in self.currencies})
            and (not self.countries or (country or "").upper() in {c.upper() for c in self.countries})
            and (not self.plans or payment.plan in self.plans)
            and (not self.tags or bool(set(self.tags) & set(payment.customer.tags)))
        )


class Variant(Frozen):
    name: str
    weight: int = Field(gt=0)
    steps: tuple[Step, ...]


class Segment(Frozen):
    name: str
    match: SegmentMatch = SegmentMatch()
    steps: tuple[Step, ...] | None = Field(default=None, description="None: the policy's steps")
    variants: tuple[Variant, ...] = ()


class MessagingRules(Frozen):
    max_per_24h: int = Field(default=2, ge=1)
    max_per_7d: int = Field(default=5, ge=1)
    fallback_channels: tuple[Channel, ...] = (Channel.email, Channel.sms, Channel.in_app)


class Policy(Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: str | None = Field(default=None, description="set on load: <name>@<sha256[:12]>")
    description: str = ""
    window: Duration = timedelta(days=60)
    grace_period: Duration = timedelta(days=7)
    cycle_payment_methods: bool = True
    limits: RetryLimits = RetryLimits()
    timing: TimingRules = TimingRules()
    messaging: MessagingRules = MessagingRules()
    steps: tuple[Step, ...]
    on_recovery: tuple[Step, ...] = ()
    segments: tuple[Segment, ...] = ()

    @model_validator(mode="after")
    def _ladders(self) -> Policy:
        _check_ladder("steps", self.steps, self)
        for index, segment in enumerate(self.segments):
            if segment.steps is not None:
                _check_ladder(f"segments.{index}.steps", segment.steps, self)
            for vindex, variant in enumerate(segment.variants):
                _check_ladder(f"segments.{index}.variants.{vindex}.steps", variant.steps, self)
        for step in self.on_recovery:
            if step.action not in {Action.notify, Action.reactivate}:
                raise ValueError(
                    f"on_recovery step {step.id!r}: only notify and reactivate make sense after "
                    f"recovery, not {step.action.value}"
                )
        return self

    def ladder_for(self, payment: FailedPayment) -> Ladder:
        """First matching segment wins; its variant is chosen by a stable hash of the customer id."""
        for segment in self.segments:
            if not segment.match.matches(payment):
                continue
            if segment.variants:
                variant = pick_variant(segment.variants, payment.customer.id)
                return Ladder(segment.name, variant.name, variant.steps)
            return Ladder(segment.name, None, segment.steps or self.steps)
        return Ladder("default", None, self.steps)

    def step(self, step_id: str) -> Step | None:
        for ladder in self._all_ladders():
            for step in ladder:
                if step.id == step_id:
                    return step
        return None

    def _all_ladders(self) -> list[tuple[Step, ...]]:
        ladders = [self.steps, self.on_recovery]
        for segment in self.segments:
            ladders.append(segment.steps or ())
            ladders.extend(variant.steps for variant in segment.variants)
        return ladders


@dataclass(frozen=True)
class Ladder:
    segment: str
    variant: str | None
    steps: tuple[Step, ...]


def pick_variant(variants: tuple[Variant, ...], customer_id: str) -> Variant:
    total = sum(variant.weight for variant in variants)
    point = int.from_bytes(hashlib.sha256(customer_id.encode()).digest()[:8], "big") % total
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    raise AssertionError("unreachable: weights are positive")


def _check_ladder(where: str, steps: tuple[Step, ...], policy: Policy) -> None:
    if not steps:
        raise ValueError(f"{where}: the ladder is empty; add at least a final hand_off step")
    seen: set[str] = set()
    for step in steps:
        if step.id in seen:
            raise ValueError(f"{where}: step id {step.id!r} is used twice; ids must be unique")
        seen.add(step.id)
        if step.at > policy.window:
            raise ValueError(
                f"{where}: step {step.id!r} at {step.at} is after the policy window "
                f"{policy.window}; move it earlier or lengthen `window`"
            )
        if step.action is Action.restrict_access and step.at < policy.grace_period:
            raise ValueError(
                f"{where}: step {step.id!r} restricts access at {step.at}, inside the grace "
                f"period {policy.grace_period}; move it to at least the grace period"
            )
    ordered = sorted(steps, key=lambda s: s.at)
    if [s.id for s in ordered] != [s.id for s in steps]:
        raise ValueError(f"{where}: steps must be listed in order of `at`")
    last = steps[-1]
    if last.action not in ENDING_ACTIONS:
        raise ValueError(
            f"{where}: the last step must be hand_off or write_off so every journey ends "
            f"inside its window (last is {last.id!r}: {last.action.value})"
        )
    if any(step.action in ENDING_ACTIONS for step in steps[:-1]):
        raise ValueError(f"{where}: hand_off/write_off may only be the last step")


class PolicyError(ValueError):
    """A policy file that cannot be used; `problems` name the line, field and fix."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid policy\n" + "\n".join(f"  - {p}" for p in problems))


def policy_version(name: str, text: str) -> str:
    return f"{name}@{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate a policy document; errors point at the YAML line of the offending field."""
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(source, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise PolicyError(source, ["the document must be a mapping with at least `name` and `steps`"])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(source, [_describe(error, root, data) for error in exc.errors()]) from exc
    return policy.model_copy(update={"version": policy_version(policy.name, text)})


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(path), [f"cannot read the file: {exc.strerror}"]) from exc
    return parse_policy(text, str(path))


def _describe(error: Any, root: yaml.Node | None, data: Any) -> str:
    loc = tuple(part for part in error["loc"] if not isinstance(part, str) or not part.startswith("function-"))
    node, value_path = _node_at(root, loc)
    line = f"line {node.start_mark.line + 1}" if node is not None else "top level"
    where = _readable_path(loc, data)
    message = error["msg"].removeprefix("Value error, ")
    return f"{line}: {where}: {message}" if where else f"{line}: {message}"


def _node_at(node: yaml.Node | None, loc: tuple) -> tuple[yaml.Node | None, tuple]:
    """Walk the composed YAML tree along a pydantic error location, as deep as it goes."""
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = next((v for k, v in node.value if k.value == part), None)
            if found is None:
                return node, loc
            node = found
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node, loc


def _readable_path(loc: tuple, data: Any) -> str:
    """`steps[3] (id retry-2).window` reads better than `steps.3.window`."""
    parts: list[str] = []
    current = data
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            if isinstance(current, list) and part < len(current):
                current = current[part]
                if isinstance(current, dict) and "id" in current:
                    label += f" (step {current['id']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(part))
            current = current.get(part) if isinstance(current, dict) else None
    return "".join(parts)
