"""Change-log rows as versioned `wapiguard.v1.Event` messages: the stream's items and the outbound
webhook body's `data` (proto3 JSON), built once per change for every subscriber."""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2

from services.api.wapiguard.v1 import common_pb2, events_pb2
from services.rpc.mapping import PROVIDER_TO_PB, ts
from statemachine.changes import ChangeKind, ChangeRecord, CursorCodec
from statemachine.domain import InstanceState, MessageState
from statemachine.providers import ProviderKind

TYPE_TO_PB: dict[ChangeKind, int] = {
    ChangeKind.MESSAGE_STATE_CHANGED: events_pb2.EVENT_TYPE_MESSAGE_STATE_CHANGED,
    ChangeKind.MESSAGE_STUCK: events_pb2.EVENT_TYPE_MESSAGE_STUCK,
    ChangeKind.MESSAGE_FAILED: events_pb2.EVENT_TYPE_MESSAGE_FAILED,
    ChangeKind.INSTANCE_HEALTH_CHANGED: events_pb2.EVENT_TYPE_INSTANCE_HEALTH_CHANGED,
    ChangeKind.MESSAGE_RECEIVED: events_pb2.EVENT_TYPE_MESSAGE_RECEIVED,
    ChangeKind.MESSAGE_FROM_PHONE: events_pb2.EVENT_TYPE_MESSAGE_FROM_PHONE,
}
TYPE_FROM_PB: dict[int, ChangeKind] = {v: k for k, v in TYPE_TO_PB.items()}
_MSG_STATE: dict[str, int] = {s.value: common_pb2.MessageState.Value(f"MESSAGE_STATE_{s.value}") for s in MessageState}
_PROVIDER: dict[str, int] = {kind.value: PROVIDER_TO_PB[kind] for kind in ProviderKind}
_INST_STATE: dict[str, int] = {
    s.value: common_pb2.InstanceState.Value(f"INSTANCE_STATE_{s.value}") for s in InstanceState
}


def _at(value: Any) -> Any:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _state_changed(p: dict[str, Any]) -> events_pb2.MessageStateChanged:
    return events_pb2.MessageStateChanged(
        message_id=_str(p.get("message_id")),
        instance_id=_str(p.get("instance_id")),
        recipient=_str(p.get("recipient")),
        from_state=_MSG_STATE.get(_str(p.get("from_state")), 0),  # type: ignore[arg-type]
        to_state=_MSG_STATE.get(_str(p.get("to_state")), 0),  # type: ignore[arg-type]
        reason=_str(p.get("reason")),
        source=_str(p.get("source")),
        provider_message_id=_str(p.get("provider_message_id")),
        attempt=int(p.get("attempt") or 0),
        version=int(p.get("version") or 0),
        at=_at(p.get("at")),
        created_at=_at(p.get("created_at")),
        sent_at=_at(p.get("sent_at")),
    )


def _normalized(out: events_pb2.InboundMessage, msg: dict[str, Any]) -> None:
    """The inbound message as the provider's parser normalized it (stored with the change)."""
    out.provider_message_id = out.provider_message_id or _str(msg.get("provider_message_id"))
    out.chat_id = out.chat_id or _str(msg.get("chat_id"))
    out.sender_id = _str(msg.get("sender_id"))
    out.sender_phone = _str(msg.get("sender_phone"))
    out.push_name = _str(msg.get("push_name"))
    out.kind = _str(msg.get("kind"))
    out.text = _str(msg.get("text"))
    out.is_group = msg.get("is_group") is True
    out.from_me = msg.get("from_me") is True
    out.reference_message_id = _str(msg.get("reference_message_id"))
    out.connected_phone = out.connected_phone or _str(msg.get("connected_phone"))
    for name in ("latitude", "longitude"):
        value = msg.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            setattr(out, name, float(value))
    media = msg.get("media")
    if isinstance(media, dict):
        length = media.get("file_length")
        out.media.CopyFrom(
            events_pb2.MediaReference(
                url=_str(media.get("url")),
                mimetype=_str(media.get("mimetype")),
                file_name=_str(media.get("file_name")),
                file_length=length if isinstance(length, int) and not isinstance(length, bool) and length >= 0 else 0,
                direct_path=_str(media.get("direct_path")),
            )
        )
    moment = _at(msg.get("moment"))
    if moment is not None and not out.HasField("moment"):
        out.moment.CopyFrom(moment)


def _inbound(change: ChangeRecord) -> events_pb2.InboundMessage:
    p = change.payload
    body = p.get("body")
    out = events_pb2.InboundMessage(
        instance_id=change.instance_id,
        provider_message_id=_str(p.get("provider_message_id")),
        chat_id=_str(p.get("chat_id")),
        webhook_event_id=_str(p.get("webhook_event_id")),
        connected_phone=_str(p.get("phone")),
        moment=_at(p.get("moment")),
    )
    if isinstance(body, dict):
        raw = struct_pb2.Struct()
        with contextlib.suppress(ValueError, TypeError):
            raw.update(body)
            out.raw.CopyFrom(raw)
    msg = p.get("message")
    if isinstance(msg, dict):
        _normalized(out, msg)
    if not out.kind:
        out.kind = "unknown"
    return out


class _Encoded:
    """One change as the stream sends it: the Event, and the SubscribeResponse's bytes once a
    stream asked for them."""

    __slots__ = ("event", "wire")

    def __init__(self, event: events_pb2.Event) -> None:
        self.event = event
        self.wire: bytes | None = None


_EVENT_CACHE: OrderedDict[str, _Encoded] = OrderedDict()
_EVENT_CACHE_SIZE = 8192  # above the shared window's default (5000): one encoding per change


def _encoded(change: ChangeRecord, cursors: CursorCodec) -> _Encoded:
    cached = _EVENT_CACHE.get(change.event_id)  # event ids are unique across logs
    if cached is not None:
        return cached
    encoded = _Encoded(_build_event(change, cursors))
    _EVENT_CACHE[change.event_id] = encoded
    if len(_EVENT_CACHE) > _EVENT_CACHE_SIZE:
        _EVENT_CACHE.popitem(last=False)
    return encoded


def event_pb(change: ChangeRecord, cursors: CursorCodec) -> events_pb2.Event:
    """One change-log row as the versioned event; built once per change for all subscribers
    (the tail hands the same change to each of them). Shared: do not modify it."""
    return _encoded(change, cursors).event


def subscribe_response_bytes(change: ChangeRecord, cursors: CursorCodec) -> bytes:
    """The serialized `SubscribeResponse{event}` of a change, encoded once for every stream (the
    Subscribe handler's serializer passes bytes through: services/rpc/decoding.py)."""
    encoded = _encoded(change, cursors)
    if encoded.wire is None:
        encoded.wire = events_pb2.SubscribeResponse(event=encoded.event).SerializeToString()
    return encoded.wire


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_BATCH_TAG = b"\x1a"  # SubscribeResponse.events: field 3, length-delimited


def batch_response_bytes(changes: Sequence[ChangeRecord], cursors: CursorCodec) -> bytes:
    """The serialized `SubscribeResponse{events: EventBatch{events}}` from the once-encoded
    events. `SubscribeResponse{event: e}` and one `EventBatch.events` entry are the same bytes
    (both field 1, the Event length-delimited), and a repeated field is its entries one after
    another (protobuf encoding guide), so a batch is a concatenation: no event is encoded again
    per stream."""
    body = b"".join(subscribe_response_bytes(change, cursors) for change in changes)
    return _BATCH_TAG + _varint(len(body)) + body


def _build_event(change: ChangeRecord, cursors: CursorCodec) -> events_pb2.Event:
    p = change.payload
    event = events_pb2.Event(
        id=change.event_id,
        cursor=cursors.encode(change.cursor),
        type=TYPE_TO_PB.get(change.kind, 0),  # type: ignore[arg-type]
        type_name=change.kind.value,
        instance_id=change.instance_id,
        message_id=change.message_id or "",
        occurred_at=ts(change.occurred_at),
        provider=_PROVIDER.get(change.provider, 0),  # type: ignore[arg-type]
    )
    if change.kind is ChangeKind.MESSAGE_STATE_CHANGED:
        event.message_state_changed.CopyFrom(_state_changed(p))
    elif change.kind is ChangeKind.MESSAGE_FAILED:
        event.message_failed.CopyFrom(
            events_pb2.MessageFailed(
                change=_state_changed(p),
                failure_reason=_str(p.get("failure_reason")),
                failure_detail=_str(p.get("failure_detail")),
            )
        )
    elif change.kind is ChangeKind.MESSAGE_STUCK:
        event.message_stuck.CopyFrom(
            events_pb2.MessageStuck(
                message_id=_str(p.get("message_id")),
                instance_id=_str(p.get("instance_id")),
                recipient=_str(p.get("recipient")),
                provider_message_id=_str(p.get("provider_message_id")),
                attempt=int(p.get("attempt") or 0),
                version=int(p.get("version") or 0),
                sent_at=_at(p.get("sent_at")),
                stuck_at=_at(p.get("stuck_at")),
            )
        )
    elif change.kind is ChangeKind.INSTANCE_HEALTH_CHANGED:
        event.instance_health_changed.CopyFrom(
            events_pb2.InstanceHealthChanged(
                instance_id=_str(p.get("instance_id")),
                from_state=_INST_STATE.get(_str(p.get("from_state")), 0),  # type: ignore[arg-type]
                from_reason=_str(p.get("from_reason")),
                to_state=_INST_STATE.get(_str(p.get("to_state")), 0),  # type: ignore[arg-type]
                reason=_str(p.get("reason")),
                phone=_str(p.get("phone")),
                source=_str(p.get("source")),
                at=_at(p.get("at")),
            )
        )
    elif change.kind is ChangeKind.MESSAGE_RECEIVED:
        event.message_received.CopyFrom(_inbound(change))
    elif change.kind is ChangeKind.MESSAGE_FROM_PHONE:
        event.message_from_phone.CopyFrom(_inbound(change))
    return event


def event_dict(change: ChangeRecord, cursors: CursorCodec) -> dict[str, Any]:
    """The event in proto3 JSON with the .proto field names (the webhook body's `data`)."""
    data: dict[str, Any] = json_format.MessageToDict(event_pb(change, cursors), preserving_proto_field_name=True)
    return data
