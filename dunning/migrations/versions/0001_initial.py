"""Initial schema: inbox, journeys projection, card ledger, messages, preferences, policies,
placements/exports and the audit log.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types at the time of this revision (not imported from the app).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _id() -> sa.Column[int]:
    return sa.Column("id", ID, primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        _id(),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("received_at", TS, nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        sa.UniqueConstraint("event_id", name="uq_webhook_events_event_id"),
        sa.CheckConstraint(
            "status IN ('received', 'processed', 'ignored', 'failed')",
            name="ck_webhook_events_status",
        ),
    )
    op.create_index("ix_webhook_events_status", "webhook_events", ["status"])

    op.create_table(
        "journeys",
        sa.Column("journey_id", sa.String(), nullable=False),
        sa.Column("payment_reference", sa.String(), nullable=False),
        sa.Column("payment_kind", sa.String(16), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("decline_class", sa.String(), nullable=True),
        sa.Column("policy_version", sa.String(), nullable=True),
        sa.Column("segment", sa.String(), nullable=True),
        sa.Column("variant", sa.String(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("next_action", sa.String(), nullable=True),
        sa.Column("next_action_at", TS, nullable=True),
        sa.Column("recovered_amount", sa.BigInteger(), nullable=False),
        sa.Column("attempts_count", sa.Integer(), nullable=False),
        sa.Column("messages_count", sa.Integer(), nullable=False),
        sa.Column("timeline", JSON, nullable=False),
        sa.PrimaryKeyConstraint("journey_id", name="pk_journeys"),
    )
    op.create_index("ix_journeys_customer_id", "journeys", ["customer_id"])
    op.create_index("ix_journeys_stage", "journeys", ["stage"])
    op.create_index("ix_journeys_updated_at", "journeys", ["updated_at"])

    op.create_table(
        "card_attempts",
        _id(),
        sa.Column("journey_id", sa.String(), nullable=False),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("card_key", sa.String(), nullable=False),
        sa.Column("brand", sa.String(), nullable=True),
        sa.Column("payment_method_id", sa.String(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decline_code", sa.String(), nullable=True),
        sa.Column("network_decline_code", sa.String(), nullable=True),
        sa.Column("advice_code", sa.String(), nullable=True),
        sa.Column("network_advice_code", sa.String(), nullable=True),
        sa.Column("decline_class", sa.String(), nullable=True),
        sa.Column("charge_id", sa.String(), nullable=True),
        sa.Column("idempotency_key", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_card_attempts"),
        sa.UniqueConstraint(
            "journey_id", "attempt_number", name="uq_card_attempts_journey_id_attempt_number"
        ),
        sa.CheckConstraint(
            "status IN ('reserved', 'succeeded', 'declined', 'requires_action', "
            "'processing', 'error')",
            name="ck_card_attempts_status",
        ),
    )
    op.create_index("ix_card_attempts_card_key_at", "card_attempts", ["card_key", "at"])

    op.create_table(
        "messages",
        _id(),
        sa.Column("dedupe_key", sa.String(), nullable=False),
        sa.Column("journey_id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("step_id", sa.String(), nullable=False),
        sa.Column("template", sa.String(), nullable=True),
        sa.Column("locale", sa.String(35), nullable=True),
        sa.Column("recipient", sa.String(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("body_text", sa.Text(), nullable=True),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("provider_message_id", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("dedupe_key", name="uq_messages_dedupe_key"),
        sa.CheckConstraint(
            "status IN ('claimed', 'sent', 'skipped', 'undeliverable', 'failed')",
            name="ck_messages_status",
        ),
    )
    op.create_index("ix_messages_journey_id", "messages", ["journey_id"])
    op.create_index(
        "ix_messages_customer_id_created_at", "messages", ["customer_id", "created_at"]
    )

    op.create_table(
        "contact_preferences",
        _id(),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_contact_preferences"),
        sa.UniqueConstraint(
            "customer_id", "channel", name="uq_contact_preferences_customer_id_channel"
        ),
    )

    op.create_table(
        "policies",
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("published_by", sa.String(), nullable=False),
        sa.Column("published_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_policies"),
    )
    op.create_index("ix_policies_published_at", "policies", ["published_at"])

    op.create_table(
        "exports",
        sa.Column("export_id", sa.String(), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("files", JSON, nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("destination", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("export_id", name="pk_exports"),
        sa.UniqueConstraint("business_date", name="uq_exports_business_date"),
    )

    op.create_table(
        "placements",
        sa.Column("placement_id", sa.String(), nullable=False),
        sa.Column("journey_id", sa.String(), nullable=False),
        sa.Column("customer_id", sa.String(), nullable=False),
        sa.Column("contact", JSON, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("original_due_date", TS, nullable=True),
        sa.Column("first_failure_at", TS, nullable=False),
        sa.Column("attempts_summary", JSON, nullable=False),
        sa.Column("messages_summary", JSON, nullable=False),
        sa.Column("disputed", sa.Boolean(), nullable=False),
        sa.Column("policy_version", sa.String(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("export_id", sa.String(), nullable=True),
        sa.Column("recalled_at", TS, nullable=True),
        sa.Column("recall_export_id", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("placement_id", name="pk_placements"),
        sa.UniqueConstraint("journey_id", name="uq_placements_journey_id"),
        sa.ForeignKeyConstraint(
            ["export_id"], ["exports.export_id"], name="fk_placements_export_id_exports"
        ),
        sa.ForeignKeyConstraint(
            ["recall_export_id"],
            ["exports.export_id"],
            name="fk_placements_recall_export_id_exports",
        ),
    )
    op.create_index("ix_placements_customer_id", "placements", ["customer_id"])
    op.create_index("ix_placements_export_id", "placements", ["export_id"])

    op.create_table(
        "audit_log",
        _id(),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_target", "audit_log", ["target"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    for table in (
        "audit_log",
        "placements",
        "exports",
        "policies",
        "contact_preferences",
        "messages",
        "card_attempts",
        "journeys",
        "webhook_events",
    ):
        op.drop_table(table)
