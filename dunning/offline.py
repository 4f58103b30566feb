"""Drive a journey through the pure engine without Temporal: `policy explain` and the simulator.

The loop mirrors the workflow's: plan the next decision, let outside events that happen first
(customer actions) take effect, otherwise advance the clock to the decision and apply its result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from dunning import engine
from dunning.journey_state import JourneyState, MessageStatus
from dunning.engine import Decision
from dunning.models import ChargeOutcome, FailedPayment, PaymentMethod
from dunning.policy import Policy

OutcomeFor = Callable[[Decision, PaymentMethod, datetime], ChargeOutcome]
Deliver = Callable[[Decision, JourneyState], tuple[MessageStatus, str]]
# Given the state, the next outside event (time, effect) or None; consulted before every decision.
OutsideEvent = Callable[[JourneyState], tuple[datetime, Callable[[JourneyState, datetime], None]] | None]

MAX_DECISIONS = 5000  # a validated policy ends long before; this only guards against engine bugs


@dataclass(frozen=True)
class Executed:
    decision: Decision
    at: datetime
    outcome: ChargeOutcome | None = None


def deliver_all(decision: Decision, state: JourneyState) -> tuple[MessageStatus, str]:
    return "sent", ""


def play(
    policy: Policy,
    payment: FailedPayment,
    outcome_for: OutcomeFor,
    *,
    deliver: Deliver = deliver_all,
    outside_event: OutsideEvent | None = None,
    state: JourneyState | None = None,
) -> tuple[JourneyState, list[Executed]]:
    state = state or engine.start_journey(policy, payment)
    now = payment.failed_at
    executed: list[Executed] = []
    for _ in range(MAX_DECISIONS):
        decision = engine.next_decision(policy, state, now)
        outside = outside_event(state) if outside_event else None
        if outside is not None and (decision.kind in ("wait", "finish") or outside[0] <= decision.at):
            if decision.kind == "finish" and state.finished:
                break
            now = max(now, outside[0])
            outside[1](state, now)
            continue
        if decision.kind == "wait":
            break  # paused with nothing to resume it: the journey stays open
        now = max(now, decision.at)
        outcome = apply(policy, state, decision, now, outcome_for, deliver)
        executed.append(Executed(decision, now, outcome))
        if state.finished:
            break
    else:
        raise RuntimeError(f"journey {state.journey_id} did not end after {MAX_DECISIONS} decisions")
    return state, executed


def apply(
    policy: Policy,
    state: JourneyState,
    decision: Decision,
    now: datetime,
    outcome_for: OutcomeFor,
    deliver: Deliver,
) -> ChargeOutcome | None:
    match decision.kind:
        case "attempt":
            method = next(m for m in state.payment_methods if m.id == decision.payment_method_id)
            outcome = outcome_for(decision, method, now)
            engine.apply_attempt(policy, state, decision, outcome, now)
            return outcome
        case "reconcile":
            method = next(m for m in state.payment_methods if m.id == decision.payment_method_id)
            outcome = outcome_for(decision, method, now)
            engine.apply_reconciled(policy, state, outcome, now)
            return outcome
        case "message":
            status, detail = deliver(decision, state)
            engine.apply_message(policy, state, decision, status, detail, now)
        case "escalation":
            engine.apply_escalation(policy, state, decision, now)
        case "skip":
            engine.apply_skip(policy, state, decision, now)
        case "finish":
            engine.finish_if_done(state, decision, now)
    return None


def decline_like_initial(payment: FailedPayment) -> OutcomeFor:
    """`policy explain`'s assumption: every attempt declines exactly like the first failure."""
    outcome = ChargeOutcome(status="declined", decline=payment.initial_decline)

    def outcome_for(decision: Decision, method: PaymentMethod, at: datetime) -> ChargeOutcome:
        return outcome

    return outcome_for
