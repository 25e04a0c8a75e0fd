"""The change log's identity: a random log id and the key that signs its cursors.

A cursor names the log it belongs to and carries an HMAC made with this key (see
statemachine/changes.py: CursorCodec), so a cursor of another database, or one edited by hand, is
refused instead of silently reading nothing. One row, written here once; a database created
afresh gets new values, so its cursors and another database's never mix.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 21:20:00
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "change_log_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("log_id", sa.String(length=32), nullable=False),
        sa.Column("cursor_key", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_log_identity")),
    )
    op.bulk_insert(table, [{"id": 1, "log_id": secrets.token_hex(8), "cursor_key": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("change_log_identity")
