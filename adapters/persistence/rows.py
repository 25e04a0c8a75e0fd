"""Row mapping, written once: messages and instances to and from their rows, the page token,
and the states spelled as SQL literals where a partial index must apply."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Row, and_, literal_column
from sqlalchemy.sql.elements import ColumnClause

from adapters.persistence import changelog, history
from adapters.persistence.schema import (
    instances,
    open_messages,
)
from statemachine import changes as change_log
from statemachine import stuck as stuck_rule
from statemachine.domain import (
    InstanceRecord,
    InstanceState,
    MessageKind,
    MessageRecord,
    MessageState,
    Plan,
)
from statemachine.message_machine import (
    DELIVERED_OR_LATER,
)

# States spelled as SQL literals where a partial index must apply: with a bound parameter a
# prepared statement's generic plan cannot prove the index predicate and scans instead.
PENDING: ColumnClause[str] = literal_column("'PENDING'")
# The states the stuck rule applies to (statemachine/stuck.py), as literals.
HANDED_OVER: list[ColumnClause[str]] = [literal_column(f"'{s.value}'") for s in stuck_rule.HANDED_OVER]
STUCK = and_(open_messages.c.state.in_(HANDED_OVER), open_messages.c.stuck_at.is_not(None))
UNSTUCK = and_(open_messages.c.state.in_(HANDED_OVER), open_messages.c.stuck_at.is_(None))
DELIVERY_STATUSES: list[ColumnClause[str]] = [literal_column(f"'{s.value}'") for s in sorted(DELIVERED_OR_LATER)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def message_from_row(row: Row[Any]) -> MessageRecord:
    m = row._mapping
    return MessageRecord(
        id=m["id"],
        instance_id=m["instance_id"],
        to=m["recipient"],
        kind=MessageKind(m["kind"]),
        state=MessageState(m["state"]),
        failure_reason=m["failure_reason"],
        failure_detail=m["failure_detail"],
        provider_message_id=m["provider_message_id"],
        attempts=m["attempts"],
        idempotency_key=m["idempotency_key"],
        request_hash=m["request_hash"],
        content=json.loads(m["content"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        sent_at=m["sent_at"],
        stuck_at=m["stuck_at"],
        history=history.parse(m["history"]),
        version=m["version"],
        trace_id=m["trace_id"],
        span_id=m["span_id"],
        queue_id=m.get("queue_id"),
    )


def message_values(msg: MessageRecord) -> dict[str, Any]:
    return {
        "id": msg.id,
        "instance_id": msg.instance_id,
        "idempotency_key": msg.idempotency_key,
        "request_hash": msg.request_hash,
        "recipient": msg.to,
        "kind": msg.kind.value,
        "content": content_json(msg.content),
        "state": msg.state.value,
        "failure_reason": msg.failure_reason,
        "failure_detail": msg.failure_detail,
        "provider_message_id": msg.provider_message_id,
        "attempts": msg.attempts,
        "history": history.history_json(msg.history),
        "created_at": msg.created_at,
        "updated_at": msg.updated_at,
        "sent_at": msg.sent_at,
        "stuck_at": msg.stuck_at,
        "trace_id": msg.trace_id,
        "span_id": msg.span_id,
        "version": msg.version,
        "queue_id": msg.queue_id,
    }


def content_json(content: dict[str, Any]) -> str:
    """The stored content: orjson (a tenth of the stdlib's cost per send); what it refuses or
    spells differently from the stdlib (a float: 1e-05 as 0.00001) takes the stdlib. Either
    text reads back as the same values."""
    try:
        return orjson.dumps(content).decode()
    except orjson.JSONEncodeError:
        return json.dumps(content, separators=(",", ":"), ensure_ascii=False)


def message_log_rows(before: MessageRecord | None, after: MessageRecord) -> list[dict[str, Any]]:
    """Change-log rows for the history entries `after` gained over `before` (all of them for a
    new message): the log and the row's history say the same thing."""
    start = len(before.history) if before is not None else 0
    return [
        changelog.change_row(entry)
        for change in after.history[start:]
        for entry in change_log.message_changes(after, change)
    ]


def instance_from_row(row: Row[Any] | Any) -> InstanceRecord:
    m = row._mapping
    return InstanceRecord(
        instance_id=m["id"],
        name=m["name"],
        plan=Plan(m["plan"]),
        state=InstanceState(m["state"]),
        reason=m["reason"],
        phone_number=m["phone_number"],
        checked_at=m["checked_at"],
        last_event_at=m["last_event_at"],
        state_changed_at=m["state_changed_at"],
        version=m["version"],
        consecutive_gateway_failures=m["consecutive_gateway_failures"],
        webhooks_state=m["webhooks_state"],
        webhooks_detail=m["webhooks_detail"],
        last_receipt_at=m["last_receipt_at"],
        provider=m.get("provider") or "WAPI",
    )


INSTANCE_COLUMNS = [c for c in instances.c if c.name not in ("token", "stall_ended_at", "client_token")]


def encode_page_token(created_at: datetime, message_id: str) -> str:
    raw = f"{created_at.isoformat()}|{message_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not a token we issued."""
    raw = base64.urlsafe_b64decode(token.encode()).decode()
    at, _, message_id = raw.partition("|")
    if not message_id:
        raise ValueError("bad page token")
    parsed = datetime.fromisoformat(at)
    if parsed.tzinfo is None or len(message_id) > 64 or not (message_id.isascii() and message_id.isprintable()):
        raise ValueError("bad page token")
    return parsed, message_id
