"""Open work in its own narrow table; indexes that follow open work, not history.

- `open_messages`: the PENDING, SENT and QUEUED messages, kept by triggers on `messages` (insert, update
  of state / sent_at / stuck_at, delete), so every write path maintains it in its own statement
  and transaction. Filled here from the existing rows.
- `messages`: the `(state, sent_at)` index goes (every status changed it, so no update was HOT
  on Postgres and each one wrote to every index); `(instance_id, sent_at)` serves the stall check.
  Postgres: fillfactor 80 leaves room on each page for HOT updates.
- `events`: the parked lookups use partial indexes over parked rows only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:55:00
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

import adapters.persistence.schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


PG_FUNCTION = """
CREATE OR REPLACE FUNCTION wapiguard_track_open_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'DELETE' AND NEW.state IN ('PENDING', 'SENT', 'QUEUED') THEN
    INSERT INTO open_messages (message_id, instance_id, state, since, created_at, sent_at, stuck_at)
    VALUES (NEW.id, NEW.instance_id, NEW.state, NEW.updated_at, NEW.created_at, NEW.sent_at, NEW.stuck_at)
    ON CONFLICT (message_id) DO UPDATE
      SET state = EXCLUDED.state, since = EXCLUDED.since, sent_at = EXCLUDED.sent_at, stuck_at = EXCLUDED.stuck_at;
  ELSIF TG_OP <> 'INSERT' THEN
    DELETE FROM open_messages WHERE message_id = OLD.id;
  END IF;
  RETURN NULL;
END
$$
"""

PG_TRIGGERS = (
    """CREATE TRIGGER trg_messages_open_insert AFTER INSERT ON messages FOR EACH ROW
    WHEN (NEW.state IN ('PENDING', 'SENT', 'QUEUED')) EXECUTE FUNCTION wapiguard_track_open_message()""",
    """CREATE TRIGGER trg_messages_open_update AFTER UPDATE ON messages FOR EACH ROW
    WHEN ((OLD.state IN ('PENDING', 'SENT', 'QUEUED') OR NEW.state IN ('PENDING', 'SENT', 'QUEUED'))
          AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.sent_at IS DISTINCT FROM NEW.sent_at
               OR OLD.stuck_at IS DISTINCT FROM NEW.stuck_at))
    EXECUTE FUNCTION wapiguard_track_open_message()""",
    """CREATE TRIGGER trg_messages_open_delete AFTER DELETE ON messages FOR EACH ROW
    WHEN (OLD.state IN ('PENDING', 'SENT', 'QUEUED')) EXECUTE FUNCTION wapiguard_track_open_message()""",
)

_SQLITE_UPSERT = """INSERT INTO open_messages (message_id, instance_id, state, since, created_at, sent_at, stuck_at)
    VALUES (NEW.id, NEW.instance_id, NEW.state, NEW.updated_at, NEW.created_at, NEW.sent_at, NEW.stuck_at)
    ON CONFLICT (message_id) DO UPDATE SET state = excluded.state, since = excluded.since,
      sent_at = excluded.sent_at, stuck_at = excluded.stuck_at;"""

SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER trg_messages_open_insert AFTER INSERT ON messages
    WHEN NEW.state IN ('PENDING', 'SENT', 'QUEUED') BEGIN {_SQLITE_UPSERT} END""",
    f"""CREATE TRIGGER trg_messages_open_update AFTER UPDATE ON messages
    WHEN NEW.state IN ('PENDING', 'SENT', 'QUEUED') AND (OLD.state IS NOT NEW.state OR OLD.sent_at IS NOT NEW.sent_at
                                          OR OLD.stuck_at IS NOT NEW.stuck_at)
    BEGIN {_SQLITE_UPSERT} END""",
    """CREATE TRIGGER trg_messages_open_close AFTER UPDATE ON messages
    WHEN OLD.state IN ('PENDING', 'SENT', 'QUEUED') AND NEW.state NOT IN ('PENDING', 'SENT', 'QUEUED')
    BEGIN DELETE FROM open_messages WHERE message_id = OLD.id; END""",
    """CREATE TRIGGER trg_messages_open_delete AFTER DELETE ON messages
    WHEN OLD.state IN ('PENDING', 'SENT', 'QUEUED')
    BEGIN DELETE FROM open_messages WHERE message_id = OLD.id; END""",
)

TRIGGER_NAMES = (
    "trg_messages_open_insert",
    "trg_messages_open_update",
    "trg_messages_open_close",
    "trg_messages_open_delete",
)


def _where(predicate: str, sqlite_predicate: str | None = None) -> dict[str, Any]:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(sqlite_predicate or predicate)}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "open_messages",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("since", adapters.persistence.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", adapters.persistence.schema.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", adapters.persistence.schema.UTCDateTime(timezone=True), nullable=True),
        sa.Column("stuck_at", adapters.persistence.schema.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_open_messages")),
    )
    op.create_index("ix_open_messages_pending", "open_messages", ["since"], **_where("state = 'PENDING'"))
    op.create_index(
        "ix_open_messages_unstuck",
        "open_messages",
        ["sent_at"],
        **_where("state IN ('SENT', 'QUEUED') AND stuck_at IS NULL"),
    )
    op.create_index(
        "ix_open_messages_stuck",
        "open_messages",
        ["instance_id", "created_at"],
        **_where("state IN ('SENT', 'QUEUED') AND stuck_at IS NOT NULL"),
    )
    op.execute(
        """INSERT INTO open_messages (message_id, instance_id, state, since, created_at, sent_at, stuck_at)
        SELECT id, instance_id, state, updated_at, created_at, sent_at, stuck_at FROM messages
        WHERE state IN ('PENDING', 'SENT', 'QUEUED')"""
    )
    if dialect == "postgresql":
        op.execute(PG_FUNCTION)
        for trigger in PG_TRIGGERS:
            op.execute(trigger)
        op.execute("ALTER TABLE messages SET (fillfactor = 80)")
    else:
        for trigger in SQLITE_TRIGGERS:
            op.execute(trigger)

    op.drop_index("ix_messages_state_sent_at", table_name="messages")
    op.create_index("ix_messages_instance_id_sent_at", "messages", ["instance_id", "sent_at"])
    op.drop_index("ix_events_provider_message_id_parked", table_name="events")
    op.create_index(
        "ix_events_parked_provider_message_id", "events", ["provider_message_id"], **_where("parked", "parked = 1")
    )
    op.create_index("ix_events_parked_received_at", "events", ["received_at"], **_where("parked", "parked = 1"))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_index("ix_events_parked_received_at", table_name="events")
    op.drop_index("ix_events_parked_provider_message_id", table_name="events")
    op.create_index("ix_events_provider_message_id_parked", "events", ["provider_message_id", "parked"])
    op.drop_index("ix_messages_instance_id_sent_at", table_name="messages")
    op.create_index("ix_messages_state_sent_at", "messages", ["state", "sent_at"])
    if dialect == "postgresql":
        for name in ("trg_messages_open_insert", "trg_messages_open_update", "trg_messages_open_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON messages")
        op.execute("DROP FUNCTION IF EXISTS wapiguard_track_open_message()")
        op.execute("ALTER TABLE messages RESET (fillfactor)")
    else:
        for name in TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("open_messages")
