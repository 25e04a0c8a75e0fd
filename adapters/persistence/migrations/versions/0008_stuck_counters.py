"""Stuck messages counted per instance, kept by triggers on `open_messages`.

ListInstances, the gauges and every sweep asked "how many messages of each instance are stuck in
SENT?" by aggregating the stuck rows of `open_messages`: a cost that grows with every message
that never got a receipt (they stay open). `instance_stuck_counts` holds the answer, changed in
the same statement and transaction as the row that enters or leaves "stuck" — so only the sweep
that marks messages stuck and the rare late receipt of a stuck message touch it, never an
ordinary status update. Filled here from the existing rows.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_OLD_STUCK = "(OLD.stuck_at IS NOT NULL AND OLD.state IN ('SENT', 'QUEUED'))"
_NEW_STUCK = "(NEW.stuck_at IS NOT NULL AND NEW.state IN ('SENT', 'QUEUED'))"

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION wapiguard_count_stuck() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' AND (OLD.stuck_at IS NOT NULL AND OLD.state IN ('SENT', 'QUEUED')) THEN
    UPDATE instance_stuck_counts SET stuck = stuck - 1 WHERE instance_id = OLD.instance_id;
  END IF;
  IF TG_OP <> 'DELETE' AND (NEW.stuck_at IS NOT NULL AND NEW.state IN ('SENT', 'QUEUED')) THEN
    INSERT INTO instance_stuck_counts (instance_id, stuck) VALUES (NEW.instance_id, 1)
    ON CONFLICT (instance_id) DO UPDATE SET stuck = instance_stuck_counts.stuck + 1;
  END IF;
  RETURN NULL;
END
$$
"""

PG_TRIGGERS = (
    f"""CREATE TRIGGER trg_open_messages_stuck_insert AFTER INSERT ON open_messages FOR EACH ROW
    WHEN {_NEW_STUCK} EXECUTE FUNCTION wapiguard_count_stuck()""",
    f"""CREATE TRIGGER trg_open_messages_stuck_update AFTER UPDATE ON open_messages FOR EACH ROW
    WHEN ({_OLD_STUCK} IS DISTINCT FROM {_NEW_STUCK}) EXECUTE FUNCTION wapiguard_count_stuck()""",
    f"""CREATE TRIGGER trg_open_messages_stuck_delete AFTER DELETE ON open_messages FOR EACH ROW
    WHEN {_OLD_STUCK} EXECUTE FUNCTION wapiguard_count_stuck()""",
)

_SQLITE_UP = """INSERT INTO instance_stuck_counts (instance_id, stuck) VALUES (NEW.instance_id, 1)
    ON CONFLICT (instance_id) DO UPDATE SET stuck = stuck + 1;"""
_SQLITE_DOWN = "UPDATE instance_stuck_counts SET stuck = stuck - 1 WHERE instance_id = OLD.instance_id;"

SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER trg_open_messages_stuck_insert AFTER INSERT ON open_messages
    WHEN {_NEW_STUCK} BEGIN {_SQLITE_UP} END""",
    f"""CREATE TRIGGER trg_open_messages_stuck_enter AFTER UPDATE ON open_messages
    WHEN {_NEW_STUCK} AND NOT {_OLD_STUCK} BEGIN {_SQLITE_UP} END""",
    f"""CREATE TRIGGER trg_open_messages_stuck_leave AFTER UPDATE ON open_messages
    WHEN {_OLD_STUCK} AND NOT {_NEW_STUCK} BEGIN {_SQLITE_DOWN} END""",
    f"""CREATE TRIGGER trg_open_messages_stuck_delete AFTER DELETE ON open_messages
    WHEN {_OLD_STUCK} BEGIN {_SQLITE_DOWN} END""",
)

PG_TRIGGER_NAMES = (
    "trg_open_messages_stuck_insert",
    "trg_open_messages_stuck_update",
    "trg_open_messages_stuck_delete",
)
SQLITE_TRIGGER_NAMES = (
    "trg_open_messages_stuck_insert",
    "trg_open_messages_stuck_enter",
    "trg_open_messages_stuck_leave",
    "trg_open_messages_stuck_delete",
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "instance_stuck_counts",
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("stuck", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", name=op.f("pk_instance_stuck_counts")),
    )
    if dialect == "postgresql":
        # Triggers first, then the fill, in one transaction: no row entering or leaving "stuck"
        # meanwhile is missed or counted twice (the table lock orders concurrent writers).
        op.execute("LOCK TABLE open_messages IN SHARE ROW EXCLUSIVE MODE")
        op.execute(PG_FUNCTION)
        for trigger in PG_TRIGGERS:
            op.execute(trigger)
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)
    op.execute(
        """INSERT INTO instance_stuck_counts (instance_id, stuck)
        SELECT instance_id, count(*) FROM open_messages
        WHERE stuck_at IS NOT NULL AND state IN ('SENT', 'QUEUED') GROUP BY instance_id"""
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in PG_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON open_messages")
        op.execute("DROP FUNCTION IF EXISTS wapiguard_count_stuck()")
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("instance_stuck_counts")
