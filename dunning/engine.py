"""The pure policy engine: journey state + now -> the next decision, and how results change state.

No I/O and no clock: the workflow, `policy explain` and the simulator all drive the same functions,
so what ops preview is what customers get. Every decision carries a human-readable reason.

`make install` compiles this module (mypyc). Its code reads the journey state's fields rather than
its properties (`ended_at`, not `finished`) and formats enums as strings rather than reading
`.value`: each of those is an interpreted call.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, time, timedelta
from typing import Any, Literal, cast

from dunning.budgets import card_key, earliest_attempt
from dunning.declines import DeclineClass, classify
from dunning.enums import Action, Channel, Stage
from dunning.journey_state import (
    AttemptRecord,
    AttemptStatus,
    CardAttempt,
    JourneyState,
    MessageRecord,
    MessageStatus,
    TimelineEntry,
)
from dunning.messaging import next_allowed
from dunning.models import ChargeOutcome, Decline, FailedPayment, PaymentMethod
from dunning.policy import Policy, Step
from dunning.timing import customer_zone, is_bank_debit, next_message_time, place_retry

RECONCILE_DELAY = timedelta(minutes=30)
PROMPT_RETRY_DELAY = timedelta(minutes=5)
WHOLE_DAY = (time(0, 0), time(23, 59, 59))  # prompt retries on cards need not wait for retry hours

DecisionKind = Literal["attempt", "message", "escalation", "reconcile", "skip", "wait", "finish"]


class Decision:
    """The single next thing to do and when.

    A plain class, not a dataclass: mypyc compiles this `__init__`, while a dataclass's is made
    at import time and interpreted (four times the cost, and the engine makes one per step).
    """

    def __init__(
        self,
        *,
        kind: DecisionKind,
        at: datetime,
        reason: str,
        step_id: str | None = None,
        payment_method_id: str | None = None,
        attempt_number: int | None = None,
        channel: Channel | None = None,
        template: str | None = None,
        action: Action | None = None,
        coupon: str | None = None,
    ) -> None:
        self.kind: DecisionKind = kind
        self.at = at
        self.reason = reason
        self.step_id = step_id
        self.payment_method_id = payment_method_id
        self.attempt_number = attempt_number
        self.channel = channel
        self.template = template
        self.action = action
        self.coupon = coupon

    def __repr__(self) -> str:  # for test failures and debugging; the timeline has the reason
        target = self.payment_method_id or self.channel or self.action or ""
        return f"Decision({self.kind} {self.step_id or ''} {target} at {self.at.isoformat()}: {self.reason})"


def note(state: JourneyState, at: datetime, kind: str, text: str) -> None:
    """Add a line to the journey's timeline (what ops read in `journeys show`)."""
    state.timeline.append(TimelineEntry(at, kind, text))


def _ladder_base(state: JourneyState) -> datetime:
    """Step offsets count from the failure, shifted by the time spent paused (e.g. a dispute)."""
    return state.payment.failed_at + state.paused_total


# --- starting ------------------------------------------------------------------------------------

# Every default, and placeholders where the journey goes (so that copies keep the fields' order,
# which JSON follows): copying it with the journey filled in costs half of `model_construct` (run
# for each journey). Its lists and dicts are replaced, never shared.
_BLANK_STATE = JourneyState.model_construct(
    **dict.fromkeys(name for name, field in JourneyState.model_fields.items() if field.is_required())
)
_FRESH_DEFAULTS = {
    name: type(value) for name, value in _BLANK_STATE.__dict__.items() if isinstance(value, (list, dict))
}


def start_journey(
    policy: Policy, payment: FailedPayment, *, ledger: list[CardAttempt] | None = None
) -> JourneyState:
    ladder = policy.ladder_for(payment)
    methods = list(payment.payment_methods)
    initial_method = _initial_method(payment)
    if initial_method is not None and all(m.id != initial_method.id for m in methods):
        methods.append(initial_method)
    journey_id = payment.journey_id
    # Every part is already a validated model: skip re-validating them.
    given = dict(
        journey_id=journey_id,
        payment=payment,
        policy_version=policy.version or policy.name,
        segment=ladder.segment,
        variant=ladder.variant,
        ladder=ladder.steps,
        payment_methods=methods,
        ledger=[entry for entry in (ledger or []) if entry.journey_id != journey_id],
        unavailable_channels=_missing_contacts(payment),
    )
    fresh = {name: make() for name, make in _FRESH_DEFAULTS.items()}
    state = _BLANK_STATE.model_copy(update=fresh | given)
    for channel in payment.opted_out:
        state.unavailable_channels[channel] = "opted out"
    segment_text = f"segment {ladder.segment}" + (f", variant {ladder.variant}" if ladder.variant else "")
    note(state, payment.failed_at, "started", f"payment failed; policy {state.policy_version}, {segment_text}")
    if initial_method is not None:
        _record_attempt(
            state,
            number=0,
            at=payment.failed_at,
            method=initial_method,
            step_id="initial",
            outcome=ChargeOutcome(status="declined", decline=payment.initial_decline),
            reason="the failure that started this journey",
        )
    return state


def _initial_method(payment: FailedPayment) -> PaymentMethod | None:
    wanted = payment.initial_decline.payment_method
    for method in payment.payment_methods:
        if method.id == wanted:
            return method
    if wanted is not None:
        return PaymentMethod(id=wanted)
    return next((m for m in payment.payment_methods if m.default), None) or next(
        iter(payment.payment_methods), None
    )


def _missing_contacts(payment: FailedPayment) -> dict[Channel, str]:
    missing: dict[Channel, str] = {}
    if not payment.customer.email:
        missing[Channel.email] = "no email address"
    if not payment.customer.phone:
        missing[Channel.sms] = "no phone number"
    return missing


# --- planning --------------------------------------------------------------------------------------


def next_decision(policy: Policy, state: JourneyState, now: datetime) -> Decision:
    """The single next thing to do and when. The caller waits until `at` (or a signal) and applies it."""
    stage = state.stage
    if state.ended_at is not None:  # finished
        return Decision(kind="finish", at=now, reason=state.end_reason or str(stage))
    if stage is Stage.recovered:
        return _plan_recovery(policy, state, now)
    if stage.terminal:
        return Decision(kind="finish", at=now, reason=state.end_reason or str(stage))
    if state.paused_since is not None:
        return Decision(kind="wait", at=now, reason="paused: waiting for resume")
    if state.awaiting_reconcile is not None:
        last = state.attempts[-1]
        return Decision(
            kind="reconcile",
            at=max(now, last.at + RECONCILE_DELAY),
            attempt_number=state.awaiting_reconcile,
            payment_method_id=last.payment_method_id,
            reason=f"attempt {state.awaiting_reconcile} is still processing; read it back before any new attempt",
        )
    if state.prompt_retry_requested_at is not None:
        prompt = _plan_prompt_retry(policy, state, now)
        if prompt is not None:
            return prompt
    done = state.steps_done
    for step in state.ladder:
        if step.id not in done:
            break
    else:  # unreachable for validated policies: the last step always ends the journey
        return Decision(kind="finish", at=now, reason="ladder exhausted")
    window_start = _ladder_base(state) + step.at
    window_end = window_start + step.window
    if step.action is Action.retry:
        return _plan_retry(policy, state, now, step, window_start, window_end)
    if step.action is Action.notify:
        return _plan_message(policy, state, now, step, window_start, window_end)
    return Decision(
        kind="escalation",
        at=max(now, window_start),
        step_id=step.id,
        action=step.action,
        coupon=step.coupon,
        reason=step.why or f"policy step {step.id}",
    )


def usable_methods(policy: Policy, state: JourneyState, now: datetime) -> list[PaymentMethod]:
    """Default first, then most recently successful; skipping expired and stopped methods."""
    usable = [m for m in state.payment_methods if _usable(m, state, now)]
    if len(usable) > 1:
        usable.sort(
            key=lambda m: (
                not m.default,
                -(m.last_succeeded_at.timestamp() if m.last_succeeded_at else float("-inf")),
            )
        )
    if not policy.cycle_payment_methods:
        return usable[:1]
    return usable


def decline_class(state: JourneyState) -> DeclineClass | None:
    """The class of the journey's latest classified decline."""
    for attempt in reversed(state.attempts):
        if attempt.decline_class is not None:
            return attempt.decline_class
    return None


def _usable(method: PaymentMethod, state: JourneyState, now: datetime) -> bool:
    return method.id not in state.stopped_methods and not expired(method, now)


def expired(method: PaymentMethod, now: datetime) -> bool:
    """Past the end of its expiry month (methods without an expiry date never expire)."""
    if method.exp_month is None or method.exp_year is None:
        return False
    return (now.year, now.month) > (method.exp_year, method.exp_month)


def _cycled(methods: list[PaymentMethod], state: JourneyState) -> list[PaymentMethod]:
    """Round-robin: start after the method tried last, so each usable method gets its turn."""
    if len(methods) < 2 or not state.attempts:
        return methods
    last_id = state.attempts[-1].payment_method_id
    ids = [m.id for m in methods]
    if last_id not in ids:
        return methods
    start = ids.index(last_id) + 1
    return methods[start:] + methods[:start]


def _own_card_attempts(state: JourneyState) -> list[CardAttempt]:
    """This journey's attempts as ledger entries; only attempts added since the last call are made.

    Attempts are appended, or replaced when a processing one is read back: any other change to
    the records seen before makes all of them again.
    """
    attempts = state.attempts
    # The private attribute from its own dict: reading it by name goes through pydantic's
    # __getattr__, which costs more than the rest of this check.
    private = cast("dict[str, Any]", state.__pydantic_private__)
    seen, own = private["_own_card_attempts"] or ([], [])
    # Identity, not equality: comparing records compares their declines, pydantic models, slowly.
    if len(seen) > len(attempts) or any(old is not new for old, new in zip(seen, attempts)):
        seen, own = [], []
    if len(seen) == len(attempts):
        return own
    amount, currency, journey_id = state.payment.amount, state.payment.currency, state.journey_id
    own = own + [
        CardAttempt(a.at, a.card_key, a.brand, amount, currency, journey_id, a.payment_method_id, a.decline)
        for a in attempts[len(seen):]
        if a.status != "error"  # refused before reaching the card network
    ]
    private["_own_card_attempts"] = (list(attempts), own)
    return own


def _budget(policy: Policy, state: JourneyState, method: PaymentMethod, not_before: datetime):
    # This journey on every card (the journey cap) plus other journeys' attempts from the store's
    # ledger; `earliest_attempt` keeps the ones on this card for the network limits.
    history = [*_own_card_attempts(state), *state.ledger]
    return earliest_attempt(
        card=method,
        amount=state.payment.amount,
        currency=state.payment.currency,
        journey_id=state.journey_id,
        history=history,
        not_before=not_before,
        limits=policy.limits,
    )


def _plan_retry(
    policy: Policy,
    state: JourneyState,
    now: datetime,
    step: Step,
    window_start: datetime,
    window_end: datetime,
) -> Decision:
    methods = _cycled(usable_methods(policy, state, now), state)
    if not methods:
        return _skip(step, now, "no usable payment method; waiting for the customer to add one")
    prefer_payday = (
        step.prefer_payday
        if step.prefer_payday is not None
        else decline_class(state) is DeclineClass.insufficient_funds
    )
    blocked: list[str] = []
    for method in methods:
        budget = _budget(policy, state, method, max(now, window_start))
        if budget.allowed_at is None:
            blocked.append(f"{method.id}: " + "; ".join(budget.reasons))
            continue
        at = place_retry(
            window_start=window_start,
            window_end=window_end,
            not_before=max(now, budget.allowed_at),
            zone=customer_zone(state.payment.customer, method, policy.timing.merchant_timezone),
            payment_method=method,
            prefer_payday=prefer_payday,
            rules=policy.timing,
            jitter_key=f"{state.journey_id}:{step.id}",
        )
        if at is None:
            blocked.append(f"{method.id}: no allowed moment in the step's window ({'; '.join(budget.reasons) or 'window passed'})")
            continue
        reasons = [step.why] if step.why else []
        reasons += list(budget.reasons)
        if prefer_payday:
            reasons.append("prefers a payday (insufficient funds)")
        return Decision(
            kind="attempt",
            at=at,
            step_id=step.id,
            payment_method_id=method.id,
            attempt_number=next_attempt_number(state),
            reason="; ".join(r for r in reasons if r) or f"policy step {step.id}",
        )
    return _skip(step, now, "retry skipped — " + " | ".join(blocked))


def _plan_prompt_retry(policy: Policy, state: JourneyState, now: datetime) -> Decision | None:
    requested = state.prompt_retry_requested_at or now
    methods = usable_methods(policy, state, now)
    for method in methods:
        earliest = max(now, requested + PROMPT_RETRY_DELAY)
        budget = _budget(policy, state, method, earliest)
        if budget.allowed_at is None:
            continue
        at = place_retry(
            window_start=budget.allowed_at,
            window_end=budget.allowed_at + timedelta(days=3),
            not_before=budget.allowed_at,
            zone=customer_zone(state.payment.customer, method, policy.timing.merchant_timezone),
            payment_method=method,
            prefer_payday=False,
            rules=policy.timing.model_copy(update={"retry_hours": WHOLE_DAY})
            if not is_bank_debit(method)
            else policy.timing,
            jitter_key=f"{state.journey_id}:prompt:{len(state.attempts)}",
        )
        if at is None or at > _ladder_base(state) + policy.window:
            continue
        return Decision(
            kind="attempt",
            at=at,
            step_id=f"prompt-{next_attempt_number(state)}",
            payment_method_id=method.id,
            attempt_number=next_attempt_number(state),
            reason=f"{state.prompt_retry_reason}: prompt retry within the network rules"
            + (f"; {'; '.join(budget.reasons)}" if budget.reasons else ""),
        )
    return Decision(
        kind="skip",
        at=now,
        step_id="prompt",
        reason=f"{state.prompt_retry_reason}: no method may be retried now under the network rules",
    )


def _plan_message(
    policy: Policy,
    state: JourneyState,
    now: datetime,
    step: Step,
    window_start: datetime,
    window_end: datetime,
) -> Decision:
    channels = effective_channels(policy, state, step)
    handled = _handled_channels(state, step)
    pending = [c for c in channels if c not in handled]
    if not pending:
        unavailable = [c for c in step.channels if c in state.unavailable_channels]
        reason = "all channels handled"
        if not channels:
            reason = "no channel can reach the customer (" + ", ".join(
                f"{c}: {state.unavailable_channels[c]}" for c in unavailable
            ) + ")"
        return _skip(step, now, reason)
    channel = pending[0]
    zone = customer_zone(state.payment.customer, None, policy.timing.merchant_timezone)
    earliest = _after_frequency_cap(policy, state, max(now, window_start))
    at = next_message_time(earliest, zone, policy.timing)
    if at > window_end:
        return Decision(
            kind="skip",
            at=now,
            step_id=step.id,
            channel=channel,
            template=step.template,
            reason=f"{channel} skipped: the frequency cap and quiet hours leave no moment in the step's window",
        )
    fallback = channel not in step.channels
    reason = step.why or f"policy step {step.id}"
    if fallback:
        reason += f"; {channel} instead of " + ", ".join(
            f"{c} ({state.unavailable_channels.get(c, 'unavailable')})" for c in step.channels
        )
    if at > max(now, window_start):
        reason += "; moved later for quiet hours or the frequency cap"
    return Decision(
        kind="message", at=at, step_id=step.id, channel=channel, template=step.template, reason=reason
    )


def effective_channels(policy: Policy, state: JourneyState, step: Step) -> list[Channel]:
    """The step's channels that can reach the customer; else the first reachable fallback."""
    reachable = [c for c in step.channels if c not in state.unavailable_channels]
    if reachable:
        return reachable
    fallback = next(
        (c for c in policy.messaging.fallback_channels if c not in state.unavailable_channels), None
    )
    return [fallback] if fallback is not None else []


def _handled_channels(state: JourneyState, step: Step) -> set[Channel]:
    """The channels the step has a message record for, whatever its status."""
    step_id = step.id
    return {m.channel for m in state.messages if m.step_id == step_id}


def _after_frequency_cap(policy: Policy, state: JourneyState, at: datetime) -> datetime:
    per_24h, per_7d = policy.messaging.max_per_24h, policy.messaging.max_per_7d
    if len(state.messages) < min(per_24h, per_7d):  # too few messages of any status to reach a cap
        return at
    sent = [m.at for m in state.messages if m.status == "sent"]
    sent.sort()
    return next_allowed(sent, at, per_24h, per_7d)


def _plan_recovery(policy: Policy, state: JourneyState, now: datetime) -> Decision:
    recovered_at = state.recovered_at or now
    for step in policy.on_recovery:
        if step.id in state.recovery_steps_done:
            continue
        if step.action is Action.reactivate:
            if not state.access_restricted:
                return _skip(step, now, "access was never restricted")
            return Decision(
                kind="escalation", at=max(now, recovered_at + step.at), step_id=step.id,
                action=step.action, reason=step.why or "restore access after recovery",
            )
        handled = _handled_channels(state, step)
        channels = [c for c in effective_channels(policy, state, step) if c not in handled]
        if not channels:
            return _skip(step, now, "all channels handled")
        zone = customer_zone(state.payment.customer, None, policy.timing.merchant_timezone)
        return Decision(
            kind="message",
            at=next_message_time(max(now, recovered_at + step.at), zone, policy.timing),
            step_id=step.id, channel=channels[0], template=step.template,
            reason=step.why or "confirm the recovered payment",
        )
    return Decision(kind="finish", at=now, reason=state.end_reason or "recovered")


def _skip(step: Step, now: datetime, reason: str) -> Decision:
    return Decision(kind="skip", at=now, step_id=step.id, reason=reason)


def next_attempt_number(state: JourneyState) -> int:
    highest = 0
    for attempt in state.attempts:
        highest = max(highest, attempt.number)
    return highest + 1


# --- applying results ---------------------------------------------------------------------------


def apply_attempt(
    policy: Policy, state: JourneyState, decision: Decision, outcome: ChargeOutcome, at: datetime
) -> None:
    method = _method(state, decision.payment_method_id)
    _record_attempt(
        state,
        number=decision.attempt_number or next_attempt_number(state),
        at=at,
        method=method,
        step_id=decision.step_id or "",
        outcome=outcome,
        reason=decision.reason,
        mastercard_02_delay=policy.limits.mastercard_02_delay,
    )
    _finish_planned_step(state, decision)
    if outcome.status == "succeeded":
        _recover(state, at, f"attempt {decision.attempt_number} on {method.id} succeeded")
    _refresh_stage(policy, state, at)


def apply_charge_refused(policy: Policy, state: JourneyState, decision: Decision, error: str, at: datetime) -> None:
    """The gateway refused the request itself (e.g. invalid request): recorded, so the attempt number
    (part of the idempotency key) is never reused, and the step is over."""
    method = _method(state, decision.payment_method_id)
    state.attempts.append(
        AttemptRecord(
            number=decision.attempt_number or next_attempt_number(state),
            at=at,
            payment_method_id=method.id,
            card_key=card_key(method),
            brand=method.brand,
            step_id=decision.step_id or "",
            status="error",
            reason=error,
        )
    )
    _finish_planned_step(state, decision)
    note(state, at, "attempt", f"attempt {decision.attempt_number} on {method.id} refused by the gateway: {error}")
    _refresh_stage(policy, state, at)


def apply_budget_denied(
    policy: Policy, state: JourneyState, decision: Decision, ledger: list[CardAttempt], at: datetime
) -> None:
    """The store's ledger knew attempts on this card that we did not: adopt them and re-plan."""
    known = {(e.journey_id, e.at) for e in state.ledger}
    state.ledger.extend(
        e for e in ledger if e.journey_id != state.journey_id and (e.journey_id, e.at) not in known
    )
    note(state, at, "budget", f"attempt on {decision.payment_method_id} deferred: other journeys used this card's network budget")
    _refresh_stage(policy, state, at)


def apply_reconciled(policy: Policy, state: JourneyState, outcome: ChargeOutcome, at: datetime) -> None:
    number = state.awaiting_reconcile
    index = next(i for i, a in enumerate(state.attempts) if a.number == number)
    previous = state.attempts[index]
    verdict = classify(outcome.decline or Decline(), previous.brand, policy.limits.mastercard_02_delay) if outcome.status == "declined" else None
    state.attempts[index] = replace(
        previous,
        status=outcome.status,
        decline=outcome.decline,
        decline_class=verdict.decline_class if verdict else None,
        charge_id=outcome.charge_id or previous.charge_id,
    )
    note(state, at, "reconciled", f"attempt {number} read back: {outcome.status}")
    if outcome.status != "processing":
        state.awaiting_reconcile = None
    if verdict is not None and verdict.stop_method:
        state.stopped_methods[previous.payment_method_id] = "; ".join(verdict.reasons)
    if outcome.status == "succeeded":
        _recover(state, at, f"attempt {number} settled successfully")
    _refresh_stage(policy, state, at)


def apply_message(
    policy: Policy, state: JourneyState, decision: Decision, status: MessageStatus, detail: str, at: datetime
) -> None:
    assert decision.channel is not None and decision.step_id is not None
    state.messages.append(
        MessageRecord(decision.step_id, decision.channel, at, status, detail)
    )
    text = f"{decision.channel} {decision.template or ''} ({decision.step_id}): {status}"
    note(state, at, "message", text + (f" — {detail}" if detail else ""))
    if status in ("undeliverable", "opted_out"):
        state.unavailable_channels[decision.channel] = detail or status
    recovery = state.stage is Stage.recovered
    for step in policy.on_recovery if recovery else state.ladder:
        if step.id == decision.step_id:
            handled = _handled_channels(state, step)
            if all(c in handled for c in effective_channels(policy, state, step)):
                (state.recovery_steps_done if recovery else state.steps_done)[step.id] = "done"
            return


def apply_skip(policy: Policy, state: JourneyState, decision: Decision, at: datetime) -> None:
    if decision.channel is not None:
        apply_message(policy, state, decision, "skipped", decision.reason, at)
        return
    if decision.step_id == "prompt":
        state.prompt_retry_requested_at = None
        state.prompt_retry_reason = None
    elif decision.step_id is not None:
        recovery = state.stage is Stage.recovered
        (state.recovery_steps_done if recovery else state.steps_done)[decision.step_id] = "skipped"
    if decision.reason != "all channels handled":
        note(state, at, "skipped", f"{decision.step_id}: {decision.reason}")
    _refresh_stage(policy, state, at)


def apply_escalation(policy: Policy, state: JourneyState, decision: Decision, at: datetime) -> None:
    action = decision.action
    if state.stage is Stage.recovered:
        state.recovery_steps_done[decision.step_id or ""] = "done"
    else:
        state.steps_done[decision.step_id or ""] = "done"
    note(state, at, "escalation", f"{action or ''} ({decision.step_id}): {decision.reason}")
    if action is Action.restrict_access:
        state.access_restricted = True
    elif action is Action.reactivate:
        state.access_restricted = False
    elif action in (Action.hand_off, Action.write_off):
        state.stage = Stage.handed_off
        state.ended_at = at
        state.end_reason = "handed off to the collection partner" if action is Action.hand_off else "written off"
        return
    _refresh_stage(policy, state, at)


# --- events from outside ------------------------------------------------------------------------


def apply_payment_succeeded(policy: Policy, state: JourneyState, at: datetime, source: str) -> bool:
    if state.stage.terminal:
        note(state, at, "ignored", f"payment succeeded ({source}) after the journey ended as {state.stage}")
        return False
    _recover(state, at, f"paid out of band ({source})")
    return True


def apply_payment_method_updated(
    policy: Policy, state: JourneyState, method: PaymentMethod, at: datetime, source: str
) -> None:
    """A new or changed method becomes the default and gets a prompt attempt (within the rules)."""
    others = [m.model_copy(update={"default": False}) if method.default else m for m in state.payment_methods if m.id != method.id]
    state.payment_methods = [method, *others]
    state.stopped_methods.pop(method.id, None)
    state.prompt_retry_requested_at = at
    state.prompt_retry_reason = f"payment method {method.id} updated ({source})"
    note(state, at, "payment_method", f"{method.id} ({method.brand or method.type}) added/updated via {source}; prompt retry planned")
    _refresh_stage(policy, state, at)


def apply_retry_now(policy: Policy, state: JourneyState, at: datetime, reason: str) -> None:
    state.prompt_retry_requested_at = at
    state.prompt_retry_reason = f"retry requested by ops: {reason}"
    note(state, at, "ops", f"retry now requested: {reason}")


def apply_pause(policy: Policy, state: JourneyState, at: datetime, reason: str) -> None:
    if state.paused_since is None and not state.stage.terminal:
        state.paused_since = at
        note(state, at, "paused", reason)
        _refresh_stage(policy, state, at)


def apply_resume(policy: Policy, state: JourneyState, at: datetime, reason: str) -> None:
    if state.paused_since is not None:
        state.paused_total += at - state.paused_since
        state.paused_since = None
        note(state, at, "resumed", f"{reason}; the remaining steps move later by the time paused")
        _refresh_stage(policy, state, at)


def apply_cancel(policy: Policy, state: JourneyState, at: datetime, reason: str) -> None:
    if state.stage.terminal:
        return
    state.stage = Stage.cancelled
    state.ended_at = at
    state.end_reason = reason
    note(state, at, "cancelled", reason)


def apply_policy_change(state: JourneyState, policy: Policy, at: datetime, reason: str) -> None:
    """An explicit rollout: keep what already happened (step ids), follow the new ladder from here."""
    ladder = policy.ladder_for(state.payment)
    previous = state.policy_version
    state.policy_version = policy.version or policy.name
    state.segment, state.variant, state.ladder = ladder.segment, ladder.variant, ladder.steps
    note(state, at, "policy", f"moved from {previous} to {state.policy_version}: {reason}")


# --- helpers ------------------------------------------------------------------------------------


def _record_attempt(
    state: JourneyState,
    *,
    number: int,
    at: datetime,
    method: PaymentMethod,
    step_id: str,
    outcome: ChargeOutcome,
    reason: str,
    mastercard_02_delay: timedelta = timedelta(hours=72),
) -> None:
    verdict = None
    if outcome.status == "declined":
        verdict = classify(outcome.decline or Decline(), method.brand, mastercard_02_delay)
    status: AttemptStatus = outcome.status
    state.attempts.append(
        AttemptRecord(
            number=number,
            at=at,
            payment_method_id=method.id,
            card_key=card_key(method),
            brand=method.brand,
            step_id=step_id,
            status=status,
            decline=outcome.decline,
            decline_class=verdict.decline_class if verdict else None,
            charge_id=outcome.charge_id,
            reason=reason,
        )
    )
    if step_id.startswith("prompt"):
        state.prompt_retry_requested_at = None
        state.prompt_retry_reason = None
    summary: str = outcome.status
    if verdict is not None:
        summary = f"declined ({verdict.decline_class}: {outcome.decline.decline_code if outcome.decline else None})"
        if verdict.unknown_codes:
            summary += f"; unknown codes handled as generic: {', '.join(verdict.unknown_codes)}"
        if verdict.stop_method:
            state.stopped_methods[method.id] = "; ".join(verdict.reasons)
            summary += f"; no more attempts on {method.id} until it is updated"
    if outcome.status == "requires_action":
        state.stopped_methods[method.id] = "the customer must authenticate this payment"
    if outcome.status == "processing":
        state.awaiting_reconcile = number
    note(state, at, "attempt", f"attempt {number} on {method.id}: {summary}")


def _finish_planned_step(state: JourneyState, decision: Decision) -> None:
    if decision.step_id and not decision.step_id.startswith("prompt"):
        state.steps_done[decision.step_id] = "done"


def _recover(state: JourneyState, at: datetime, text: str) -> None:
    state.stage = Stage.recovered
    state.recovered_at = at
    state.awaiting_reconcile = None
    state.prompt_retry_requested_at = None
    state.end_reason = text
    note(state, at, "recovered", text)


def _method(state: JourneyState, method_id: str | None) -> PaymentMethod:
    for method in state.payment_methods:
        if method.id == method_id:
            return method
    raise KeyError(f"payment method {method_id!r} is not known to journey {state.journey_id}")


def _refresh_stage(policy: Policy, state: JourneyState, at: datetime) -> None:
    if state.stage.terminal:
        return
    if state.paused_since is not None:
        stage = Stage.paused
    elif any(_usable(m, state, at) for m in state.payment_methods):
        stage = Stage.retrying
    else:
        stage = Stage.awaiting_customer
    if stage is not state.stage:  # assigning to a model field costs, even the same value
        state.stage = stage


def finish_if_done(state: JourneyState, decision: Decision, at: datetime) -> None:
    """A finish decision closes a recovered journey once its recovery steps are done."""
    if decision.kind == "finish" and state.ended_at is None:
        state.ended_at = at
