"""instances.last_receipt_at: the newest receipt W-API posted (webhooks evidently wired)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 21:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("last_receipt_at", adapters.persistence.schema.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("last_receipt_at")
