"""recipient_checks: the provider's number check per recipient, cached with a TTL

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 22:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recipient_checks",
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(128), nullable=False),
        sa.Column("on_whatsapp", sa.Boolean(), nullable=False),
        sa.Column("canonical", sa.String(128), nullable=False, server_default=""),
        sa.Column("lid", sa.String(128), nullable=False, server_default=""),
        sa.Column("checked_at", adapters.persistence.schema.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", "recipient", name=op.f("pk_recipient_checks")),
    )


def downgrade() -> None:
    op.drop_table("recipient_checks")
