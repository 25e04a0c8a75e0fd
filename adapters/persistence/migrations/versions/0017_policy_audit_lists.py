"""send_policy_audit, send_policies.warmup_phone/optout_list, recipient_checks(checked_at) index

The policy's audit trail (who changed it, when, before/after), the phone identity the warm-up ramp
was anchored on (a new phone restarts it), the shared suppression list an instance names, and the
index the replicas' refresh of known-absent recipients reads by.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 00:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = adapters.persistence.schema.UTCDateTime(timezone=True)
    with op.batch_alter_table("send_policies") as batch:
        batch.add_column(sa.Column("warmup_phone", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("optout_list", sa.String(length=64), nullable=True))
    op.create_table(
        "send_policy_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("at", utc, nullable=False),
        sa.Column("by", sa.String(128), nullable=False, server_default=""),
        sa.Column("change", sa.String(32), nullable=False),
        sa.Column("before", sa.Text(), nullable=False, server_default=""),
        sa.Column("after", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_send_policy_audit")),
    )
    op.create_index("ix_send_policy_audit_instance_id_id", "send_policy_audit", ["instance_id", "id"])
    op.create_index("ix_recipient_checks_checked_at", "recipient_checks", ["checked_at"])


def downgrade() -> None:
    op.drop_index("ix_recipient_checks_checked_at", table_name="recipient_checks")
    op.drop_index("ix_send_policy_audit_instance_id_id", table_name="send_policy_audit")
    op.drop_table("send_policy_audit")
    with op.batch_alter_table("send_policies") as batch:
        batch.drop_column("optout_list")
        batch.drop_column("warmup_phone")
