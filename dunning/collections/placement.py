"""What a journey hands to the collection partner when its policy ends with `hand_off`.

`placement_request` is pure (the workflow calls it); the activity filters the contact fields
by the partner agreement and stores the placement.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime

from pydantic import Field

from dunning.engine import decline_class
from dunning.journey_state import JourneyState
from dunning.models import Customer, Frozen


class AttemptsSummary(Frozen):
    count: int = Field(ge=0, description="charge attempts, the failure that started the journey included")
    last_decline_class: str | None = None
    last_attempt_at: datetime | None = None


class MessagesSummary(Frozen):
    count_by_channel: dict[str, int] = Field(default_factory=dict, description="messages sent, per channel")
    last_sent_at: datetime | None = None


class PlacementRequest(Frozen):
    journey_id: str
    payment_reference: str
    customer: Customer
    amount: int = Field(gt=0)
    currency: str
    original_due_date: datetime | None = None
    first_failure_at: datetime
    attempts: AttemptsSummary
    messages: MessagesSummary
    disputed: bool
    policy_version: str
    placed_at: datetime = Field(description="workflow time of the hand-off: stable across retries")


class PlacementResult(Frozen):
    placement_id: str
    created: bool = Field(description="False when the journey was already placed (a retry)")


def placement_id_for(journey_id: str) -> str:
    """Deterministic, so every retry of the activity names the same placement."""
    return "plc_" + hashlib.sha256(journey_id.encode("utf-8")).hexdigest()[:20]


def was_disputed(state: JourneyState) -> bool:
    # Disputes pause journeys (Stripe's charge.dispute.* events); the pause reason names them.
    return any(entry.kind == "paused" and "dispute" in entry.text.lower() for entry in state.timeline)


def placement_request(state: JourneyState, at: datetime) -> PlacementRequest:
    payment = state.payment
    attempts = state.attempts
    last_decline_class = decline_class(state)
    sent = [m for m in state.messages if m.status == "sent"]
    return PlacementRequest(
        journey_id=state.journey_id,
        payment_reference=payment.id,
        customer=payment.customer,
        amount=payment.amount,
        currency=payment.currency,
        original_due_date=payment.due_date,
        first_failure_at=payment.failed_at,
        attempts=AttemptsSummary(
            count=len(attempts),
            last_decline_class=last_decline_class.value if last_decline_class else None,
            last_attempt_at=attempts[-1].at if attempts else None,
        ),
        messages=MessagesSummary(
            count_by_channel=dict(sorted(Counter(m.channel.value for m in sent).items())),
            last_sent_at=max((m.at for m in sent), default=None),
        ),
        disputed=was_disputed(state),
        policy_version=state.policy_version,
        placed_at=at,
    )
