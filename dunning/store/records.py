"""Plain records the store returns and accepts.

They are pydantic models (not ORM objects) so they can leave a session, cross Temporal's
pydantic data converter and be serialised by the API without lazy-loading surprises.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from dunning.enums import Stage
from dunning.models import PaymentKind

WebhookStatus = Literal["received", "processed", "ignored", "failed"]
CardAttemptStatus = Literal[
    "reserved", "succeeded", "declined", "requires_action", "processing", "error"
]
MessageStatus = Literal["claimed", "sent", "skipped", "undeliverable", "failed"]

WEBHOOK_STATUSES: tuple[str, ...] = get_args(WebhookStatus)
CARD_ATTEMPT_STATUSES: tuple[str, ...] = get_args(CardAttemptStatus)
MESSAGE_STATUSES: tuple[str, ...] = get_args(MessageStatus)
# What the collection partner reports per placement (`dunning collections import`).
CollectionStatus = Literal["collected", "partial", "uncollectible", "disputed"]
COLLECTION_STATUSES: tuple[str, ...] = get_args(CollectionStatus)


def message_dedupe_key(journey_id: str, step_id: str, channel: str) -> str:
    """One message per journey step and channel, whatever the number of retries."""
    return f"{journey_id}:{step_id}:{channel}"


class Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, extra="forbid")


class PolicyRecord(Record):
    version: str
    name: str
    sha256: str
    yaml_text: str
    published_by: str
    published_at: AwareDatetime


class CardAttemptRecord(Record):
    id: int | None = None
    journey_id: str
    attempt_number: int = Field(ge=0)  # 0 = the failed charge that opened the journey
    card_key: str
    brand: str | None = None
    payment_method_id: str | None = None
    amount: int = Field(ge=0)
    currency: str
    at: AwareDatetime
    status: CardAttemptStatus = "reserved"
    decline_code: str | None = None
    network_decline_code: str | None = None
    advice_code: str | None = None
    network_advice_code: str | None = None
    decline_class: str | None = None
    charge_id: str | None = None
    idempotency_key: str | None = None
    step_id: str | None = None



class MessageRecord(Record):
    id: int | None = None
    dedupe_key: str
    journey_id: str
    customer_id: str
    channel: str
    step_id: str
    template: str | None = None
    locale: str | None = None
    recipient: str | None = None
    subject: str | None = None
    body_text: str | None = None
    body_html: str | None = None
    status: MessageStatus = "claimed"
    provider: str | None = None
    provider_message_id: str | None = None
    error: str | None = None
    created_at: AwareDatetime | None = None  # the store stamps it on claim when omitted
    sent_at: AwareDatetime | None = None


    @model_validator(mode="before")
    @classmethod
    def _default_dedupe_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("dedupe_key"):
            parts = (data.get("journey_id"), data.get("step_id"), data.get("channel"))
            if all(isinstance(part, str) for part in parts):
                data = {**data, "dedupe_key": message_dedupe_key(*parts)}  # type: ignore[arg-type]
        return data


class JourneyRecord(Record):
    journey_id: str
    payment_reference: str
    payment_kind: PaymentKind
    customer_id: str
    stage: Stage
    amount: int = Field(ge=0)
    currency: str
    decline_class: str | None = None
    policy_version: str | None = None
    segment: str | None = None
    variant: str | None = None
    started_at: AwareDatetime
    updated_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    next_action: str | None = None
    next_action_at: AwareDatetime | None = None
    recovered_amount: int = Field(default=0, ge=0)
    attempts_count: int = Field(default=0, ge=0)
    messages_count: int = Field(default=0, ge=0)
    timeline: list[dict[str, Any]] = Field(default_factory=list)
    recovered_at: AwareDatetime | None = None
    recovered_step: str | None = Field(default=None, description="the retry step that recovered it")
    recovered_via: Literal["retry", "out_of_band"] | None = None


class PolicyActivationRecord(Record):
    id: int
    version: str
    activated_at: AwareDatetime
    activated_by: str
    reason: str | None = None


class AuditRecord(Record):
    id: int
    at: AwareDatetime
    actor: str
    action: str
    target: str
    reason: str | None = None
    details: dict[str, Any] | None = None


# --- collections: placements for the collection partner, export batches ------------------------


class PlacementRecord(Record):
    placement_id: str
    journey_id: str
    payment_reference: str | None = None
    customer_id: str
    contact: dict[str, str | None] = Field(description="only the fields the partner agreement allows")
    amount: int = Field(gt=0)
    currency: str
    original_due_date: AwareDatetime | None = None
    first_failure_at: AwareDatetime
    attempts_summary: dict[str, Any]
    messages_summary: dict[str, Any]
    disputed: bool
    policy_version: str | None = None
    created_at: AwareDatetime = Field(description="when the journey handed off (workflow time)")
    export_id: str | None = None
    recalled_at: AwareDatetime | None = None
    recall_export_id: str | None = None
    recall_source: str | None = None
    collection_status: CollectionStatus | None = None
    collected_amount: int | None = Field(default=None, ge=0)
    collected_on: date | None = None
    reconciled_at: AwareDatetime | None = None


class ExportRecord(Record):
    export_id: str
    business_date: date
    created_at: AwareDatetime
    files: list[dict[str, Any]]
    manifest: dict[str, Any]
    delivered_at: AwareDatetime | None = None
    destination: str | None = None


class ReconciliationUpdate(Record):
    """One partner-reported outcome; `collected_amount` is the total to date, so re-imports are idempotent."""

    placement_id: str
    collected_amount: int = Field(ge=0)
    currency: str
    collected_on: date
    status: CollectionStatus
