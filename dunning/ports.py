"""Contracts between the workflow and its activities, and the ports the providers implement.

The workflow only ever sees these models; the sandbox gateway and the outbox implement the same
ports as Stripe, SendGrid and Twilio, so real providers slot in without touching the workflow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from pydantic import Field

from dunning.enums import Action, Channel
from dunning.journey_state import CardAttempt
from dunning.rules import RetryLimits
from dunning.models import (
    ChargeOutcome,
    Customer,
    Decline,
    FailedPayment,
    Frozen,
    PaymentMethod,
)
from dunning.store.records import message_dedupe_key


def idempotency_key(journey_id: str, attempt_number: int) -> str:
    """The business key of one charge attempt: stable across activity retries and worker crashes."""
    return f"{journey_id}:attempt:{attempt_number}"


# --- payments -------------------------------------------------------------------------------------


class CollectionContext(Frozen):
    """What the processor knows that a webhook did not carry (filled in when the journey opens)."""

    payment_methods: tuple[PaymentMethod, ...]
    update_url: str | None = Field(default=None, description="where the customer updates the card")
    customer: Customer | None = Field(default=None, description="contact details, when richer")
    initial_decline: Decline | None = Field(default=None, description="decline fields of the failure")


# The activity that fills it in; ops reads its result back from journey histories by this name.
COLLECTION_CONTEXT_ACTIVITY = "payments.collection_context"


class ChargeRequest(Frozen):
    journey_id: str
    attempt_number: int = Field(ge=1)
    step_id: str | None = Field(default=None, description="the policy step (for reports)")
    payment_reference: str
    payment_kind: Literal["invoice", "payment_intent"]
    payment_method: PaymentMethod
    amount: int
    currency: str
    at: datetime = Field(description="workflow time of the decision; budgets are checked at it")
    limits: RetryLimits

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.journey_id, self.attempt_number)


class ChargeResult(Frozen):
    """`budget_denied`: the store's ledger shows other journeys used this card's network budget."""

    outcome: ChargeOutcome | None = None
    budget_denied: bool = False
    ledger: tuple[CardAttempt, ...] = ()


class ReconcileRequest(Frozen):
    journey_id: str
    attempt_number: int
    payment_reference: str
    payment_kind: Literal["invoice", "payment_intent"]


class EscalationRequest(Frozen):
    journey_id: str
    action: Action
    payment_reference: str
    payment_kind: Literal["invoice", "payment_intent"]
    subscription_id: str | None = None
    customer_id: str
    coupon: str | None = None


class PaymentGateway(Protocol):
    """What the engine needs from a payment processor. Declines are results, never exceptions."""

    name: str

    def collection_context(self, payment: FailedPayment) -> CollectionContext: ...

    def charge(self, request: ChargeRequest) -> ChargeOutcome: ...

    def read_back(self, request: ReconcileRequest) -> ChargeOutcome: ...

    def escalate(self, request: EscalationRequest) -> None: ...


# --- messages -------------------------------------------------------------------------------------


class MessageRequest(Frozen):
    journey_id: str
    step_id: str
    channel: Channel
    template: str
    customer: Customer
    amount: int
    currency: str
    payment_reference: str
    update_url: str | None = None
    next_action_at: datetime | None = None
    next_action: str | None = None
    at: datetime

    @property
    def dedupe_key(self) -> str:
        return message_dedupe_key(self.journey_id, self.step_id, self.channel.value)


MessageOutcome = Literal["sent", "opted_out", "undeliverable"]


class MessageResult(Frozen):
    status: MessageOutcome
    detail: str = ""
    provider_message_id: str | None = None


class RenderedMessage(Frozen):
    subject: str | None = None
    text: str
    html: str | None = None


class MessageSender(Protocol):
    """One channel's provider. Raises on transient faults (retried); returns undeliverable results."""

    channel: Channel
    name: str

    def send(self, request: MessageRequest, message: RenderedMessage) -> MessageResult: ...


# --- store ----------------------------------------------------------------------------------------


class JourneyContextRequest(Frozen):
    journey_id: str
    customer_id: str
    card_keys: tuple[str, ...]
    since: datetime


class JourneyContext(Frozen):
    ledger: tuple[CardAttempt, ...] = ()
    opted_out: tuple[Channel, ...] = ()
