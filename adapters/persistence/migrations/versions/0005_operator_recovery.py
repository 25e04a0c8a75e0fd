"""Operator recovery: webhook configuration state per instance, an audit of recovery actions,
W-API's queue handle on messages, and room for "operator:<caller>" as a transition's source.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from adapters.persistence.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("webhooks_state", sa.String(length=24), server_default="UNCONFIGURED", nullable=False)
        )
        batch_op.add_column(sa.Column("webhooks_detail", sa.Text(), server_default="", nullable=False))
    with op.batch_alter_table("instance_transitions", schema=None) as batch_op:
        batch_op.alter_column(
            "source", existing_type=sa.String(length=24), type_=sa.String(length=96), existing_nullable=False
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue_id", sa.String(length=128), nullable=True))
        batch_op.create_index("ix_messages_queue_id", ["queue_id"], unique=False)
    op.create_table(
        "recovery_actions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("requested_by", sa.String(length=96), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_actions")),
    )
    op.create_index("ix_recovery_actions_instance_id_at", "recovery_actions", ["instance_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_recovery_actions_instance_id_at", table_name="recovery_actions")
    op.drop_table("recovery_actions")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_queue_id")
        batch_op.drop_column("queue_id")
    with op.batch_alter_table("instance_transitions", schema=None) as batch_op:
        batch_op.alter_column(
            "source", existing_type=sa.String(length=96), type_=sa.String(length=24), existing_nullable=False
        )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("webhooks_detail")
        batch_op.drop_column("webhooks_state")
