"""The change log's vocabulary: what is appended with every state change, and how it is read.

Pure values. The store appends `Change`s in the same transaction as the state change they
describe and hands back `ChangeRecord`s in commit-safe order; readers resume from a
`ChangeCursor`, an opaque string to clients. Payload fields per kind are listed in
docs/change-log.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from statemachine.domain import InstanceState, MessageState, StateChange


class ChangeKind(StrEnum):
    MESSAGE_STATE_CHANGED = "message.state_changed"
    MESSAGE_STUCK = "message.stuck"
    MESSAGE_FAILED = "message.failed"
    INSTANCE_HEALTH_CHANGED = "instance.health_changed"
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_FROM_PHONE = "message.from_phone"


class InvalidCursor(ValueError):
    """A cursor string this service did not issue (or one damaged on the way)."""


class ForeignCursor(InvalidCursor):
    """A well-formed cursor of another change log (another or a re-created database)."""


class TamperedCursor(InvalidCursor):
    """A cursor of this log whose signature does not match its position (edited by hand)."""


_CURSOR_PREFIX = "c1."
_MAX_POSITION = (1 << 63) - 1


@dataclass(frozen=True, slots=True, order=True)
class ChangeCursor:
    """A position in the log: every change at or before (xid, seq) has been read.

    `xid` is the writing transaction's id on PostgreSQL (0 on SQLite, where `seq` alone orders);
    `(xid, 0)` stands before every change of transaction `xid`, the "horizon" bookmark.
    """

    xid: int
    seq: int

    def encode(self) -> str:
        raw = f"{self.xid}.{self.seq}".encode()
        return _CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> ChangeCursor:
        if not isinstance(text, str) or not text.startswith(_CURSOR_PREFIX) or len(text) > 64:
            raise InvalidCursor("not a change cursor issued by this service")
        body = text[len(_CURSOR_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
            xid_text, seq_text = raw.split(".")
            if not (xid_text.isdigit() and seq_text.isdigit()):
                raise ValueError(raw)
            xid, seq = int(xid_text), int(seq_text)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise InvalidCursor("not a change cursor issued by this service") from None
        if xid > _MAX_POSITION or seq > _MAX_POSITION:
            raise InvalidCursor("change cursor out of range")
        return cls(xid, seq)


START = ChangeCursor(0, 0)

_SIGNED_PREFIX = "c2."
_LOG_ID_BYTES = 8
_MAC_BYTES = 12  # 96 bits of HMAC-SHA256: guessing a valid cursor is out of reach
_SIGNED_BYTES = _LOG_ID_BYTES + 8 + 8 + _MAC_BYTES


@dataclass(frozen=True, slots=True)
class CursorCodec:
    """Cursors as clients see them: `c2.` + base64url(log id, xid, seq, HMAC-SHA256 truncated).

    The log id (random, stored with the log) says which log a cursor belongs to; the HMAC, keyed
    by a per-log secret stored with it, makes a hand-edited position invalid. `decode` raises
    ForeignCursor for another log's cursor, TamperedCursor for a bad signature, InvalidCursor for
    anything else it did not issue. Cursors of the previous version (`c1.`, unsigned, no log id)
    are still accepted — see docs/events.md — and every cursor handed out is a `c2.` one.
    """

    log_id: bytes
    key: bytes

    @classmethod
    def from_hex(cls, log_id: str, key: str) -> CursorCodec:
        return cls(bytes.fromhex(log_id)[:_LOG_ID_BYTES].rjust(_LOG_ID_BYTES, b"\0"), bytes.fromhex(key))

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, cursor: ChangeCursor) -> str:
        body = self.log_id + cursor.xid.to_bytes(8, "big") + cursor.seq.to_bytes(8, "big")
        return _SIGNED_PREFIX + base64.urlsafe_b64encode(body + self._mac(body)).decode().rstrip("=")

    @staticmethod
    def is_legacy(text: str) -> bool:
        return isinstance(text, str) and text.startswith(_CURSOR_PREFIX)

    def decode(self, text: str) -> ChangeCursor:
        if self.is_legacy(text):
            return ChangeCursor.decode(text)
        if not isinstance(text, str) or not text.startswith(_SIGNED_PREFIX) or len(text) > 64:
            raise InvalidCursor("not a change cursor issued by this service")
        body = text[len(_SIGNED_PREFIX) :]
        try:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        except (ValueError, binascii.Error):
            raise InvalidCursor("not a change cursor issued by this service") from None
        if len(raw) != _SIGNED_BYTES:
            raise InvalidCursor("not a change cursor issued by this service")
        signed, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if signed[:_LOG_ID_BYTES] != self.log_id:
            raise ForeignCursor("a cursor of another change log (another or a re-created database)")
        if not hmac.compare_digest(mac, self._mac(signed)):
            raise TamperedCursor("the cursor's signature does not match its position (altered)")
        xid = int.from_bytes(signed[_LOG_ID_BYTES : _LOG_ID_BYTES + 8], "big")
        seq = int.from_bytes(signed[_LOG_ID_BYTES + 8 :], "big")
        if xid > _MAX_POSITION or seq > _MAX_POSITION:
            raise InvalidCursor("change cursor out of range")
        return ChangeCursor(xid, seq)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry to append: what happened, to whom, when. `payload` holds JSON values and aware
    datetimes (stored as ISO 8601 strings)."""

    kind: ChangeKind
    instance_id: str
    occurred_at: datetime
    payload: Mapping[str, Any]
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One stored entry, as read back."""

    seq: int
    xid: int
    event_id: str
    kind: ChangeKind
    instance_id: str
    message_id: str | None
    occurred_at: datetime
    payload: dict[str, Any]
    # The instance's provider (WAPI, ZAPI, EVOLUTION) as stored with the instance when the entry
    # is read (joined in the same read); empty when the instance is gone.
    provider: str = ""

    @property
    def cursor(self) -> ChangeCursor:
        return ChangeCursor(self.xid, self.seq)


@dataclass(frozen=True, slots=True)
class ChangePage:
    changes: list[ChangeRecord] = field(default_factory=list)
    # Resume from here: past the last change returned, past rows the filters skipped, and up to
    # the horizon when nothing newer is visible yet.
    cursor: ChangeCursor = START


# --- builders: one per kind, used by every write path ------------------------------------------


class MessageFacts(Protocol):
    """What a message entry reports; a MessageRecord has it, so has a fast lane's narrow row."""

    @property
    def id(self) -> str: ...
    @property
    def instance_id(self) -> str: ...
    @property
    def to(self) -> str: ...
    @property
    def provider_message_id(self) -> str | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def sent_at(self) -> datetime | None: ...
    @property
    def failure_reason(self) -> str: ...
    @property
    def failure_detail(self) -> str: ...


def message_changes(msg: MessageFacts, change: StateChange) -> list[Change]:
    """What a message transition appends: exactly one entry, `message.failed` when it ended
    FAILED (with the failure reason), `message.state_changed` otherwise. `msg` is the message as
    written (its new version); a stale status (not applied) appends nothing."""
    if not change.applied or change.from_state == change.to_state:
        return []
    payload: dict[str, Any] = {
        "message_id": msg.id,
        "instance_id": msg.instance_id,
        "recipient": msg.to,
        "from_state": change.from_state or None,
        "to_state": str(change.to_state),
        "reason": str(change.reason),
        "source": change.source,
        "provider_message_id": msg.provider_message_id,
        "attempt": msg.attempts,
        "version": msg.version,
        "at": change.at,
        "created_at": msg.created_at,
        "sent_at": msg.sent_at,
    }
    kind = ChangeKind.MESSAGE_STATE_CHANGED
    if change.to_state == MessageState.FAILED:
        kind = ChangeKind.MESSAGE_FAILED
        payload["failure_reason"] = msg.failure_reason
        payload["failure_detail"] = msg.failure_detail
    return [Change(kind, msg.instance_id, change.at, payload, msg.id)]


def message_stuck(msg: MessageFacts, at: datetime, state: str = MessageState.SENT.value) -> Change:
    """`state`: SENT, or QUEUED for a message that never left W-API's queue."""
    payload = {
        "message_id": msg.id,
        "instance_id": msg.instance_id,
        "recipient": msg.to,
        "state": state,
        "provider_message_id": msg.provider_message_id,
        "attempt": msg.attempts,
        "version": msg.version,
        "sent_at": msg.sent_at,
        "stuck_at": at,
    }
    return Change(ChangeKind.MESSAGE_STUCK, msg.instance_id, at, payload, msg.id)


def instance_health_changed(
    instance_id: str,
    from_state: InstanceState,
    from_reason: str,
    to_state: InstanceState,
    reason: str,
    phone: str | None,
    source: str,
    at: datetime,
) -> Change:
    payload = {
        "instance_id": instance_id,
        "from_state": from_state.value,
        "from_reason": from_reason,
        "to_state": to_state.value,
        "reason": reason,
        "phone": phone,
        "source": source,
        "at": at,
    }
    return Change(ChangeKind.INSTANCE_HEALTH_CHANGED, instance_id, at, payload)


def provider_message(
    kind: ChangeKind,
    instance_id: str,
    *,
    event_id: str,
    provider_message_id: str | None,
    chat_id: str | None,
    phone: str | None,
    moment: datetime | None,
    received_at: datetime,
    body: Any,
    message: dict[str, Any] | None = None,
) -> Change:
    """`message.received` (a customer wrote) or `message.from_phone` (sent from the phone itself,
    not through the API): the raw body plus the ids the parser found, and `message`, the inbound
    message the provider's parser normalized (absent on rows written before it existed)."""
    payload = {
        "instance_id": instance_id,
        "webhook_event_id": event_id,
        "provider_message_id": provider_message_id,
        "chat_id": chat_id,
        "phone": phone,
        "moment": moment,
        "received_at": received_at,
        "body": body,
    }
    if message is not None:
        payload["message"] = message
    # Logged at the time it reached wapi-guard: retention prunes the log by this column, and a
    # sender's clock (W-API's `moment`, often minutes off, sometimes 1970 or 2099) must neither
    # prune a change before subscribers saw it nor keep one forever. The moment is in the payload.
    return Change(kind, instance_id, received_at, payload)
