"""A database shaped like production history, filled by SQL in the repository's own row formats.

A month at full size: 1,000 CONNECTED instances, 2,000,000 messages over 30 days (88 % DELIVERED
or READ, 5 % FAILED, 5 % SENT that never got a receipt and were marked stuck, 2 % SENT in the
last minutes, not stuck yet) and one stored status webhook of ~410 bytes per message. Generated
server-side with `generate_series` (no rows travel over the socket), in chunks so no single
transaction grows large. The benchmark and the query-plan test use it at smaller sizes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import asyncpg

# The benchmarks' PostgreSQL (bench/__main__.py, bench/volume.py, bench/guard.py read it from here).
PG_URL = os.environ.get("WAPIGUARD_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/wapi_guard_bench")


@dataclass(frozen=True, slots=True)
class Size:
    instances: int
    messages: int
    events: int
    days: int = 30
    # Statuses parked long ago for messages this service never sent (typed on the phone).
    parked: int = 0

    @property
    def label(self) -> str:
        return f"{self.instances} instances, {self.messages:,} messages, {self.events:,} events, {self.days} days"


MONTH = Size(instances=1_000, messages=2_000_000, events=2_000_000, parked=20_000)
QUICK = Size(instances=1_000, messages=200_000, events=200_000, parked=2_000)
SIZES = {"month": MONTH, "quick": QUICK}

CHUNK = 250_000

# Message number g (1-based) → instance (g / 100) % instances (independent of the state) and
# bucket g % 100: 0-87 DELIVERED/READ, 88-92 FAILED, 93-97 stuck SENT, 98-99 SENT within the last
# 10 minutes. Older numbers are older messages.
_MESSAGES = """
INSERT INTO messages (id, instance_id, idempotency_key, request_hash, recipient, kind, content, state,
                      failure_reason, failure_detail, provider_message_id, attempts, history,
                      created_at, updated_at, sent_at, stuck_at, trace_id, span_id, version)
SELECT md5('m' || g)::uuid::text, inst, 'seed-' || g, md5('h' || g), '55119' || lpad((g % 99999999)::text, 8, '0'),
       'TEXT', '{"body":"Olá! Seu pedido ' || g || ' foi confirmado e sai para entrega amanhã."}',
       state, CASE WHEN state = 'FAILED' THEN 'PROVIDER_ERROR' ELSE '' END,
       CASE WHEN state = 'FAILED' THEN 'provider reported status failed' ELSE '' END,
       pid, 1,
       '[{"from":"PENDING","to":"SENT","reason":"PROVIDER_ACCEPTED","source":"send","at":"' || iso(created) ||
       '","applied":true}' ||
       CASE WHEN state IN ('DELIVERED', 'READ', 'FAILED') THEN
         ',{"from":"SENT","to":"' || CASE WHEN state = 'FAILED' THEN 'FAILED' ELSE 'DELIVERED' END ||
         '","reason":"WEBHOOK_STATUS","source":"webhook","at":"' || iso(created + interval '3 seconds') ||
         '","applied":true}' ELSE '' END ||
       CASE WHEN state = 'READ' THEN
         ',{"from":"DELIVERED","to":"READ","reason":"WEBHOOK_STATUS","source":"webhook","at":"' ||
         iso(created + interval '40 seconds') || '","applied":true}' ELSE '' END || ']',
       created,
       CASE WHEN state IN ('DELIVERED', 'READ', 'FAILED') THEN created + interval '40 seconds' ELSE created END,
       created,
       CASE WHEN bucket BETWEEN 93 AND 97 THEN created + interval '5 minutes' END,
       md5('t' || g), left(md5('s' || g), 16),
       CASE WHEN state = 'READ' THEN 4 WHEN state = 'SENT' THEN 2 ELSE 3 END
FROM (
  SELECT g, bucket, 'BENCH-' || lpad(((g / 100) % $3)::text, 4, '0') AS inst,
         '3EB0' || upper(left(md5('p' || g), 16)) AS pid,
         CASE WHEN bucket < 88 THEN (CASE WHEN g % 2 = 0 THEN 'DELIVERED' ELSE 'READ' END)
              WHEN bucket < 93 THEN 'FAILED' ELSE 'SENT' END AS state,
         CASE WHEN bucket >= 98 THEN now() - (g % 600) * interval '1 second'
              ELSE now() - $4 * interval '1 day' * (1 - g::float8 / $5) - interval '15 minutes' END AS created
  FROM (SELECT g, g % 100 AS bucket FROM generate_series($1::bigint, $2::bigint) AS g) AS numbered
) AS rows
"""

# One status webhook per message, spread over its messages: DELIVERED for even numbers, READ for odd.
_EVENTS = """
INSERT INTO events (id, dedupe_key, received_at, route, reason, instance_id, provider_message_id, status,
                    parked, payload, headers, duplicates)
SELECT md5('e' || g)::uuid::text, 'status:' || inst || ':' || pid || ':' || status, at, 'MESSAGE_STATUS',
       'APPLIED', inst, pid, status, false,
       convert_to('{"event":"webhookStatus","instanceId":"' || inst || '","messageId":"' || pid ||
         '","status":"' || lower(status) || '","chat":{"id":"' || '55119' || lpad((m % 99999999)::text, 8, '0') ||
         '@s.whatsapp.net"},"fromMe":true,"fromApi":true,"moment":' || extract(epoch FROM at)::bigint ||
         ',"connectedPhone":"5511900000000","isGroup":false,"messageType":"conversation",' ||
         '"sender":{"id":"5511900000000@s.whatsapp.net","pushName":"Loja"},"chatName":"Cliente da Loja",' ||
         '"isNewsletter":false,"ackTimestamp":' ||
         extract(epoch FROM at)::bigint || ',"broadcast":false}', 'UTF8'),
       '{"content-type":"application/json","user-agent":"W-API webhook"}', 0
FROM (
  SELECT g, m, 'BENCH-' || lpad(((m / 100) % $3)::text, 4, '0') AS inst,
         '3EB0' || upper(left(md5('p' || m), 16)) AS pid,
         CASE WHEN g % 2 = 0 THEN 'DELIVERED' ELSE 'READ' END AS status,
         now() - $4 * interval '1 day' * (1 - m::float8 / $5) - interval '14 minutes' AS at
  FROM (SELECT g, 1 + (g * 7919) % $5 AS m FROM generate_series($1::bigint, $2::bigint) AS g) AS numbered
) AS rows
"""

# Old parked statuses: their messages were never sent through this service.
_PARKED = """
INSERT INTO events (id, dedupe_key, received_at, route, reason, instance_id, provider_message_id, status,
                    parked, payload, headers, duplicates)
SELECT md5('x' || g)::uuid::text, 'status:BENCH-0000:PHONE' || g || ':DELIVERED',
       now() - interval '2 hours' - g * interval '1 minute', 'MESSAGE_STATUS', 'UNKNOWN_MESSAGE', 'BENCH-0000',
       'PHONE' || g, 'DELIVERED', true, convert_to('{"event":"webhookStatus"}', 'UTF8'), '{}', 0
FROM generate_series(1, $1::bigint) AS g
"""

_INSTANCES = """
INSERT INTO instances (id, name, plan, token, state, reason, phone_number, checked_at, last_event_at,
                       state_changed_at, consecutive_gateway_failures, version, created_at, updated_at)
SELECT 'BENCH-' || lpad(i::text, 4, '0'), 'Loja ' || i, 'PRO', 'seed-token-' || i, 'CONNECTED', 'PHONE_CONFIRMED',
       '55119' || lpad(i::text, 8, '0'), now(), now(), now() - interval '31 days', 0, 2,
       now() - interval '31 days', now()
FROM generate_series(0, $1::int - 1) AS i
ON CONFLICT (id) DO NOTHING
"""

# Connection changes (one per 20 messages) over the period.
_TRANSITIONS = """
INSERT INTO instance_transitions (instance_id, from_state, to_state, reason, source, at)
SELECT 'BENCH-' || lpad((g % $1)::text, 4, '0'), CASE WHEN g % 2 = 0 THEN 'CONNECTED' ELSE 'DISCONNECTED' END,
       CASE WHEN g % 2 = 0 THEN 'DISCONNECTED' ELSE 'CONNECTED' END,
       CASE WHEN g % 2 = 0 THEN 'INSTANCE_DISCONNECTED' ELSE 'PHONE_CONFIRMED' END, 'webhook',
       now() - $2 * interval '1 day' * (1 - g::float8 / $3)
FROM generate_series(1, $3::bigint) AS g
"""

# Chat-status bodies (one per 20 messages): the event-less {instanceId, chat, status, moment} kind.
_CHAT_STATUSES = """
INSERT INTO chat_statuses (event_id, instance_id, chat_id, status, connected_phone, connected_lid, moment, received_at)
SELECT md5('c' || g)::uuid::text, 'BENCH-' || lpad((g % $1)::text, 4, '0'),
       '55119' || lpad((g % 99999999)::text, 8, '0') || '@s.whatsapp.net', 'composing', '5511900000000', NULL,
       now() - $2 * interval '1 day' * (1 - g::float8 / $3), now() - $2 * interval '1 day' * (1 - g::float8 / $3)
FROM generate_series(1, $3::bigint) AS g
"""

_ISO = """
CREATE OR REPLACE FUNCTION pg_temp.iso(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') $$
"""


def status_body(instance_id: str, message_id: str, status: str, moment: int) -> bytes:
    """A W-API message-status webhook shaped like the seeded ones (~410 bytes).

    The benchmark posts these rather than a minimal body: rows much smaller than the seeded ones
    would fit the free tails VACUUM recorded on every old page of a bulk-loaded table, so each new
    row would land on a different old page (a full-page image per row after a checkpoint) — a
    state of a freshly bulk-loaded database, not of one that grew by the service's own writes.
    """
    body = {
        "event": "webhookStatus",
        "instanceId": instance_id,
        "messageId": message_id,
        "status": status,
        "chat": {"id": "5511912345678@s.whatsapp.net"},
        "fromMe": True,
        "fromApi": True,
        "moment": moment,
        "connectedPhone": "5511900000000",
        "isGroup": False,
        "messageType": "conversation",
        "sender": {"id": "5511900000000@s.whatsapp.net", "pushName": "Loja"},
        "chatName": "Cliente da Loja",
        "isNewsletter": False,
        "ackTimestamp": moment,
        "broadcast": False,
    }
    return json.dumps(body, separators=(",", ":")).encode()


# The text of a seeded message (and of the benchmark's sends): the same row size.
MESSAGE_TEXT = "Olá! Seu pedido 1234567 foi confirmado e sai para entrega amanhã."


async def seed(dsn: str, size: Size, *, progress: bool = False) -> float:
    """Fills an empty, migrated database; returns the seconds it took (VACUUM ANALYZE included)."""
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        await conn.execute(_ISO)
        await conn.execute(_INSTANCES, size.instances)
        messages_sql = _MESSAGES.replace("iso(", "pg_temp.iso(")
        # Seeded messages are written at their final size (history included). The service's rows
        # are written small and grow into the page's fillfactor reserve with each status, so its
        # old pages end up about full; seeding at fillfactor 80 would instead leave every old page
        # with a fifth free, where new rows would then be scattered one per page.
        reloptions = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'messages'")
        await conn.execute("ALTER TABLE messages SET (fillfactor = 100)")
        for start in range(1, size.messages + 1, CHUNK):
            end = min(size.messages, start + CHUNK - 1)
            await conn.execute(messages_sql, start, end, size.instances, size.days, size.messages)
            if progress:
                print(f"  messages {end:,}/{size.messages:,} ({time.perf_counter() - started:.0f} s)", flush=True)
        if reloptions and "fillfactor=80" in reloptions:
            await conn.execute("ALTER TABLE messages SET (fillfactor = 80)")
        else:
            await conn.execute("ALTER TABLE messages RESET (fillfactor)")
        for start in range(1, size.events + 1, CHUNK):
            end = min(size.events, start + CHUNK - 1)
            await conn.execute(_EVENTS, start, end, size.instances, size.days, size.messages)
            if progress:
                print(f"  events {end:,}/{size.events:,} ({time.perf_counter() - started:.0f} s)", flush=True)
        await conn.execute(_TRANSITIONS, size.instances, size.days, max(1, size.messages // 20))
        await conn.execute(_CHAT_STATUSES, size.instances, size.days, max(1, size.messages // 20))
        if size.parked:
            await conn.execute(_PARKED, size.parked)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


def asyncpg_dsn(url: str) -> str:
    """The SQLAlchemy URL as a plain libpq DSN for asyncpg."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
