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
    OutboundMessage,
    Reaction,
    Text,
)

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
