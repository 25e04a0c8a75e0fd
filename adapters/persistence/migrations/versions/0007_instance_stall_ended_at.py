"""instances.stall_ended_at: when the latest delivery stall ended

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 02:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("stall_ended_at", adapters.persistence.schema.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("stall_ended_at")
