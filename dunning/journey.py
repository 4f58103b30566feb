"""The journey workflow's public interface: input, message payloads and the status it reports.

Kept apart from the workflow so the HTTP service, the CLI and tests can use it without importing
workflow code.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from dunning.engine import Decision, decline_class
from dunning.enums import Stage
from dunning.journey_state import AttemptRecord, JourneyState, MessageRecord, TimelineEntry
from dunning.models import Decline, FailedPayment, Frozen, PaymentMethod

WORKFLOW_NAME = "DunningWorkflow"

SIGNAL_PAYMENT_FAILED = "payment_failed"
SIGNAL_PAYMENT_SUCCEEDED = "payment_succeeded"
SIGNAL_PAUSE = "pause"
SIGNAL_RESUME = "resume"
SIGNAL_CANCEL = "cancel"
SIGNAL_ADOPT_POLICY = "adopt_policy"
UPDATE_PAYMENT_METHOD = "payment_method_updated"
UPDATE_RETRY_NOW = "retry_now"
QUERY_STATUS = "status"


class JourneyInput(Frozen):
    payment: FailedPayment
    policy_version: str = Field(description="the published policy version the journey starts on")
    event_id: str | None = Field(default=None, description="the event that started it (deduped)")
    resume: JourneyState | None = Field(default=None, description="state carried by continue-as-new")
    update_url: str | None = None


class PaymentFailed(Frozen):
    event_id: str
    at: datetime
    decline: Decline = Decline()


class PaymentSucceeded(Frozen):
    event_id: str
    at: datetime | None = None
    source: str = "webhook"


class PaymentMethodUpdated(Frozen):
    event_id: str
    payment_method: PaymentMethod
    source: str = "webhook"


class OpsAction(Frozen):
    reason: str = Field(min_length=1, max_length=500)
    event_id: str | None = None
    actor: str = "ops"


class AdoptPolicy(Frozen):
    version: str
    reason: str = Field(min_length=1, max_length=500)


class NextAction(Frozen):
    kind: str
    at: datetime
    step_id: str | None = None
    payment_method_id: str | None = None
    channel: str | None = None
    action: str | None = None
    reason: str

    @classmethod
    def of(cls, decision: Decision) -> NextAction:
        return cls(
            kind=decision.kind,
            at=decision.at,
            step_id=decision.step_id,
            payment_method_id=decision.payment_method_id,
            channel=decision.channel.value if decision.channel else None,
            action=decision.action.value if decision.action else None,
            reason=decision.reason,
        )


class JourneyStatus(Frozen):
    journey_id: str
    stage: Stage
    payment_reference: str
    payment_kind: str
    customer_id: str
    amount: int
    currency: str
    policy_version: str
    segment: str
    variant: str | None = None
    decline_class: str | None = None
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    recovered_at: datetime | None = None
    paused: bool = False
    access_restricted: bool = False
    next_action: NextAction | None = None
    attempts: tuple[AttemptRecord, ...] = ()
    messages: tuple[MessageRecord, ...] = ()
    timeline: tuple[TimelineEntry, ...] = ()

    @classmethod
    def of(cls, state: JourneyState, decision: Decision | None) -> JourneyStatus:
        latest_decline = decline_class(state)
        return cls(
            journey_id=state.journey_id,
            stage=state.stage,
            payment_reference=state.payment.id,
            payment_kind=state.payment.kind or "invoice",
            customer_id=state.payment.customer.id,
            amount=state.payment.amount,
            currency=state.payment.currency,
            policy_version=state.policy_version,
            segment=state.segment,
            variant=state.variant,
            decline_class=latest_decline.value if latest_decline else None,
            started_at=state.payment.failed_at,
            ended_at=state.ended_at,
            end_reason=state.end_reason,
            recovered_at=state.recovered_at,
            paused=state.paused_since is not None,
            access_restricted=state.access_restricted,
            next_action=NextAction.of(decision) if decision and not state.finished else None,
            attempts=tuple(state.attempts),
            messages=tuple(state.messages),
            timeline=tuple(state.timeline),
        )
