"""Collections: payment reference and recall source of placements, partner-reported outcomes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("placements") as batch:
        batch.add_column(sa.Column("payment_reference", sa.String(), nullable=True))
        batch.add_column(sa.Column("recall_source", sa.String(), nullable=True))
        batch.add_column(sa.Column("collection_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("collected_amount", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("collected_on", sa.Date(), nullable=True))
        batch.add_column(sa.Column("reconciled_at", TS, nullable=True))
        batch.create_check_constraint(
            op.f("ck_placements_collection_status"),
            "collection_status IN ('collected', 'partial', 'uncollectible', 'disputed')",
        )
    op.create_index("ix_placements_recall_export_id", "placements", ["recall_export_id"])


def downgrade() -> None:
    op.drop_index("ix_placements_recall_export_id", table_name="placements")
    with op.batch_alter_table("placements") as batch:
        batch.drop_constraint(op.f("ck_placements_collection_status"), type_="check")
        batch.drop_column("reconciled_at")
        batch.drop_column("collected_on")
        batch.drop_column("collected_amount")
        batch.drop_column("collection_status")
        batch.drop_column("recall_source")
        batch.drop_column("payment_reference")
