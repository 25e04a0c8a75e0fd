"""The hot path writes JSON with orjson; what it stores and hashes must stay what the stdlib wrote
(stored request hashes are compared on every idempotent replay, history text is appended in SQL)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.persistence import history
from adapters.persistence.rows import content_json as _content_json
from services.app.content import content_to_dict, request_hash
from statemachine.domain import Location, MessageKind, MessageState, OutboundMessage, Reason, StateChange, Text


def _stdlib_hash(message: OutboundMessage) -> str:
    content = content_to_dict(message)
    blob = json.dumps([message.kind.value, message.to, content], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.parametrize(
    "message",
    [
        OutboundMessage(MessageKind.TEXT, "5515981121710", Text(body="hello"), "", 0),
        OutboundMessage(MessageKind.TEXT, "5515981121710", Text(body="olá, ação ✓ 😀"), "r1", 3),
        OutboundMessage(MessageKind.TEXT, "5515981121710", Text(body='ctl \x00\x1f\x7f \\ " / end'), "", 0),
        OutboundMessage(MessageKind.LOCATION, "5515981121710", Location(-23.5505, -46.6333, "SP", "addr"), "", 0),
        OutboundMessage(MessageKind.LOCATION, "5515981121710", Location(1e-05, 1e16, "", ""), "", 0),
    ],
)
def test_request_hash_is_the_stdlib_hash(message: OutboundMessage) -> None:
    assert request_hash(message) == _stdlib_hash(message)


def test_history_entry_is_the_stdlib_text() -> None:
    at = datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=UTC)
    for reason in (Reason.CREATED, "caf\u00e9", "del\x7f"):
        change = StateChange(MessageState.PENDING, MessageState.SENT, reason, "send", at, True)
        stdlib = json.dumps(
            {
                "from": change.from_state,
                "to": change.to_state,
                "reason": change.reason,
                "source": "send",
                "at": at.isoformat(),
                "applied": True,
            },
            separators=(",", ":"),
        )
        assert history.entry_json(change) == stdlib
        assert history.parse(history.history_json([change]))[0] == change


@pytest.mark.parametrize(
    "content",
    [{"body": "olá 😀", "n": 3}, {"latitude": 1e-05, "longitude": -46.6333}, {"big": 2**70}],
)
def test_stored_content_reads_back_the_same(content: dict[str, Any]) -> None:
    assert json.loads(_content_json(content)) == content
