"""opt_outs and opt_out_audit: the per-instance suppression list and its audit trail

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 22:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = adapters.persistence.schema.UTCDateTime(timezone=True)
    op.create_table(
        "opt_outs",
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(256), nullable=False, server_default=""),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("instance_id", "recipient", name=op.f("pk_opt_outs")),
    )
    op.create_table(
        "opt_out_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(128), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(256), nullable=False, server_default=""),
        sa.Column("at", utc, nullable=False),
        sa.Column("by", sa.String(128), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opt_out_audit")),
    )
    op.create_index("ix_opt_out_audit_instance_id_recipient", "opt_out_audit", ["instance_id", "recipient"])


def downgrade() -> None:
    op.drop_index("ix_opt_out_audit_instance_id_recipient", table_name="opt_out_audit")
    op.drop_table("opt_out_audit")
    op.drop_table("opt_outs")
