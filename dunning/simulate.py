"""Backtest a policy on a scenario file: every journey through the pure engine, without Temporal.

The driver mirrors `DunningWorkflow` step for step (plan, wait for the decision or a customer
action, execute, apply) and stands in for what the workflow's activities would do:

* payments.charge: the store's card-ledger reservation (the same budget check, on every
  journey's attempts on that card), then the sandbox's rule: the method's behaviour at that time;
* messaging.send: the recipient check, the cross-journey frequency cap, then "sent";
* the customer's reaction: the signal or update the ops API would deliver.

Journeys that share a customer or a card (by fingerprint) form one cluster and run interleaved in
time order against a shared ledger, so cross-journey network budgets and caps play out as they
would in production. Clusters are independent, so they run in parallel processes.
"""

from __future__ import annotations

import gc
import heapq
import json
import math
import multiprocessing
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError
from pydantic_core import from_json

from dunning import engine
from dunning.budgets import CARD_HISTORY_WINDOW, card_key, earliest_attempt, journey_card_keys, violations
from dunning.engine import Decision
from dunning.enums import Channel
from dunning.journey_state import CardAttempt, JourneyState, MessageStatus
from dunning.messaging import CAP_7D, CAP_24H, CAP_EXEMPT_TEMPLATES, frequency_capped, next_allowed, recipient, unreachable
from dunning.models import ChargeOutcome
from dunning.policy import Policy, Segment
from dunning.rules import RetryLimits
from dunning.scenarios import Behavior, Scenario, ScenarioError, _field_path
from dunning.timing import customer_zone, in_quiet_hours

UTC = timezone.utc
DAY = 86400.0
# The workflow acts on a decision a moment after it is due (the timer fires, then a task runs) and
# stamps what it did with that moment, so a rule measured from it (a network wait, a frequency
# cap) ends just after the planned instant. Acting 1 ms late resolves such ties the same way.
EXECUTION_LAG = timedelta(milliseconds=1)
MAX_STEPS = 5000  # a validated policy ends long before; this only guards against engine bugs
RESULTS = ("recovered", "handed_off", "cancelled", "disputed")
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
SOURCE = "customer (simulated)"


def minor_unit_exponent(currency: str) -> int:
    currency = currency.lower()
    return 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2


def iso(moment: datetime) -> str:
    """UTC to the second (simulated times carry the 1 ms execution lag below that)."""
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- reading scenario files --------------------------------------------------------------------


class Line(NamedTuple):
    """One scenario line, parsed just enough to cluster it; validated by whoever simulates it.

    A named tuple: cheap to make, and the garbage collector stops tracking it (a file's lines
    stay alive for the whole run, in the parent and in every worker)."""

    number: int
    text: str
    keys: tuple[str, ...]  # customer and card keys: lines sharing one simulate together


def _keys(data: dict[str, Any]) -> tuple[str, ...]:
    keys: list[str] = []
    customer = data.get("customer")
    if isinstance(customer, dict) and isinstance(customer.get("id"), str):
        keys.append("customer:" + customer["id"])
    methods = data.get("payment_methods")
    methods = [m for m in methods if isinstance(m, dict)] if isinstance(methods, list) else []
    response = data.get("customer_response")
    if isinstance(response, dict) and isinstance(response.get("new_payment_method"), dict):
        methods.append(response["new_payment_method"])
    for method in methods:
        key = method.get("fingerprint") or method.get("id")
        if isinstance(key, str):
            keys.append("card:" + key)
    initial = data.get("initial_decline")
    if isinstance(initial, dict) and isinstance(initial.get("payment_method"), str):
        # a method not on file is its own card (`budgets.card_key` falls back to the id)
        wanted = initial["payment_method"]
        if wanted not in [m.get("id") for m in methods]:
            keys.append("card:" + wanted)
    return tuple(keys)


def _json_object(path: str, number: int, text: str) -> dict[str, Any]:
    try:
        # about three times as fast as json.loads; nearly every string is new, so caching them costs
        data = from_json(text, cache_strings=False)
    except ValueError:
        # json's own message (and verdict: it also takes what jiter refuses, e.g. a lone surrogate)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ScenarioError(path, number, None, f"invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(data, dict):
        raise ScenarioError(path, number, None, "each line must be a JSON object")
    return data


_Scanned = tuple[int, str | None, tuple[str, ...]]  # a line's number, scenario id (if a string), keys
SCAN_CHUNK = 5000  # lines per task when worker processes parse a file
_SCAN: dict[str, Any] = {}  # a parsing worker's file


def _scan(path: str, texts: Sequence[str], start: int) -> tuple[list[_Scanned], ScenarioError | None]:
    """The lines of the chunk at `start`, up to its first bad one, and that line's error."""
    scanned: list[_Scanned] = []
    for number in range(start + 1, min(start + SCAN_CHUNK, len(texts)) + 1):
        text = texts[number - 1]
        if not text.strip():
            continue
        try:
            data = _json_object(path, number, text)
        except ScenarioError as error:
            return scanned, error
        scenario_id = data.get("id")
        scanned.append((number, scenario_id if isinstance(scenario_id, str) else None, _keys(data)))
    return scanned, None


def _init_scan(path: str, texts: list[str]) -> None:
    _SCAN["path"], _SCAN["texts"] = path, texts


def _scan_in_worker(start: int) -> tuple[list[_Scanned], ScenarioError | None]:
    return _scan(_SCAN["path"], _SCAN["texts"], start)


def read_lines(path: str | Path, *, workers: int = 1) -> list[Line]:
    """Every scenario line with its number; JSON errors and duplicate ids name their line.

    With several `workers`, processes parse the lines (most of the cost) while this one checks
    the ids; the first bad line in the file is still the one reported.
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            texts = handle.readlines()
    except OSError as error:
        raise ScenarioError(path, 0, None, f"cannot read the file: {error.strerror}") from None
    starts = range(0, len(texts), SCAN_CHUNK)
    if workers <= 1 or len(starts) <= 1:
        return _checked_lines(path, texts, (_scan(path, texts, start) for start in starts))
    with _process_pool(workers, _init_scan, (path, texts)) as pool:
        return _checked_lines(path, texts, pool.map(_scan_in_worker, starts))


def _checked_lines(
    path: str, texts: list[str], scans: Iterable[tuple[list[_Scanned], ScenarioError | None]]
) -> list[Line]:
    """The scanned chunks' lines in file order, up to the first bad line or duplicate id."""
    lines: list[Line] = []
    seen: dict[str, int] = {}
    for scanned, error in scans:
        for number, scenario_id, keys in scanned:
            if scenario_id is not None:
                if scenario_id in seen:
                    raise ScenarioError(path, number, "id", f"duplicate scenario id {scenario_id!r} (first on line {seen[scenario_id]})")
                seen[scenario_id] = number
            lines.append(Line(number, texts[number - 1], keys))
        if error is not None:
            raise error
    return lines


def parse_line(path: str, line: Line) -> Scenario:
    try:
        return Scenario.model_validate_json(line.text)
    except ValidationError as error:
        first = error.errors()[0]
        extra = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise ScenarioError(path, line.number, _field_path(first["loc"]), first["msg"] + extra) from None


def clusters(lines: Sequence[Line]) -> list[list[Line]]:
    """Lines connected by a customer or a card, in file order, ordered by their first line."""
    parent = list(range(len(lines)))  # union-find over positions in `lines`

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = index = parent[parent[index]]  # path halving
        return index

    first_with: dict[str, int] = {}
    for index, line in enumerate(lines):
        for key in line.keys:
            first = first_with.setdefault(key, index)
            if first != index:
                a, b = root(first), root(index)
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[Line]] = {}
    for index, line in enumerate(lines):
        groups.setdefault(root(index), []).append(line)
    return list(groups.values())


# --- one journey ----------------------------------------------------------------------------------


@dataclass
class JourneyOutcome:
    """What a report needs from one journey (small: it crosses process boundaries)."""

    scenario_id: str
    currency: str
    amount: int
    segment: str
    variant: str | None
    result: str
    failed_at: datetime
    ended_at: datetime
    recovered_at: datetime | None
    attempts: int
    messages: dict[str, int]
    events: list[str] | None = None

    def __reduce__(self) -> tuple[type[JourneyOutcome], tuple[Any, ...]]:
        # The values alone: a pickle without every field's name is about half as costly to read
        return JourneyOutcome, _JOURNEY_OUTCOME_VALUES(self)


_JOURNEY_OUTCOME_VALUES = attrgetter(*(f.name for f in fields(JourneyOutcome)))


@dataclass
class Event:
    at: datetime
    kind: str
    fields: dict[str, Any]


class _Cluster:
    """The shared world of one cluster: the card ledger and each customer's messages."""

    def __init__(self, policy: Policy, scenarios: Sequence[Scenario]):
        self.policy = policy
        self.scenarios = scenarios
        # Only then can the ledger hold another journey's attempts (checking for them costs).
        self.shared = len(scenarios) > 1
        self.ledger: dict[str, list[CardAttempt]] = defaultdict(list)
        self.initial: list[CardAttempt] = []  # the failures that started the journeys
        self.customer_messages: dict[str, list[datetime]] = defaultdict(list)
        self.max_per_24h, self.max_per_7d = policy.messaging.max_per_24h, policy.messaging.max_per_7d

    def behavior(self, scenario: Scenario, pm_id: str) -> Behavior:
        """The sandbox's lookup: this payment's methods, then the customer's other payments'."""
        try:
            return scenario.behavior_for(pm_id)
        except KeyError:
            pass
        for other in self.scenarios:
            if other.customer.id == scenario.customer.id and other is not scenario:
                for method in other.all_payment_methods():
                    if method.id == pm_id:
                        return method.behavior
        return Behavior()

    def history(self, key: str, at: datetime) -> list[CardAttempt]:
        since = at - CARD_HISTORY_WINDOW
        return [a for a in self.ledger[key] if a.at >= since]

    def all_attempts(self) -> list[CardAttempt]:
        return [a for attempts in self.ledger.values() for a in attempts]


class _Journey:
    state: JourneyState  # from its first step (`_open`), when the journey reads the ledger

    def __init__(self, cluster: _Cluster, scenario: Scenario, order: int, record_events: bool):
        self.cluster = cluster
        self.policy = cluster.policy
        self.scenario = scenario
        self.order = order
        self.payment = scenario.to_failed_payment()
        self.now = self.payment.failed_at
        self.opened = False
        self.decision: Decision | None = None
        self.response = scenario.customer_response
        self.response_at: datetime | None = None
        self.delivered = 0
        self.retries = 0
        self.result: str | None = None
        self.ended_at: datetime | None = None
        self.events: list[Event] | None = [] if record_events else None
        self.behaviors: dict[str, Behavior] = {}  # by payment method id
        self.steps = 0

    # -- scheduling ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.result is not None

    def next_time(self) -> datetime:
        """When this journey acts next (it then runs `step`)."""
        if not self.opened:
            return self.payment.failed_at
        decision = self._decision()
        due = self._response_first(decision)
        if due is not None:
            return max(self.now, due)
        return max(self.now, decision.at) if decision.kind != "wait" else self.now

    def _decision(self) -> Decision:
        if self.decision is None:
            self.decision = engine.next_decision(self.policy, self.state, self.now)
        return self.decision

    def _response_first(self, decision: Decision) -> datetime | None:
        """When the customer's pending reaction is due, if it comes before `decision`."""
        if self.response_at is None or self.state.stage.terminal:
            return None
        if decision.kind == "wait" or self.response_at <= decision.at:
            return self.response_at
        return None

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise RuntimeError(f"journey {self.payment.journey_id} did not end after {MAX_STEPS} steps")
        if not self.opened:
            self._open()
            return
        decision = self._decision()
        self.decision = None
        if decision.kind == "finish":
            engine.finish_if_done(self.state, decision, self.now)
            self._end(str(self.state.stage), self.state.ended_at or self.now)
            return
        due = self._response_first(decision)
        if due is not None:
            self.now = max(self.now, due) + EXECUTION_LAG
            self._customer_acts()
            return
        if decision.kind == "wait":
            # Paused by the customer's dispute: nothing in a scenario resumes it.
            self._end("disputed", self.state.paused_since or self.now)
            return
        self.now = max(self.now, decision.at) + EXECUTION_LAG
        self._execute(decision)

    def _end(self, result: str, at: datetime) -> None:
        self.result, self.ended_at = result, at
        if self.events is not None:
            self.events.append(Event(at, "end", {"result": result}))

    # -- what the workflow does ------------------------------------------------------------------

    def _open(self) -> None:
        """journal.open_journey: record the initial failure, read the cards' ledger."""
        payment, cluster = self.payment, self.cluster
        initial = engine._initial_method(payment)
        if initial is not None:
            decline = payment.initial_decline
            if decline.payment_method != initial.id:  # the processor did not say which method
                decline = decline.model_copy(update={"payment_method": initial.id})
            initial_key = card_key(initial)
            failure = CardAttempt(
                payment.failed_at, initial_key, initial.brand, payment.amount, payment.currency,
                payment.journey_id, initial.id, decline,
            )
            cluster.ledger[initial_key].append(failure)
            cluster.initial.append(failure)
        ledger: list[CardAttempt] = []
        if cluster.shared:
            keys = journey_card_keys(payment.payment_methods, initial)
            since = payment.failed_at - CARD_HISTORY_WINDOW
            ledger = [
                a for key in keys for a in cluster.ledger.get(key, ())
                if a.journey_id != payment.journey_id and a.at >= since
            ]
        self.state = engine.start_journey(self.policy, payment, ledger=ledger)
        self.opened = True

    def _execute(self, decision: Decision) -> None:
        state, policy, now = self.state, self.policy, self.now
        match decision.kind:
            case "attempt":
                self._attempt(decision)
            case "message":
                channel = decision.channel
                assert channel is not None  # a message decision names its channel
                status, detail = self._deliver(channel, decision.template)
                engine.apply_message(policy, state, decision, status, detail, now)
                if status == "sent":
                    self.delivered += 1
                    if self.events is not None:
                        self.events.append(Event(now, "message", {"channel": str(channel)}))
                    if self.response is not None and self.delivered == self.response.after_messages:
                        self.response_at = now + self.response.delay
            case "escalation":
                engine.apply_escalation(policy, state, decision, now)
            case "skip":
                engine.apply_skip(policy, state, decision, now)
            case "reconcile":  # scenario outcomes are final: nothing is ever left processing
                raise RuntimeError(f"unexpected reconcile decision in {state.journey_id}")

    def _attempt(self, decision: Decision) -> None:
        """payments.charge: reserve within the card's budget (every journey), then charge."""
        state, policy, now, cluster = self.state, self.policy, self.now, self.cluster
        method = next(m for m in state.payment_methods if m.id == decision.payment_method_id)
        key = card_key(method)
        history = cluster.history(key, now) if cluster.shared else []
        # With no other journey on the card the store sees a subset of what the engine planned
        # with, and budgets only loosen with time: its check cannot refuse, so skip the work.
        if any(a.journey_id != state.journey_id for a in history):
            budget = earliest_attempt(
                card=method, amount=state.payment.amount, currency=state.payment.currency,
                journey_id=state.journey_id, history=history, not_before=now, limits=policy.limits,
            )
            if budget.allowed_at is None or budget.allowed_at > now:
                others = [a for a in history if a.journey_id != state.journey_id]
                engine.apply_budget_denied(policy, state, decision, others, now)
                return
        behavior = self.behaviors.get(method.id)
        if behavior is None:  # the sandbox's lookup, once per method
            behavior = self.behaviors[method.id] = cluster.behavior(self.scenario, method.id)
        outcome = behavior.outcome_at(now, method.id)
        decline = outcome.decline if outcome.status == "declined" else None
        cluster.ledger[key].append(
            CardAttempt(
                now, key, method.brand, state.payment.amount, state.payment.currency, state.journey_id,
                method.id, decline,
            )
        )
        self.retries += 1
        if self.events is not None:
            self.events.append(Event(now, "attempt", {"payment_method": method.id, "outcome": _outcome_word(outcome)}))
        engine.apply_attempt(policy, state, decision, outcome, now)

    def _deliver(self, channel: Channel, template: str | None) -> tuple[MessageStatus, str]:
        """messaging.send on the outbox: recipient, cross-journey cap, then sent."""
        customer, now = self.payment.customer, self.now
        if recipient(customer, channel) is None:
            return "undeliverable", unreachable(customer, channel)
        sent = self.cluster.customer_messages[customer.id]
        if template not in CAP_EXEMPT_TEMPLATES:
            allowed = next_allowed(sent, now, self.cluster.max_per_24h, self.cluster.max_per_7d)
            if allowed > now:
                return "skipped", frequency_capped(customer, allowed)
        sent.append(now)
        return "sent", ""

    def _customer_acts(self) -> None:
        response, state, policy, now = self.response, self.state, self.policy, self.now
        assert response is not None  # it is due only when the scenario has one
        self.response_at = None
        fields: dict[str, Any] = {"action": response.action}
        if response.action == "update_payment_method":
            assert response.new_payment_method is not None  # the scenario's validation requires it
            method = response.new_payment_method.to_payment_method().model_copy(update={"default": True})
            fields["payment_method"] = method.id
            engine.apply_payment_method_updated(policy, state, method, now, SOURCE)
        elif response.action == "pay_out_of_band":
            engine.apply_payment_succeeded(policy, state, now, SOURCE)
        elif response.action == "dispute":
            engine.apply_pause(policy, state, now, "the customer disputed the charge")
        elif response.action == "cancel":
            engine.apply_cancel(policy, state, now, "the customer cancelled")
        if self.events is not None:
            self.events.append(Event(now, "customer", fields))

    # -- results -----------------------------------------------------------------------------------

    def outcome(self) -> JourneyOutcome:
        state, result, ended_at = self.state, self.result, self.ended_at
        assert result is not None and ended_at is not None, "the journey has not ended"
        messages: dict[str, int] = {}  # sent per channel (a Counter costs more than the counting)
        for message in state.messages:
            if message.status == "sent":
                channel = str(message.channel)
                messages[channel] = messages.get(channel, 0) + 1
        return JourneyOutcome(
            scenario_id=self.scenario.id,
            currency=self.payment.currency,
            amount=self.payment.amount,
            segment=state.segment,
            variant=state.variant,
            result=result,
            failed_at=self.payment.failed_at,
            ended_at=ended_at,
            recovered_at=state.recovered_at if result == "recovered" else None,
            attempts=self.retries,
            messages=messages,
            events=[_event_line(self.scenario.id, e) for e in self.events] if self.events is not None else None,
        )


def _outcome_word(outcome: ChargeOutcome) -> str:
    if outcome.status == "succeeded":
        return "succeeded"
    return (outcome.decline.decline_code if outcome.decline else None) or outcome.status


def _event_line(scenario_id: str, event: Event) -> str:
    return json.dumps({"scenario": scenario_id, "at": iso(event.at), "type": event.kind, **event.fields}, separators=(",", ":"))


# --- clusters ----------------------------------------------------------------------------------------


@dataclass
class ClusterResult:
    journeys: list[JourneyOutcome]
    network_violations: list[str]
    messaging_violations: list[str]
    states: dict[str, JourneyState] = field(default_factory=dict)  # by scenario id, when kept

    def __reduce__(self) -> tuple[type[ClusterResult], tuple[Any, ...]]:
        return ClusterResult, _CLUSTER_RESULT_VALUES(self)  # as JourneyOutcome's


_CLUSTER_RESULT_VALUES = attrgetter(*(f.name for f in fields(ClusterResult)))


def simulate_cluster(
    policy: Policy, scenarios: Sequence[Scenario], *, record_events: bool = False, keep_states: bool = False
) -> ClusterResult:
    """Run journeys that share customers or cards, interleaved in time order."""
    cluster = _Cluster(policy, scenarios)
    journeys = [_Journey(cluster, s, i, record_events) for i, s in enumerate(scenarios)]
    if len(journeys) == 1:
        journey = journeys[0]
        while not journey.done:
            journey.step()
    else:
        queue = [(j.next_time(), j.order, j) for j in journeys]
        heapq.heapify(queue)
        while queue:
            _, _, journey = heapq.heappop(queue)
            journey.step()
            if not journey.done:
                heapq.heappush(queue, (journey.next_time(), journey.order, journey))
    return ClusterResult(
        journeys=[j.outcome() for j in journeys],
        network_violations=network_violations(cluster.all_attempts(), cluster.initial, policy.limits),
        messaging_violations=messaging_violations(policy, [(j.scenario, j.state) for j in journeys]),
        states={j.scenario.id: j.state for j in journeys} if keep_states else {},
    )


def network_violations(
    attempts: Sequence[CardAttempt], initial: Sequence[CardAttempt], limits: RetryLimits
) -> list[str]:
    """`budgets.violations` over every attempt, less what the initial failures alone break.

    The failures that started the journeys are the processor's attempts (e.g. two subscriptions
    billed on one card minutes apart), not the policy's: a rule they break among themselves is
    not held against it. Every violation involving a simulated retry is kept.
    """
    found = violations(attempts, limits)
    if not found:
        return found
    theirs = Counter(violations(initial, limits))
    kept: list[str] = []
    for item in found:
        if theirs[item] > 0:
            theirs[item] -= 1
        else:
            kept.append(item)
    return kept


def _exempt_steps(policy: Policy) -> frozenset[str]:
    """Ids of the policy's steps whose template is exempt from the frequency caps."""
    steps = [*policy.steps, *policy.on_recovery]
    for segment in policy.segments:
        steps += [*(segment.steps or ()), *(s for v in segment.variants for s in v.steps)]
    return frozenset(s.id for s in steps if s.template in CAP_EXEMPT_TEMPLATES)


def messaging_violations(policy: Policy, journeys: Sequence[tuple[Scenario, JourneyState]]) -> list[str]:
    """Delivered messages that break a messaging rule; checked on the results, not the plan.

    Quiet hours (the customer's zone, as the engine resolves it), opted-out channels, channels
    the customer has no address for, and the frequency caps per customer across journeys (the
    payment receipt is exempt, as in the messaging activity).
    """
    found: list[str] = []
    per_customer: dict[str, list[datetime]] = defaultdict(list)
    exempt = _exempt_steps(policy)
    for scenario, state in journeys:
        customer = scenario.customer
        zone = customer_zone(customer, None, policy.timing.merchant_timezone)
        for message in state.messages:
            if message.status != "sent":
                continue
            broken = []
            if in_quiet_hours(message.at, zone, policy.timing):
                broken.append(f"is in quiet hours ({zone.key})")
            if message.channel in scenario.opted_out:
                broken.append("went to a channel the customer opted out of")
            if (message.channel is Channel.email and not customer.email) or (
                message.channel is Channel.sms and not customer.phone
            ):
                broken.append("went to a channel the customer has no address for")
            if broken:  # the label costs more than the checks: only for a violation
                label = f"{scenario.id}: {message.channel.value} {message.step_id} at {iso(message.at)}"
                found.extend(f"{label} {rule}" for rule in broken)
            if message.step_id not in exempt:
                per_customer[customer.id].append(message.at)
    caps = (("24 hours", CAP_24H, policy.messaging.max_per_24h), ("7 days", CAP_7D, policy.messaging.max_per_7d))
    for customer_id, times in per_customer.items():
        times.sort()
        for name, span, cap in caps:
            for start in range(len(times) - cap):
                if times[start + cap] - times[start] < span:
                    found.append(
                        f"customer {customer_id}: {cap + 1} messages within {name} "
                        f"({iso(times[start])} to {iso(times[start + cap])}; cap {cap})"
                    )
    return found


# --- running a file -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One policy to run over some clusters; `segment` limits the report to that segment."""

    name: str
    policy: Policy
    segment: str | None = None
    record_events: bool = False


_WORKER: dict[str, Any] = {}


def _init_worker(runs: dict[str, Run], path: str, groups: list[list[Line]]) -> None:
    _WORKER["runs"], _WORKER["path"], _WORKER["groups"] = runs, path, groups
    if multiprocessing.parent_process() is not None:
        gc.disable()  # as in `run_file`; a forked worker inherits it, a spawned one does not


def _task(args: tuple[str, list[int]]) -> tuple[str, list[ClusterResult]]:
    """Simulate the clusters at these indices under one run (a task names them, so the lines
    reach each worker once, at its start, rather than with every task)."""
    name, batch = args
    run: Run = _WORKER["runs"][name]
    path: str = _WORKER["path"]
    groups: list[list[Line]] = _WORKER["groups"]
    results = []
    for index in batch:
        scenarios = [parse_line(path, line) for line in groups[index]]
        results.append(simulate_cluster(run.policy, scenarios, record_events=run.record_events))
    return name, results


def _batches(groups: list[list[Line]], indices: Iterable[int], size: int) -> Iterator[list[int]]:
    """The indices in batches of about `size` journeys."""
    batch: list[int] = []
    count = 0
    for index in indices:
        batch.append(index)
        count += len(groups[index])
        if count >= size:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def segment_of(policy: Policy, scenario: Scenario) -> Segment | None:
    return next((s for s in policy.segments if s.match.matches(scenario)), None)


def forced_variant(policy: Policy, segment_index: int, variant_index: int) -> Policy:
    """The policy with one segment's experiment decided: every journey there gets this variant."""
    segments = list(policy.segments)
    segment = segments[segment_index]
    segments[segment_index] = segment.model_copy(update={"variants": (segment.variants[variant_index],)})
    return policy.model_copy(update={"segments": tuple(segments)})


def run_file(
    path: str | Path,
    runs: Sequence[Run],
    *,
    workers: int | None = None,
    batch_size: int = 256,  # journeys per task: each costs the parent a future and a pickle
    progress: Callable[[int], None] | None = None,
    on_cluster: Callable[[str, ClusterResult], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> dict[str, list[ClusterResult]]:
    """Simulate every cluster of the file under each run; results per run, in cluster order.

    `workers` processes (default: every core; 1 runs in this process). A run with a segment
    simulates only the clusters holding a scenario that its policy puts in that segment (the
    report then keeps only those journeys). The process's cyclic garbage collector is off until
    it returns.
    """
    path = str(path)
    workers = workers or os.cpu_count() or 1
    with _collector_paused():
        groups = clusters(read_lines(path, workers=workers))
        tasks: list[tuple[str, list[int]]] = []
        planned = 0
        for run in runs:
            wanted = [i for i, g in enumerate(groups) if run.segment is None or _touches_segment(path, run, g)]
            planned += sum(len(groups[i]) for i in wanted)
            tasks.extend((run.name, batch) for batch in _batches(groups, wanted, batch_size))
        if on_plan is not None:
            on_plan(planned)
        results: dict[str, list[ClusterResult]] = {run.name: [] for run in runs}
        by_name = {run.name: run for run in runs}

        def take(name: str, found: list[ClusterResult]) -> None:
            for result in found:
                results[name].append(result)
                if on_cluster is not None:
                    on_cluster(name, result)
                if progress is not None:
                    progress(len(result.journeys))

        if workers <= 1 or len(tasks) <= 1:
            _init_worker(by_name, path, groups)
            for task in tasks:
                take(*_task(task))
            return results
        with _process_pool(workers, _init_worker, (by_name, path, groups)) as pool:
            for name, found in pool.map(_task, tasks):
                take(name, found)
        return results


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a run. Simulating makes no reference cycles (a test
    checks), so its passes only walk live objects: the file's lines, the results, the caches. They
    took about 4% of the processors' time in a 100,000-journey run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def _process_pool(workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> Iterator[ProcessPoolExecutor]:
    """Worker processes, forked where there is fork: they start at once, share what the parent
    read, and need no importable __main__; they use nothing a parent thread (the progress
    display) could hold a lock on. Not multiprocessing's Pool: its worker-handler thread spins
    while each result waits to be read, taking a core from the workers."""
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs)
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, drop the tasks not started yet


def _touches_segment(path: str, run: Run, group: list[Line]) -> bool:
    for line in group:
        segment = segment_of(run.policy, parse_line(path, line))
        if segment is not None and segment.name == run.segment:
            return True
    return False


# --- the report ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Report:
    policy: str
    journeys: int = 0
    results: Counter = field(default_factory=Counter)
    due: Counter = field(default_factory=Counter)
    recovered_amount: Counter = field(default_factory=Counter)
    attempts: int = 0
    messages: Counter = field(default_factory=Counter)
    days_to_recovery: list[float] = field(default_factory=list)
    network_violations: list[str] = field(default_factory=list)
    messaging_violations: list[str] = field(default_factory=list)
    network_violation_count: int = 0
    messaging_violation_count: int = 0

    def add(self, result: ClusterResult, segment: str | None = None) -> None:
        chosen = [j for j in result.journeys if segment is None or j.segment == segment]
        for journey in chosen:
            self.journeys += 1
            self.results[journey.result] += 1
            self.due[journey.currency] += journey.amount
            self.attempts += journey.attempts
            for channel, count in journey.messages.items():  # as Counter.update, in two thirds of the time
                self.messages[channel] += count
            if journey.recovered_at is not None:  # set for recovered journeys only
                self.recovered_amount[journey.currency] += journey.amount
                self.days_to_recovery.append((journey.recovered_at - journey.failed_at).total_seconds() / DAY)
        if chosen:  # a cluster's violations count once, with the journeys that made them
            self.network_violation_count += len(result.network_violations)
            self.messaging_violation_count += len(result.messaging_violations)
            self.network_violations.extend(result.network_violations[: max(0, 20 - len(self.network_violations))])
            self.messaging_violations.extend(result.messaging_violations[: max(0, 20 - len(self.messaging_violations))])

    def cumulative_recovery(self, days: int = 60) -> list[float]:
        """Share of journeys recovered by the end of each day since the failure (0..days)."""
        counts = [0] * (days + 1)
        for value in self.days_to_recovery:
            counts[min(days, int(value))] += 1
        shares, total = [], 0
        for count in counts:
            total += count
            shares.append(total / self.journeys if self.journeys else 0.0)
        return shares

    def to_dict(self) -> dict[str, Any]:
        recovered = self.results["recovered"]
        total_messages = sum(self.messages.values())
        return {
            "policy": self.policy,
            "journeys": self.journeys,
            "results": {name: self.results[name] for name in RESULTS},
            "recovered": {"count": recovered, "rate": _round(recovered / self.journeys if self.journeys else None)},
            "recovered_amount": {
                currency: {
                    "due": self.due[currency],
                    "recovered": self.recovered_amount[currency],
                    "rate": _round(self.recovered_amount[currency] / self.due[currency]),
                }
                for currency in sorted(self.due)
            },
            "attempts": {"total": self.attempts, "per_recovery": _round(self.attempts / recovered if recovered else None, 3)},
            "messages": {
                "total": total_messages,
                "by_channel": {channel.value: self.messages[channel.value] for channel in Channel},
                "per_journey": _round(total_messages / self.journeys if self.journeys else None, 3),
            },
            "days_to_recovery": {
                "median": _round(percentile(self.days_to_recovery, 0.5), 2),
                "p90": _round(percentile(self.days_to_recovery, 0.9), 2),
            },
            "violations": {
                "network": self.network_violation_count,
                "messaging": self.messaging_violation_count,
                "examples": self.network_violations[:10] + self.messaging_violations[:10],
            },
        }


def deltas(policy: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """policy minus baseline for every figure both have (rates in fractions, not points)."""

    def minus(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: minus(a[k], b[k]) for k in a if k in b and minus(a[k], b[k]) is not None}
        if isinstance(a, bool) or isinstance(b, bool):
            return None
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return _round(a - b)
        return None

    keep = ("journeys", "results", "recovered", "recovered_amount", "attempts", "messages", "days_to_recovery")
    out = {key: minus(policy[key], baseline[key]) for key in keep}
    out["violations"] = {k: policy["violations"][k] - baseline["violations"][k] for k in ("network", "messaging")}
    return out


@dataclass
class Simulation:
    """Everything `dunning simulate` prints: the policy's report, the baseline's, per variant."""

    policy: Report
    baseline: Report | None
    variants: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        policy = self.policy.to_dict()
        baseline = self.baseline.to_dict() if self.baseline else None
        return {
            "policy": policy,
            "baseline": baseline,
            "delta": deltas(policy, baseline) if baseline else None,
            "variants": self.variants,
        }


def simulate_file(
    path: str | Path,
    policy: Policy,
    *,
    baseline: Policy | None = None,
    events: Callable[[str], None] | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Simulation:
    """Simulate a scenario file under `policy` (and `baseline`); `events` gets each event line.

    Each experiment (a segment with variants) is also run once per variant with every journey
    of that segment forced onto it, so variants compare on the same scenarios.
    """
    path = str(path)
    runs = [Run("policy", policy, record_events=events is not None)]
    if baseline is not None:
        runs.append(Run("baseline", baseline))
    experiments: list[tuple[str, Segment, int]] = []
    for s_index, segment in enumerate(policy.segments):
        for v_index, variant in enumerate(segment.variants):
            name = f"variant:{segment.name}:{variant.name}"
            runs.append(Run(name, forced_variant(policy, s_index, v_index), segment=segment.name))
            experiments.append((name, segment, v_index))
    reports = {run.name: Report(run.policy.version or run.policy.name) for run in runs}
    segments = {run.name: run.segment for run in runs}

    def on_cluster(name: str, result: ClusterResult) -> None:
        reports[name].add(result, segments[name])
        if name == "policy" and events is not None:
            for journey in result.journeys:
                for line in journey.events or ():
                    events(line)
                journey.events = None

    results = run_file(path, runs, workers=workers, progress=progress, on_cluster=on_cluster, on_plan=on_start)
    assigned: Counter = Counter()
    for result in results["policy"]:
        for journey in result.journeys:
            if journey.variant is not None:
                assigned[(journey.segment, journey.variant)] += 1
    variants = []
    for name, segment, v_index in experiments:
        variant = segment.variants[v_index]
        report = reports[name]
        variants.append({
            "segment": segment.name,
            "variant": variant.name,
            "weight": variant.weight,
            "assigned": assigned[(segment.name, variant.name)],
            "report": report.to_dict(),
        })
    return Simulation(reports["policy"], reports.get("baseline"), variants)
