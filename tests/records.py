"""A stored message record for tests that write through the repository directly."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from statemachine.domain import MessageKind, MessageRecord, MessageState, StateChange


def message_record(
    *, state: MessageState = MessageState.PENDING, at: datetime | None = None, **fields: Any
) -> MessageRecord:
    """A TEXT message in `state` (history: one entry into it at `at`); `fields` override the rest."""
    at = at or datetime.now(UTC)
    values: dict[str, Any] = {
        "id": "",
        "instance_id": "I-1",
        "to": "5515981121710",
        "kind": MessageKind.TEXT,
        "state": state,
        "failure_reason": "",
        "failure_detail": "",
        "provider_message_id": None,
        "attempts": 1,
        "idempotency_key": "",
        "request_hash": "h",
        "content": {},
        "created_at": at,
        "updated_at": at,
        "sent_at": None,
        "stuck_at": None,
        "history": [StateChange("", state, "CREATED", "send", at)],
        "version": 1,
    }
    values.update(fields)
    return MessageRecord(**values)
