"""Domain models shared by the policy engine, the workflow, the activities and the simulator.

Everything here is plain pydantic v2 data: no I/O, no clock. Amounts are integers in the
currency's minor unit (cents), times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dunning.enums import Channel


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Decline(Frozen):
    """The decline fields Stripe reports on a failed charge (all optional: issuers omit them)."""

    payment_method: str | None = None
    decline_code: str | None = None
    network_decline_code: str | None = None
    advice_code: str | None = None
    network_advice_code: str | None = None


class PaymentMethod(Frozen):
    id: str
    type: str = "card"  # card | sepa_debit | us_bank_account | bacs_debit | ...
    brand: str | None = None  # visa | mastercard | amex | discover | ...
    funding: str | None = None  # credit | debit | prepaid
    country: str | None = None  # ISO 3166-1 alpha-2 of the issuer
    exp_month: int | None = Field(default=None, ge=1, le=12)
    exp_year: int | None = None
    default: bool = False
    fingerprint: str | None = None  # same physical card across customers/methods
    last_succeeded_at: datetime | None = None


class Customer(Frozen):
    id: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None  # E.164
    country: str | None = None
    timezone: str | None = None  # IANA zone from the customer's profile
    locale: str = "en"
    tags: tuple[str, ...] = ()


PaymentKind = Literal["invoice", "payment_intent"]


class FailedPayment(Frozen):
    """One failed recurring payment: the input of a journey and one line of a scenario file."""

    id: str = Field(description="Stripe invoice id (in_…) or PaymentIntent id (pi_…)")
    kind: PaymentKind | None = None
    amount: int = Field(gt=0, description="minor units")
    currency: str = Field(min_length=3, max_length=3)
    failed_at: datetime
    customer: Customer
    payment_methods: tuple[PaymentMethod, ...] = ()
    initial_decline: Decline = Decline()
    opted_out: tuple[Channel, ...] = ()
    plan: str | None = None
    subscription_id: str | None = None
    due_date: datetime | None = None

    @field_validator("currency")
    @classmethod
    def _lower_currency(cls, value: str) -> str:
        return value.lower()

    @field_validator("failed_at", "due_date")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a UTC offset, e.g. 2026-11-01T10:00:00Z")
        return value

    @model_validator(mode="after")
    def _infer_kind(self) -> FailedPayment:
        if self.kind is None:
            object.__setattr__(
                self, "kind", "payment_intent" if self.id.startswith("pi_") else "invoice"
            )
        return self

    @property
    def journey_id(self) -> str:
        return journey_id_for(self.id)


def journey_id_for(payment_reference: str) -> str:
    return f"dunning-{payment_reference}"


ChargeStatus = Literal["succeeded", "declined", "requires_action", "processing"]


class ChargeOutcome(Frozen):
    """What a gateway said about one attempt. A decline is a result, not an exception."""

    status: ChargeStatus
    decline: Decline | None = None
    charge_id: str | None = None
    payment_intent_id: str | None = None
    message: str | None = None
