"""Helpers shared by the provider webhook dialects (Z-API, Evolution): keys, ids, moments."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Final

from statemachine.domain import MessageState

ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_MESSAGE_ID: Final = 128  # events.provider_message_id
MAX_DEDUPE_KEY: Final = 200  # events.dedupe_key
MAX_STATUS: Final = 32


def digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def body_key(body: Any) -> str:
    """The canonical JSON's digest: the same event re-posted (keys in another order) is one event."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def status_key(provider: str, instance_id: str, message_id: str, status: MessageState) -> str:
    """One key per (instance, message, status): a re-delivered status is applied once."""
    key = f"status:{provider}:{instance_id}:{message_id}:{status}"
    if len(key) > MAX_DEDUPE_KEY:
        key = "status:sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def instance_id(value: Any) -> str | None:
    return value if isinstance(value, str) and ID_RE.fullmatch(value) else None


def message_id(value: Any) -> str | None:
    if isinstance(value, str) and value.strip() and len(value) <= MAX_MESSAGE_ID:
        return value.strip()
    return None


def text(value: Any, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def moment(value: Any) -> datetime | None:
    """Epoch seconds or milliseconds → an aware datetime (None when absent or absurd)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(value / 1000 if value > 1e12 else value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def load(raw: bytes) -> tuple[Any, str | None]:
    """The parsed body, or (None, reason) when it is not JSON."""
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError):
        return None, "MALFORMED_JSON"


def json_object(raw: bytes | dict[str, Any]) -> dict[str, Any] | None:
    """A body as a JSON object (parsed when given as bytes); None when it is not one."""
    body: Any = raw
    if not isinstance(raw, dict):
        body, problem = load(raw)
        if problem is not None:
            return None
    return body if isinstance(body, dict) else None


def as_dict(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}
