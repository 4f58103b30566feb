"""DunningWorkflow: one durable journey per failed payment.

A thin interpreter of the pure engine: ask it for the next decision, wait for its time (or for a
signal that changes the plan), run the activity, feed the result back. All knowledge about
retries and messages lives in `dunning.engine`; all side effects live in activities.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

with workflow.unsafe.imports_passed_through():
    from dunning import engine, search_attributes
    from dunning.engine import Decision
    from dunning.enums import Action, Stage
    from dunning.journey_state import JourneyState
    from dunning.journey import (
        AdoptPolicy,
        JourneyInput,
        JourneyStatus,
        NextAction,
        OpsAction,
        PaymentFailed,
        PaymentMethodUpdated,
        PaymentSucceeded,
    )
    from dunning.models import ChargeOutcome, Decline
    from dunning.collections import placement_request
    from dunning.policy import Policy
    from dunning.ports import (
        COLLECTION_CONTEXT_ACTIVITY,
        ChargeRequest,
        ChargeResult,
        CollectionContext,
        EscalationRequest,
        JourneyContext,
        MessageRequest,
        MessageResult,
        ReconcileRequest,
    )
    from activities.journal import OpenJourney

# A provider outage delays a step; it never drops it: retry without a limit, backing off to 1 h.
PROVIDER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(hours=1),
    non_retryable_error_types=["PermanentPaymentError", "FrequencyCapped", "LookupError"],
)
STORE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
ACTIVITY_TIMEOUT = timedelta(minutes=2)
# Stripe keeps idempotency keys for 24 h: past that, a retry could charge twice, so stop retrying
# the same key before then and reconcile instead.
CHARGE_DEADLINE = timedelta(hours=20)


@workflow.defn(name="DunningWorkflow")
class DunningWorkflow:
    @workflow.init
    def __init__(self, journey: JourneyInput) -> None:
        self._input = journey
        self._inbox: list[tuple[str, str, object]] = []
        self._published: tuple | None = None
        self._applied: set[str] = set()
        self._state: JourneyState | None = journey.resume
        self._policy: Policy | None = None
        self._decision: Decision | None = None
        self._update_url = journey.update_url
        if journey.event_id:
            self._applied.add(journey.event_id)

    # --- messages from outside: queued, then applied by the main loop in arrival order ---------

    @workflow.signal(name="payment_failed")
    def payment_failed(self, event: PaymentFailed) -> None:
        self._enqueue(event.event_id, "payment_failed", event)

    @workflow.signal(name="payment_succeeded")
    def payment_succeeded(self, event: PaymentSucceeded) -> None:
        self._enqueue(event.event_id, "payment_succeeded", event)

    @workflow.signal(name="pause")
    def pause(self, action: OpsAction) -> None:
        self._enqueue(action.event_id, "pause", action)

    @workflow.signal(name="resume")
    def resume(self, action: OpsAction) -> None:
        self._enqueue(action.event_id, "resume", action)

    @workflow.signal(name="cancel")
    def cancel(self, action: OpsAction) -> None:
        self._enqueue(action.event_id, "cancel", action)

    @workflow.signal(name="adopt_policy")
    def adopt_policy(self, change: AdoptPolicy) -> None:
        self._enqueue(f"policy:{change.version}", "adopt_policy", change)

    @workflow.update(name="payment_method_updated")
    async def payment_method_updated(self, event: PaymentMethodUpdated) -> NextAction | None:
        self._enqueue(event.event_id, "payment_method_updated", event)
        await workflow.wait_condition(lambda: event.event_id in self._applied)
        return self._next_action()

    @payment_method_updated.validator
    def _validate_payment_method_updated(self, event: PaymentMethodUpdated) -> None:
        self._reject_when_finished()

    @workflow.update(name="retry_now")
    async def retry_now(self, action: OpsAction) -> NextAction | None:
        key = action.event_id or workflow.current_update_info().id
        self._enqueue(key, "retry_now", action)
        await workflow.wait_condition(lambda: key in self._applied)
        return self._next_action()

    @retry_now.validator
    def _validate_retry_now(self, action: OpsAction) -> None:
        self._reject_when_finished()

    @workflow.query(name="status")
    def status(self) -> JourneyStatus | None:
        if self._state is None:
            return None
        return JourneyStatus.of(self._state, self._decision)

    # --- the journey ------------------------------------------------------------------------

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyStatus:
        self._policy = await self._load_policy(
            journey.resume.policy_version if journey.resume else journey.policy_version
        )
        if self._state is None:
            self._state = await self._open(journey)
        state, policy = self._state, self._policy
        while True:
            await self._drain_inbox()
            decision = _plan(policy, state)
            self._decision = decision
            await self._publish()
            if decision.kind == "finish":
                engine.finish_if_done(state, decision, workflow.now())
                self._decision = None
                await self._publish()
                return JourneyStatus.of(state, None)
            if decision.kind == "wait" or decision.at > workflow.now():
                if await self._interrupted_before(decision):
                    continue
            if workflow.info().is_continue_as_new_suggested() and not self._inbox:
                workflow.continue_as_new(
                    JourneyInput(
                        payment=journey.payment,
                        policy_version=state.policy_version,
                        resume=state,
                        update_url=self._update_url,
                    )
                )
            await self._execute(decision)
            policy = self._policy

    async def _interrupted_before(self, decision: Decision) -> bool:
        """Sleep until the decision is due; True when a signal arrived first (so re-plan)."""
        if decision.kind == "wait":
            await workflow.wait_condition(lambda: bool(self._inbox))
            return True
        try:
            await workflow.wait_condition(
                lambda: bool(self._inbox), timeout=decision.at - workflow.now()
            )
        except asyncio.TimeoutError:
            return False
        return True

    async def _open(self, journey: JourneyInput) -> JourneyState:
        payment = journey.payment
        context = await workflow.execute_activity(
            COLLECTION_CONTEXT_ACTIVITY,
            payment,
            result_type=CollectionContext,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=PROVIDER_RETRY,
        )
        self._update_url = context.update_url
        richer = {"payment_methods": context.payment_methods or payment.payment_methods}
        if context.customer is not None:
            richer["customer"] = context.customer
        if context.initial_decline is not None and payment.initial_decline == Decline():
            richer["initial_decline"] = context.initial_decline  # webhooks may not carry it
        payment = payment.model_copy(update=richer)
        initial = engine._initial_method(payment)
        store_context = await workflow.execute_activity(
            "journal.open_journey",
            OpenJourney(
                journey_id=payment.journey_id,
                customer_id=payment.customer.id,
                amount=payment.amount,
                currency=payment.currency,
                payment_methods=payment.payment_methods,
                initial_method=initial,
                initial_decline=payment.initial_decline,
                failed_at=payment.failed_at,
            ),
            result_type=JourneyContext,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=STORE_RETRY,
        )
        opted_out = tuple(dict.fromkeys((*payment.opted_out, *store_context.opted_out)))
        payment = payment.model_copy(update={"opted_out": opted_out})
        return engine.start_journey(self._policy, payment, ledger=list(store_context.ledger))

    async def _load_policy(self, version: str) -> Policy:
        return await workflow.execute_activity(
            "journal.load_policy",
            version,
            result_type=Policy,
            start_to_close_timeout=ACTIVITY_TIMEOUT,
            retry_policy=STORE_RETRY,
        )

    async def _execute(self, decision: Decision) -> None:
        state, policy = self._state, self._policy
        now = workflow.now()
        match decision.kind:
            case "attempt":
                await self._attempt(decision)
            case "reconcile":
                outcome = await workflow.execute_activity(
                    "payments.read_back",
                    ReconcileRequest(
                        journey_id=state.journey_id,
                        attempt_number=decision.attempt_number,
                        payment_reference=state.payment.id,
                        payment_kind=state.payment.kind,
                    ),
                    result_type=ChargeOutcome,
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=PROVIDER_RETRY,
                )
                engine.apply_reconciled(policy, state, outcome, workflow.now())
            case "message":
                await self._message(decision)
            case "escalation":
                await workflow.execute_activity(
                    "payments.escalate",
                    EscalationRequest(
                        journey_id=state.journey_id,
                        action=decision.action,
                        payment_reference=state.payment.id,
                        payment_kind=state.payment.kind,
                        subscription_id=state.payment.subscription_id,
                        customer_id=state.payment.customer.id,
                        coupon=decision.coupon,
                    ),
                    start_to_close_timeout=ACTIVITY_TIMEOUT,
                    retry_policy=PROVIDER_RETRY,
                )
                if decision.action is Action.hand_off:  # write_off ends without a placement
                    await workflow.execute_activity(
                        "collections.place",
                        placement_request(state, workflow.now()),
                        start_to_close_timeout=ACTIVITY_TIMEOUT,
                        retry_policy=STORE_RETRY,
                    )
                engine.apply_escalation(policy, state, decision, workflow.now())
            case "skip":
                engine.apply_skip(policy, state, decision, now)

    async def _attempt(self, decision: Decision) -> None:
        state, policy = self._state, self._policy
        method = next(m for m in state.payment_methods if m.id == decision.payment_method_id)
        try:
            result = await workflow.execute_activity(
                "payments.charge",
                ChargeRequest(
                    journey_id=state.journey_id,
                    attempt_number=decision.attempt_number,
                    step_id=decision.step_id,
                    payment_reference=state.payment.id,
                    payment_kind=state.payment.kind,
                    payment_method=method,
                    amount=state.payment.amount,
                    currency=state.payment.currency,
                    at=workflow.now(),
                    limits=policy.limits,
                ),
                result_type=ChargeResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                schedule_to_close_timeout=CHARGE_DEADLINE,
                retry_policy=PROVIDER_RETRY,
            )
        except ActivityError as error:
            if error.retry_state is RetryState.TIMEOUT or isinstance(error.cause, TimeoutError):
                # The gateway may or may not have charged: read it back before any new attempt.
                outcome = ChargeOutcome(status="processing", message=f"no answer within {CHARGE_DEADLINE}")
                engine.apply_attempt(policy, state, decision, outcome, workflow.now())
            else:
                engine.apply_charge_refused(policy, state, decision, _cause(error), workflow.now())
            return
        if result.budget_denied:
            engine.apply_budget_denied(policy, state, decision, list(result.ledger), workflow.now())
        else:
            engine.apply_attempt(policy, state, decision, result.outcome, workflow.now())

    async def _message(self, decision: Decision) -> None:
        state, policy = self._state, self._policy
        upcoming = _plan(policy, _without_step(state, decision))
        try:
            result = await workflow.execute_activity(
                "messaging.send",
                MessageRequest(
                    journey_id=state.journey_id,
                    step_id=decision.step_id,
                    channel=decision.channel,
                    template=decision.template,
                    customer=state.payment.customer,
                    amount=state.payment.amount,
                    currency=state.payment.currency,
                    payment_reference=state.payment.id,
                    update_url=self._update_url,
                    next_action_at=upcoming.at if upcoming.kind != "finish" else None,
                    next_action=upcoming.action.value if upcoming.action else upcoming.kind,
                    at=workflow.now(),
                ),
                result_type=MessageResult,
                start_to_close_timeout=ACTIVITY_TIMEOUT,
                retry_policy=PROVIDER_RETRY,
            )
        except ActivityError as error:
            engine.apply_message(policy, state, decision, "skipped", _cause(error), workflow.now())
            return
        engine.apply_message(policy, state, decision, result.status, result.detail, workflow.now())

    async def _drain_inbox(self) -> None:
        while self._inbox:
            key, kind, event = self._inbox.pop(0)
            await self._apply_event(kind, event)
            self._applied.add(key)

    async def _apply_event(self, kind: str, event: object) -> None:
        state, policy, now = self._state, self._policy, workflow.now()
        match kind:
            case "payment_failed":
                engine.note(state, now, "payment_failed", f"the payment failed again outside the engine ({event.decline.decline_code or 'no code'})")
            case "payment_succeeded":
                engine.apply_payment_succeeded(policy, state, event.at or now, event.source)
            case "payment_method_updated":
                engine.apply_payment_method_updated(policy, state, event.payment_method, now, event.source)
            case "retry_now":
                engine.apply_retry_now(policy, state, now, event.reason)
            case "pause":
                engine.apply_pause(policy, state, now, event.reason)
            case "resume":
                engine.apply_resume(policy, state, now, event.reason)
            case "cancel":
                engine.apply_cancel(policy, state, now, event.reason)
            case "adopt_policy":
                new_policy = await self._load_policy(event.version)
                engine.apply_policy_change(state, new_policy, now, event.reason)
                self._policy = new_policy

    def _enqueue(self, key: str | None, kind: str, event: object) -> None:
        key = key or f"{kind}:{workflow.info().get_current_history_length()}:{len(self._inbox)}"
        if key in self._applied or any(queued == key for queued, _, _ in self._inbox):
            return  # signals are not de-duplicated by the server; event ids are
        self._inbox.append((key, kind, event))

    def _reject_when_finished(self) -> None:
        if self._state is not None and self._state.stage.terminal:
            raise ApplicationError(
                f"journey {self._state.journey_id} is {self._state.stage.value}; there is nothing left to retry"
            )

    def _next_action(self) -> NextAction | None:
        if self._state is None or self._policy is None or self._state.finished:
            return None
        return NextAction.of(_plan(self._policy, self._state))

    async def _publish(self) -> None:
        """Keep search attributes and the store's reporting projection current."""
        state = self._state
        latest_decline = engine.decline_class(state)
        values = (
            state.stage.value,
            0 if state.stage is Stage.recovered else state.payment.amount,
            latest_decline.value if latest_decline else "none",
        )
        if values != self._published:  # each upsert is a history event: only on change
            self._published = values
            workflow.upsert_search_attributes(
                [
                    search_attributes.STAGE.value_set(values[0]),
                    search_attributes.CUSTOMER_ID.value_set(state.payment.customer.id),
                    search_attributes.AMOUNT_DUE.value_set(values[1]),
                    search_attributes.CURRENCY.value_set(state.payment.currency),
                    search_attributes.DECLINE_CLASS.value_set(values[2]),
                ]
            )
        await workflow.execute_local_activity(
            "journal.project",
            JourneyStatus.of(state, self._decision),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=STORE_RETRY,
        )


def _plan(policy: Policy, state: JourneyState) -> Decision:
    """The engine's next decision. It is pure, but the `holidays` calendars it consults read the
    locale through gettext, which the sandbox forbids; lifting the restrictions for this pure
    call keeps determinism and lets bank-debit and payday planning use real calendars."""
    with workflow.unsafe.sandbox_unrestricted():
        return engine.next_decision(policy, state, workflow.now())


def _cause(error: ActivityError) -> str:
    cause = error.cause
    return str(cause.message if isinstance(cause, ApplicationError) else cause or error)


def _without_step(state: JourneyState, decision: Decision) -> JourneyState:
    """The state as if this message's step were done: what the customer is told comes next."""
    preview = state.model_copy(deep=True)
    if decision.step_id:
        preview.steps_done[decision.step_id] = "done"
    return preview
