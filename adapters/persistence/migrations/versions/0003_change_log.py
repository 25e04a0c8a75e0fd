"""The transactional change log (table change_log) and its PostgreSQL wake-up trigger.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# A statement-level trigger: every statement that appends to the log, on every write path,
# wakes LISTENers when its transaction commits (PostgreSQL folds repeats within one transaction
# into one). Only when rows were added: a NOTIFY makes the commit take the notification queue's
# lock, so a fast-lane statement that appended nothing must not pay for it.
NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION wapiguard_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM added) THEN
    PERFORM pg_notify('wapiguard_changes', '');
  END IF;
  RETURN NULL;
END $$
"""
NOTIFY_TRIGGER = """
CREATE TRIGGER change_log_notify AFTER INSERT ON change_log
REFERENCING NEW TABLE AS added
FOR EACH STATEMENT EXECUTE FUNCTION wapiguard_notify_changes()
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "change_log",
        # PostgreSQL: bigint identity; SQLite: INTEGER PRIMARY KEY AUTOINCREMENT.
        sa.Column("seq", sa.BigInteger(), sa.Identity(), nullable=False)
        if postgres
        else sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "xid",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_change_log")),
        sa.UniqueConstraint("event_id", name=op.f("uq_change_log_event_id")),
        sqlite_autoincrement=True,
    )
    if postgres:
        op.execute("ALTER TABLE change_log ALTER COLUMN xid DROP DEFAULT")
        op.execute("ALTER TABLE change_log ALTER COLUMN xid TYPE xid8 USING xid::text::xid8")
        op.execute("ALTER TABLE change_log ALTER COLUMN xid SET DEFAULT pg_current_xact_id()")
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)
    with op.batch_alter_table("change_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_change_log_xid_seq"), ["xid", "seq"], unique=False)
        batch_op.create_index(batch_op.f("ix_change_log_occurred_at"), ["occurred_at"], unique=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS change_log_notify ON change_log")
        op.execute("DROP FUNCTION IF EXISTS wapiguard_notify_changes()")
    with op.batch_alter_table("change_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_change_log_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_change_log_xid_seq"))
    op.drop_table("change_log")
