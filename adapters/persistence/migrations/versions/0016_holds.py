"""message_holds: the held messages' due time, expiry and reason (statemachine/hold.py)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 00:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = adapters.persistence.schema.UTCDateTime(timezone=True)
    op.create_table(
        "message_holds",
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(80), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("waits_for", sa.String(16), nullable=False),
        sa.Column("due_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.Column("held_at", when, nullable=False),
        sa.Column("needs_release", sa.Boolean(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_message_holds")),
    )
    op.create_index("ix_message_holds_due_at_message_id", "message_holds", ["due_at", "message_id"])
    op.create_index("ix_message_holds_instance_id_reason", "message_holds", ["instance_id", "reason"])


def downgrade() -> None:
    op.drop_table("message_holds")
