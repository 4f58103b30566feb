"""Which policy new journeys start on, and where recoveries came from (for reports).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "policy_activations",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("activated_at", TS, nullable=False),
        sa.Column("activated_by", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_policy_activations"),
        sa.ForeignKeyConstraint(
            ["version"], ["policies.version"], name="fk_policy_activations_version_policies"
        ),
    )
    op.create_index("ix_policy_activations_activated_at", "policy_activations", ["activated_at"])
    with op.batch_alter_table("journeys") as batch:
        batch.add_column(sa.Column("recovered_at", TS, nullable=True))
        batch.add_column(sa.Column("recovered_step", sa.String(), nullable=True))
        batch.add_column(sa.Column("recovered_via", sa.String(16), nullable=True))
    with op.batch_alter_table("card_attempts") as batch:
        batch.add_column(sa.Column("step_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("card_attempts") as batch:
        batch.drop_column("step_id")
    with op.batch_alter_table("journeys") as batch:
        batch.drop_column("recovered_via")
        batch.drop_column("recovered_step")
        batch.drop_column("recovered_at")
    op.drop_index("ix_policy_activations_activated_at", table_name="policy_activations")
    op.drop_table("policy_activations")
