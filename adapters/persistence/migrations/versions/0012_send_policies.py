"""send_policies and policy_recipients: the per-instance send policy and its counters

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 22:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = adapters.persistence.schema.UTCDateTime(timezone=True)
    op.create_table(
        "send_policies",
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("policy", sa.Text(), nullable=False),
        sa.Column("warmup_anchor", utc, nullable=True),
        sa.Column("updated_at", utc, nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=False, server_default=""),
        sa.Column("next_send_at", utc, nullable=True),
        sa.Column("minute_start", utc, nullable=True),
        sa.Column("minute_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("hour_start", utc, nullable=True),
        sa.Column("hour_new", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("day_start", utc, nullable=True),
        sa.Column("day_new", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_send_policies")),
    )
    op.create_table(
        "policy_recipients",
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(128), nullable=False),
        sa.Column("first_sent_at", utc, nullable=True),
        sa.Column("last_inbound_at", utc, nullable=True),
        sa.PrimaryKeyConstraint("instance_id", "recipient", name=op.f("pk_policy_recipients")),
    )


def downgrade() -> None:
    op.drop_table("policy_recipients")
    op.drop_table("send_policies")
