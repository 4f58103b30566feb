"""What the engine knows about a journey: its state, the records it keeps, and the card ledger's
entries. Pydantic validates and serializes all of them (workflow payloads, the API, the store).

Kept out of the modules mypyc compiles (Makefile, COMPILED): pydantic cannot build models and
validated dataclasses from compiled classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from dunning.declines import DeclineClass
from dunning.enums import Channel, Stage
from dunning.models import Decline, FailedPayment, PaymentMethod
from dunning.policy import Step

MAX_SEEN_EVENTS = 200

AttemptStatus = Literal["succeeded", "declined", "requires_action", "processing", "error"]
MessageStatus = Literal["sent", "skipped", "undeliverable", "opted_out"]


# The records below are made many times per journey (the simulator makes millions): plain slotted
# dataclasses cost a fraction of a validated model, and half of a frozen dataclass. Nothing changes
# a record once made (`dataclasses.replace` makes a new one). Pydantic still validates and
# serializes them inside JourneyState and the API models. The engine makes the small ones (a
# message, a timeline entry, a ledger entry) positionally: keywords cost it twice as much.
_STRICT = ConfigDict(extra="forbid")


@dataclass(slots=True, kw_only=True)
class AttemptRecord:
    __pydantic_config__ = _STRICT

    number: Annotated[int, Field(description="0 is the failure that started the journey")]
    at: datetime
    payment_method_id: str
    card_key: str
    brand: str | None = None
    step_id: str
    status: AttemptStatus
    decline: Decline | None = None
    decline_class: DeclineClass | None = None
    charge_id: str | None = None
    reason: str = ""


@dataclass(slots=True)
class MessageRecord:
    __pydantic_config__ = _STRICT

    step_id: str
    channel: Channel
    at: datetime
    status: MessageStatus
    detail: str = ""


@dataclass(slots=True)
class TimelineEntry:
    __pydantic_config__ = _STRICT

    at: datetime
    kind: str
    text: str


class JourneyState(BaseModel):
    """Everything the engine knows about one journey. Mutated only by the `apply_*` functions."""

    journey_id: str
    payment: FailedPayment
    policy_version: str
    segment: str
    variant: str | None = None
    ladder: tuple[Step, ...]
    stage: Stage = Stage.retrying
    payment_methods: list[PaymentMethod]
    attempts: list[AttemptRecord] = []
    ledger: list[CardAttempt] = []
    messages: list[MessageRecord] = []
    steps_done: dict[str, str] = {}
    recovery_steps_done: dict[str, str] = {}
    stopped_methods: dict[str, str] = {}
    unavailable_channels: dict[Channel, str] = {}
    paused_since: datetime | None = None
    paused_total: timedelta = timedelta(0)
    prompt_retry_reason: str | None = None
    prompt_retry_requested_at: datetime | None = None
    awaiting_reconcile: int | None = None
    recovered_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    access_restricted: bool = False
    timeline: list[TimelineEntry] = []
    seen_events: list[str] = []
    _own_card_attempts: tuple[list[AttemptRecord], list[CardAttempt]] | None = PrivateAttr(None)

    @property
    def finished(self) -> bool:
        return self.ended_at is not None

    def seen(self, event_id: str | None) -> bool:
        """Remember an event id; True when it was already applied (signals are not de-duplicated)."""
        if event_id is None:
            return False
        if event_id in self.seen_events:
            return True
        self.seen_events = [*self.seen_events[-(MAX_SEEN_EVENTS - 1):], event_id]
        return False


@dataclass(slots=True)  # made for every attempt a budget counts: half the cost of a frozen one
class CardAttempt:
    """One charge attempt on a card, from this journey or another one (the store's ledger)."""

    at: datetime
    card_key: str
    brand: str | None
    amount: int
    currency: str
    journey_id: str
    payment_method_id: str
    decline: Decline | None  # None = succeeded or outcome unknown
