"""Tables. Alembic migrations under migrations/ create exactly this schema (a test checks it)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from adapters.persistence.column_types import BigId, Xid, partial_index
from adapters.persistence.column_types import UTCDateTime as UTCDateTime
from adapters.persistence.column_types import metadata as metadata

instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("plan", String(8), nullable=False),
    Column("token", Text, nullable=False),
    Column("state", String(24), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("phone_number", String(32)),
    Column("lid", String(64)),
    Column("checked_at", UTCDateTime()),
    Column("last_event_at", UTCDateTime()),
    Column("state_changed_at", UTCDateTime()),
    # When the latest delivery stall ended (a delivery, a reconnection, an operator's clear): the
    # stuck-run rule counts only messages sent after it.
    Column("stall_ended_at", UTCDateTime()),
    Column("consecutive_gateway_failures", Integer, nullable=False, server_default="0"),
    # Whether W-API's webhook URLs point at this service: UNCONFIGURED, CONFIGURED, FAILED.
    Column("webhooks_state", String(24), nullable=False, server_default="UNCONFIGURED"),
    Column("webhooks_detail", Text, nullable=False, server_default=""),
    # The newest receipt (delivery/read status or server ack) W-API posted for the instance: proof
    # that its webhooks reach this service, whatever was configured (coalesced, never backwards).
    Column("last_receipt_at", UTCDateTime()),
    # Which provider API the instance lives on (WAPI, ZAPI, EVOLUTION), its base URL where it is
    # per instance (Evolution: self-hosted) and Z-API's optional account token (a secret).
    Column("provider", String(16), nullable=False, server_default="WAPI"),
    Column("base_url", String(512), nullable=False, server_default=""),
    Column("client_token", Text, nullable=False, server_default=""),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

instance_transitions = Table(
    "instance_transitions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance_id", String(64), nullable=False),
    Column("from_state", String(24), nullable=False),
    Column("to_state", String(24), nullable=False),
    Column("reason", String(64), nullable=False),
    # Who caused it; an operator's action names the caller ("operator:<token name>").
    Column("source", String(96), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Index(None, "instance_id", "id"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("instance_id", String(64), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("recipient", String(80), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("failure_reason", String(64), nullable=False, server_default=""),
    Column("failure_detail", Text, nullable=False, server_default=""),
    Column("provider_message_id", String(128)),
    Column("attempts", Integer, nullable=False),
    # JSON list of state changes: the row carries its own history (one write per transition).
    Column("history", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Column("stuck_at", UTCDateTime()),
    Column("trace_id", String(32), nullable=False, server_default=""),
    Column("span_id", String(16), nullable=False, server_default=""),
    Column("version", Integer, nullable=False, server_default="1"),
    # W-API's queue handle (insertedId) of a QUEUED message; never a provider message id.
    Column("queue_id", String(128)),
    UniqueConstraint("instance_id", "idempotency_key"),
    Index(None, "provider_message_id"),
    # No index names `state` or `updated_at` (the columns a status changes): status updates stay
    # HOT (heap-only, no index writes) on Postgres. Open work is found through open_messages.
    Index(None, "instance_id", "sent_at"),
    Index(None, "queue_id"),
    Index(None, "instance_id", "created_at"),
    Index(None, "created_at", "id"),
)


# The non-terminal messages (PENDING, SENT), kept by database triggers on `messages` on every
# write path (see migration 0004): the sweeps, stuck counts and stall checks read this narrow
# table, so their cost follows the open work, never the history.
open_messages = Table(
    "open_messages",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("instance_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    # When the message entered its state (the message's updated_at then).
    Column("since", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime()),
    Column("stuck_at", UTCDateTime()),
    Index("ix_open_messages_pending", "since", **partial_index("state = 'PENDING'")),
    Index("ix_open_messages_unstuck", "sent_at", **partial_index("state IN ('SENT', 'QUEUED') AND stuck_at IS NULL")),
    Index(
        "ix_open_messages_stuck",
        "instance_id",
        "created_at",
        **partial_index("state IN ('SENT', 'QUEUED') AND stuck_at IS NOT NULL"),
    ),
)

# Stuck messages per instance, kept by triggers on `open_messages` (migration 0008) in the same
# statement as the row that enters or leaves "stuck": counting them costs one row per instance.
instance_stuck_counts = Table(
    "instance_stuck_counts",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("stuck", BigId, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", String(36), primary_key=True),
    # Re-deliveries share a key: (instance, message, status) for statuses, a body hash otherwise.
    Column("dedupe_key", String(200), nullable=False, unique=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("route", String(24), nullable=False),
    Column("reason", String(96), nullable=False),
    Column("instance_id", String(64)),
    Column("provider_message_id", String(128)),
    Column("status", String(16)),
    # A status for a message not stored (yet): applied when that message turns SENT.
    Column("parked", Boolean, nullable=False, server_default="0"),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False, server_default="{}"),
    Column("duplicates", Integer, nullable=False, server_default="0"),
    # Parked statuses only (a small, short-lived minority): the lookups and the sweep.
    Index("ix_events_parked_provider_message_id", "provider_message_id", **partial_index("parked", "parked = 1")),
    Index("ix_events_parked_received_at", "received_at", **partial_index("parked", "parked = 1")),
    Index(None, "instance_id", "received_at"),
    Index(None, "route", "received_at"),
)

chat_statuses = Table(
    "chat_statuses",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("instance_id", String(64), nullable=False),
    Column("chat_id", String(128)),
    Column("status", String(32)),
    Column("connected_phone", String(32)),
    Column("connected_lid", String(64)),
    Column("moment", UTCDateTime()),
    Column("received_at", UTCDateTime(), nullable=False),
    Index(None, "instance_id", "chat_id", "id"),
)

# Outbound webhooks: who wants which events, and one row per (subscription, event) to deliver.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("url", Text, nullable=False),
    # The signing secret (whsec_…): stored because every attempt is signed with it; never returned
    # except on creation/rotation, never logged.
    Column("secret", Text, nullable=False),
    # JSON lists; [] means every type / every instance.
    Column("event_types", Text, nullable=False, server_default="[]"),
    Column("instance_ids", Text, nullable=False, server_default="[]"),
    Column("owner", String(64), nullable=False, server_default=""),
    Column("description", String(200), nullable=False, server_default=""),
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("disabled_reason", String(32), nullable=False, server_default=""),
    # The change-log position up to which events have been turned into deliveries.
    Column("cursor", String(64), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("failed_attempts", BigInteger, nullable=False, server_default="0"),
    Column("succeeded", BigInteger, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=False, server_default=""),
    Column("last_success_at", UTCDateTime()),
    Column("last_failure_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("version", Integer, nullable=False, server_default="1"),
    # Attempts cut at the webhook timeout; attempts refused (target address or scope) (migration 0009).
    Column("timeouts", BigInteger, nullable=False, server_default="0"),
    Column("refused", BigInteger, nullable=False, server_default="0"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("subscription_id", String(40), nullable=False),
    # The change's event id: the webhook-id header of every attempt and replay.
    Column("event_id", String(64), nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("instance_id", String(64), nullable=False),
    Column("occurred_at", UTCDateTime(), nullable=False),
    # The exact JSON body that is signed and posted (the same bytes on every attempt).
    Column("body", Text, nullable=False),
    # pending | succeeded | exhausted
    Column("state", String(12), nullable=False),
    # Attempts claimed so far; also the claim token (an attempt is recorded only by its claimer).
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Due time; while an attempt is in flight, the end of its lease.
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("last_status_code", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=False, server_default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    UniqueConstraint("subscription_id", "event_id"),
    Index(None, "state", "next_attempt_at"),
    Index(None, "subscription_id", "state", "occurred_at"),
    Index(None, "subscription_id", "id"),
)


# The transactional change log: one row per state change, written in the transaction that made
# the change, read in (xid, seq) order below the oldest running transaction (see changelog.py).
change_log = Table(
    "change_log",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("xid", Xid, nullable=False),
    Column("event_id", String(40), nullable=False, unique=True),
    Column("kind", String(40), nullable=False),
    Column("instance_id", String(64), nullable=False),
    Column("message_id", String(36)),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("payload", Text, nullable=False),
    Index(None, "xid", "seq"),
    Index(None, "occurred_at"),
    # AUTOINCREMENT: SQLite never reuses a seq, even after the newest rows were pruned.
    sqlite_autoincrement=True,
)


# The change log's identity (migration 0009): one row, the log id a cursor names and the key of
# its HMAC, so a cursor of another database or one edited by hand is refused.
change_log_identity = Table(
    "change_log_identity",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("log_id", String(32), nullable=False),
    Column("cursor_key", String(128), nullable=False),
)


# Every operator recovery action (QR, pairing code, restart, disconnect, webhook set-up), who asked
# and how it ended: the audit trail, and what the per-instance rate limit counts.
recovery_actions = Table(
    "recovery_actions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance_id", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("requested_by", String(96), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Index(None, "instance_id", "at"),
)


# --- send policy (statemachine/send_policy.py; adapters/persistence/send_policies.py) ---------

# One row per instance with a policy: the policy (JSON), the warm-up anchor and the rule's counters.
send_policies = Table(
    "send_policies",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("policy", Text, nullable=False),
    Column("warmup_anchor", UTCDateTime(timezone=True), nullable=True),
    Column("updated_at", UTCDateTime(timezone=True), nullable=False),
    Column("updated_by", String(128), nullable=False, server_default=""),
    Column("next_send_at", UTCDateTime(timezone=True), nullable=True),
    Column("minute_start", UTCDateTime(timezone=True), nullable=True),
    Column("minute_count", Integer, nullable=False, server_default="0"),
    Column("hour_start", UTCDateTime(timezone=True), nullable=True),
    Column("hour_new", Integer, nullable=False, server_default="0"),
    Column("day_start", UTCDateTime(timezone=True), nullable=True),
    Column("day_new", Integer, nullable=False, server_default="0"),
    # The phone identity the warm-up ramp was anchored on: a new phone restarts the ramp.
    Column("warmup_phone", String(64), nullable=True),
    # The suppression list the instance shares (None: its own list, keyed by its id).
    Column("optout_list", String(64), nullable=True),
)

# Every change of a policy, append-only: who, when, the policy before and after (JSON).
send_policy_audit = Table(
    "send_policy_audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance_id", String(64), nullable=False),
    Column("at", UTCDateTime(timezone=True), nullable=False),
    Column("by", String(128), nullable=False, server_default=""),
    Column("change", String(32), nullable=False),
    Column("before", Text, nullable=False, server_default=""),
    Column("after", Text, nullable=False, server_default=""),
    Index(None, "instance_id", "id"),
)

# Recipients an instance with a policy has messaged or heard from: a primary-key lookup says "new or not".
policy_recipients = Table(
    "policy_recipients",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("recipient", String(128), primary_key=True),
    Column("first_sent_at", UTCDateTime(timezone=True), nullable=True),
    Column("last_inbound_at", UTCDateTime(timezone=True), nullable=True),
)


# --- opt-outs (statemachine/optout.py; adapters/persistence/optouts.py) ------------------------

# The suppression list: a send to one of these recipients is refused before the provider.
opt_outs = Table(
    "opt_outs",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("recipient", String(128), primary_key=True),
    Column("source", String(16), nullable=False),
    Column("detail", String(256), nullable=False, server_default=""),
    Column("created_at", UTCDateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False, server_default=""),
)

# Every addition and removal, append-only (who, when, why).
opt_out_audit = Table(
    "opt_out_audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance_id", String(64), nullable=False),
    Column("recipient", String(128), nullable=False),
    Column("action", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("detail", String(256), nullable=False, server_default=""),
    Column("at", UTCDateTime(timezone=True), nullable=False),
    Column("by", String(128), nullable=False, server_default=""),
    Index("ix_opt_out_audit_instance_id_recipient", "instance_id", "recipient"),
)


# --- number checks (statemachine/recipients.py; adapters/persistence/recipients.py) ------------

# The provider's answer per recipient, cached with a TTL: the send path reads only this.
recipient_checks = Table(
    "recipient_checks",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("recipient", String(128), primary_key=True),
    Column("on_whatsapp", Boolean, nullable=False),
    Column("canonical", String(128), nullable=False, server_default=""),
    Column("lid", String(128), nullable=False, server_default=""),
    Column("checked_at", UTCDateTime(timezone=True), nullable=False),
    Index(None, "checked_at"),
)


# --- holds (statemachine/hold.py; adapters/persistence/holds.py) -------------------------------

# One row per HELD message, and only while it is held: the dispatcher's due-time index covers
# the held messages alone (never the history), the claim deletes the row in the transaction that
# moves the message HELD → PENDING.
message_holds = Table(
    "message_holds",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("instance_id", String(64), nullable=False),
    Column("recipient", String(80), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("waits_for", String(16), nullable=False),
    Column("due_at", UTCDateTime(timezone=True), nullable=False),
    Column("expires_at", UTCDateTime(timezone=True), nullable=False),
    Column("held_at", UTCDateTime(timezone=True), nullable=False),
    Column("needs_release", Boolean, nullable=False, server_default="0"),
    Index("ix_message_holds_due_at_message_id", "due_at", "message_id"),
    Index("ix_message_holds_instance_id_reason", "instance_id", "reason"),
)
