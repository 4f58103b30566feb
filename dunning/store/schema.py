"""ORM tables. The initial Alembic revision creates exactly these (a test compares them)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from dunning.store.records import (
    CARD_ATTEMPT_STATUSES,
    COLLECTION_STATUSES,
    MESSAGE_STATUSES,
    WEBHOOK_STATUSES,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out on every backend.

    SQLite has no time zone type: values are stored as naive UTC text (so ordering and range
    filters compare correctly) and UTC is re-attached on read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store only accepts aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Surrogate keys: BIGINT on servers, INTEGER on SQLite (only INTEGER PRIMARY KEY is the rowid).
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("event_id"),
        CheckConstraint(_in("status", WEBHOOK_STATUSES), name="status"),
        Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String)
    source: Mapped[str] = mapped_column(String)
    type: Mapped[str] = mapped_column(String)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payload: Mapped[dict[str, Any]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class Journey(Base):
    __tablename__ = "journeys"
    __table_args__ = (
        Index(None, "customer_id"),
        Index(None, "stage"),
        Index(None, "updated_at"),
    )

    journey_id: Mapped[str] = mapped_column(String, primary_key=True)
    payment_reference: Mapped[str] = mapped_column(String)
    payment_kind: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[str] = mapped_column(String)
    stage: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    decline_class: Mapped[str | None] = mapped_column(String)
    policy_version: Mapped[str | None] = mapped_column(String)
    segment: Mapped[str | None] = mapped_column(String)
    variant: Mapped[str | None] = mapped_column(String)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_action: Mapped[str | None] = mapped_column(String)
    next_action_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    recovered_amount: Mapped[int] = mapped_column(BigInteger)
    attempts_count: Mapped[int] = mapped_column(Integer)
    messages_count: Mapped[int] = mapped_column(Integer)
    timeline: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    recovered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    recovered_step: Mapped[str | None] = mapped_column(String)
    recovered_via: Mapped[str | None] = mapped_column(String(16))


class CardAttempt(Base):
    __tablename__ = "card_attempts"
    __table_args__ = (
        UniqueConstraint("journey_id", "attempt_number"),
        CheckConstraint(_in("status", CARD_ATTEMPT_STATUSES), name="status"),
        Index(None, "card_key", "at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    journey_id: Mapped[str] = mapped_column(String)
    attempt_number: Mapped[int] = mapped_column(Integer)
    card_key: Mapped[str] = mapped_column(String)
    brand: Mapped[str | None] = mapped_column(String)
    payment_method_id: Mapped[str | None] = mapped_column(String)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    decline_code: Mapped[str | None] = mapped_column(String)
    network_decline_code: Mapped[str | None] = mapped_column(String)
    advice_code: Mapped[str | None] = mapped_column(String)
    network_advice_code: Mapped[str | None] = mapped_column(String)
    decline_class: Mapped[str | None] = mapped_column(String)
    charge_id: Mapped[str | None] = mapped_column(String)
    idempotency_key: Mapped[str | None] = mapped_column(String)
    step_id: Mapped[str | None] = mapped_column(String)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        CheckConstraint(_in("status", MESSAGE_STATUSES), name="status"),
        Index(None, "journey_id"),
        Index(None, "customer_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    dedupe_key: Mapped[str] = mapped_column(String)
    journey_id: Mapped[str] = mapped_column(String)
    customer_id: Mapped[str] = mapped_column(String)
    channel: Mapped[str] = mapped_column(String(16))
    step_id: Mapped[str] = mapped_column(String)
    template: Mapped[str | None] = mapped_column(String)
    locale: Mapped[str | None] = mapped_column(String(35))
    recipient: Mapped[str | None] = mapped_column(String)
    subject: Mapped[str | None] = mapped_column(Text)
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str | None] = mapped_column(String)
    provider_message_id: Mapped[str | None] = mapped_column(String)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ContactPreference(Base):
    __tablename__ = "contact_preferences"
    __table_args__ = (UniqueConstraint("customer_id", "channel"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String)
    channel: Mapped[str] = mapped_column(String(16))
    opted_out: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Policy(Base):
    __tablename__ = "policies"
    __table_args__ = (Index(None, "published_at"),)

    version: Mapped[str] = mapped_column(String, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    sha256: Mapped[str] = mapped_column(String(64))
    yaml_text: Mapped[str] = mapped_column("yaml", Text)
    published_by: Mapped[str] = mapped_column(String)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PolicyActivation(Base):
    """Each row makes a published version the one new journeys start on; the newest wins."""

    __tablename__ = "policy_activations"
    __table_args__ = (Index(None, "activated_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(ForeignKey("policies.version"))
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    activated_by: Mapped[str] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)


class Export(Base):
    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("business_date"),)

    export_id: Mapped[str] = mapped_column(String, primary_key=True)
    business_date: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    files: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    manifest: Mapped[dict[str, Any]] = mapped_column(Json)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    destination: Mapped[str | None] = mapped_column(String)


class Placement(Base):
    __tablename__ = "placements"
    __table_args__ = (
        UniqueConstraint("journey_id"),
        Index(None, "customer_id"),
        Index(None, "export_id"),
        # Collections (revision 0003): recalls by batch, partner-reported outcomes.
        Index(None, "recall_export_id"),
        CheckConstraint(_in("collection_status", COLLECTION_STATUSES), name="collection_status"),
    )

    placement_id: Mapped[str] = mapped_column(String, primary_key=True)
    journey_id: Mapped[str] = mapped_column(String)
    customer_id: Mapped[str] = mapped_column(String)
    contact: Mapped[dict[str, Any]] = mapped_column(Json)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    original_due_date: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_failure_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts_summary: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    messages_summary: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    disputed: Mapped[bool] = mapped_column(Boolean)
    policy_version: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    export_id: Mapped[str | None] = mapped_column(ForeignKey("exports.export_id"))
    recalled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    recall_export_id: Mapped[str | None] = mapped_column(ForeignKey("exports.export_id"))
    # Collections (revision 0003).
    payment_reference: Mapped[str | None] = mapped_column(String)
    recall_source: Mapped[str | None] = mapped_column(String)
    collection_status: Mapped[str | None] = mapped_column(String(16))
    collected_amount: Mapped[int | None] = mapped_column(BigInteger)
    collected_on: Mapped[date | None] = mapped_column(Date)
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index(None, "target"),
        Index(None, "at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String)
    action: Mapped[str] = mapped_column(String)
    target: Mapped[str] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(Json)
