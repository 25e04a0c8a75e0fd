"""Outbound content ⇄ the JSON stored with each message (so RetryMessage can resend it)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

from statemachine.domain import (
    Contact,
    Content,
    Document,
    Location,
    Media,
    MessageKind,
    MessageRecord,
    MessageState,
    OutboundMessage,
    Reaction,
    StateChange,
    Text,
)
from statemachine.ids import time_ordered_id

_CLASS_BY_KIND: dict[MessageKind, type[Any]] = {
    MessageKind.TEXT: Text,
    MessageKind.IMAGE: Media,
    MessageKind.AUDIO: Media,
    MessageKind.VIDEO: Media,
    MessageKind.STICKER: Media,
    MessageKind.DOCUMENT: Document,
    MessageKind.LOCATION: Location,
    MessageKind.CONTACT: Contact,
    MessageKind.REACTION: Reaction,
}


def content_to_dict(message: OutboundMessage) -> dict[str, Any]:
    content = message.content  # flat dataclasses: a field copy (dataclasses.asdict deep-copies, ~10x slower)
    return {
        "content": {name: getattr(content, name) for name in type(content).__match_args__},
        "reply_to": message.reply_to,
        "delay_seconds": message.delay_seconds,
    }


def outbound_from_stored(kind: MessageKind, to: str, stored: dict[str, Any]) -> OutboundMessage:
    content: Content = _CLASS_BY_KIND[kind](**stored["content"])
    return OutboundMessage(kind, to, content, stored.get("reply_to", ""), stored.get("delay_seconds", 0))


def request_hash(message: OutboundMessage, content: dict[str, Any] | None = None) -> str:
    """Same key + different request must not silently return the first message.

    `content` is `content_to_dict(message)` when the caller has it already.
    """
    content = content_to_dict(message) if content is None else content
    value = [message.kind.value, message.to, content]
    # The hash of the stdlib's text (sort_keys, compact, ASCII escapes): stored hashes stay valid.
    # orjson writes the very same bytes when the text is ASCII without DEL and holds no float
    # (it spells some floats differently, 1e-05 as 0.00001); anything else takes the stdlib.
    blob = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if not blob.isascii() or b"\x7f" in blob or _has_float(content):
        blob = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_float(v) for v in value)
    return False


def new_message(
    instance_id: str,
    outbound: OutboundMessage,
    idempotency_key: str,
    state: MessageState,
    first: StateChange,
    *,
    failure_reason: str = "",
    failure_detail: str = "",
    trace_id: str = "",
    span_id: str = "",
) -> MessageRecord:
    """A request's message as first stored (a send's PENDING or blocked FAILED, a hold's HELD):
    its content, its request hash for the idempotency key, its first state change."""
    content = content_to_dict(outbound)
    return MessageRecord(
        id=time_ordered_id(),
        instance_id=instance_id,
        to=outbound.to,
        kind=outbound.kind,
        state=state,
        failure_reason=failure_reason,
        failure_detail=failure_detail,
        provider_message_id=None,
        attempts=1,
        idempotency_key=idempotency_key,
        request_hash=request_hash(outbound, content),
        content=content,
        created_at=first.at,
        updated_at=first.at,
        sent_at=None,
        stuck_at=None,
        history=[first],
        version=1,
        trace_id=trace_id,
        span_id=span_id,
    )
