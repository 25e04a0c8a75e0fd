"""proto ⇄ domain. Nothing else: no rules, no I/O."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from services.api.wapiguard.v1 import common_pb2, send_pb2, webhook_pb2
from services.app.health import HealthView
from services.i18n import reason_text
from statemachine.domain import (
    Contact,
    Content,
    Document,
    InstanceRecord,
    InstanceState,
    Location,
    Media,
    MessageKind,
    MessageRecord,
    MessageState,
    Plan,
    Reaction,
    StateChange,
    Text,
)
from statemachine.errors import InvalidRequest
from statemachine.hold import HoldWish
from statemachine.ports import IngestResult, InstanceChange, MessageChange
from statemachine.providers import ProviderKind
from statemachine.validation import SendRequest, Violation

INSTANCE_STATE_TO_PB = {s: common_pb2.InstanceState.Value(f"INSTANCE_STATE_{s.value}") for s in InstanceState}
INSTANCE_STATE_FROM_PB = {v: k for k, v in INSTANCE_STATE_TO_PB.items()}
MESSAGE_STATE_TO_PB = {s: common_pb2.MessageState.Value(f"MESSAGE_STATE_{s.value}") for s in MessageState}
MESSAGE_STATE_FROM_PB = {v: k for k, v in MESSAGE_STATE_TO_PB.items()}
KIND_TO_PB = {k: common_pb2.MessageKind.Value(f"MESSAGE_KIND_{k.value}") for k in MessageKind}
PLAN_TO_PB = {p: common_pb2.Plan.Value(f"PLAN_{p.value}") for p in Plan}
PLAN_FROM_PB = {v: k for k, v in PLAN_TO_PB.items()}
PROVIDER_TO_PB = {k: common_pb2.Provider.Value(f"PROVIDER_{k.value}") for k in ProviderKind}
PROVIDER_FROM_PB = {v: k for k, v in PROVIDER_TO_PB.items()}
ROUTE_TO_PB = {
    name: webhook_pb2.EventRoute.Value(f"EVENT_ROUTE_{name}")
    for name in (
        "CONNECTION",
        "DISCONNECTION",
        "MESSAGE_STATUS",
        "CHAT_STATUS",
        "DELIVERY",
        "RECEIVED",
        "PRESENCE",
        "UNROUTABLE",
    )
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(value: datetime | None) -> Timestamp | None:
    """Timestamp.FromDatetime in integer arithmetic (the library's is pure Python, ~8 µs a call)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # naive means UTC, as FromDatetime assumes
    delta = value - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000)


def _state_pb(value: str, table: dict[MessageState, Any]) -> Any:
    try:
        return table[MessageState(value)]
    except ValueError:
        return 0


def state_change_pb(change: StateChange) -> common_pb2.MessageStateChange:
    return common_pb2.MessageStateChange(
        from_state=_state_pb(change.from_state, MESSAGE_STATE_TO_PB),
        to_state=_state_pb(change.to_state, MESSAGE_STATE_TO_PB),
        reason=change.reason,
        source=change.source,
        at=ts(change.at),
        applied=change.applied,
    )


def message_pb(msg: MessageRecord) -> common_pb2.Message:
    return common_pb2.Message(
        id=msg.id,
        instance_id=msg.instance_id,
        to=msg.to,
        kind=KIND_TO_PB[msg.kind],
        state=MESSAGE_STATE_TO_PB[msg.state],
        failure_reason=msg.failure_reason,
        provider_message_id=msg.provider_message_id or "",
        attempts=msg.attempts,
        created_at=ts(msg.created_at),
        updated_at=ts(msg.updated_at),
        history=[state_change_pb(c) for c in msg.history],
        idempotency_key="" if msg.idempotency_key.startswith("auto:") else msg.idempotency_key,
        failure_detail=msg.failure_detail,
        stuck=msg.stuck_at is not None and msg.state in (MessageState.SENT, MessageState.QUEUED),
        sent_at=ts(msg.sent_at),
        queue_id=msg.queue_id or "",
        version=msg.version,
    )


def instance_pb(record: InstanceRecord, locale: str, view: HealthView) -> common_pb2.InstanceHealth:
    """`view`: the verdict on the record (`Instances.view`): reason, can_send and next step as shown."""
    return common_pb2.InstanceHealth(
        instance_id=record.instance_id,
        name=record.name,
        state=INSTANCE_STATE_TO_PB[record.state],
        reason=view.reason,
        phone_number=record.phone_number or "",
        checked_at=ts(record.checked_at),
        last_event_at=ts(record.last_event_at),
        stuck_messages=record.stuck_messages,
        plan=PLAN_TO_PB[record.plan],
        state_changed_at=ts(record.state_changed_at),
        can_send=view.can_send,
        reason_message=reason_text(view.reason, locale),
        webhooks_configured=record.webhooks_state == "CONFIGURED",
        webhooks_state=record.webhooks_state,
        webhooks_detail=record.webhooks_detail,
        next_step=view.next_step,
        delivery_confirmable=view.delivery_confirmable,
        webhooks_evidence=view.webhooks,
        last_receipt_at=ts(record.last_receipt_at),
        provider=PROVIDER_TO_PB.get(ProviderKind(record.provider), common_pb2.PROVIDER_WAPI),
    )


class InstanceHealthMemo:
    """The InstanceHealth of each listed instance, rebuilt only when something it shows changed.

    A ListInstances of a thousand instances spent more time building protobuf messages than
    reading them; between two calls most instances are unchanged. Entries of instances no longer
    listed are dropped once the memo holds twice what was listed.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[Any, ...], common_pb2.InstanceHealth]] = {}

    def many(
        self,
        records: Iterable[InstanceRecord],
        locale: str,
        view: Callable[[InstanceRecord, str, datetime], HealthView],
    ) -> list[common_pb2.InstanceHealth]:
        out: list[common_pb2.InstanceHealth] = []
        entries = self._entries
        now = datetime.now(UTC)  # one clock read for the whole list
        for r in records:
            seen = view(r, locale, now)  # time-dependent (the receipt evidence ages): part of what is shown
            shown = (
                r.version,
                r.state,
                r.reason,
                r.name,
                r.phone_number,
                r.plan,
                r.stuck_messages,
                r.checked_at,
                r.last_event_at,
                r.state_changed_at,
                r.webhooks_state,
                r.webhooks_detail,
                r.last_receipt_at,
                seen,
                locale,
            )
            entry = entries.get(r.instance_id)
            if entry is None or entry[0] != shown:
                entry = (shown, instance_pb(r, locale, seen))
                entries[r.instance_id] = entry
            out.append(entry[1])
        if len(entries) > 2 * max(1, len(out)):
            listed = {m.instance_id for m in out}
            self._entries = {k: v for k, v in entries.items() if k in listed}
        return out


def instance_change_pb(instance_id: str, change: StateChange) -> common_pb2.InstanceStateChange:
    from_state = INSTANCE_STATE_TO_PB[InstanceState(change.from_state)] if change.from_state else None
    return common_pb2.InstanceStateChange(
        instance_id=instance_id,
        from_state=from_state,  # type: ignore[arg-type]  # None = unset
        to_state=INSTANCE_STATE_TO_PB[InstanceState(change.to_state)],
        reason=change.reason,
        source=change.source,
        at=ts(change.at),
    )


def _instance_changes(changes: Iterable[InstanceChange]) -> list[common_pb2.InstanceStateChange]:
    return [
        instance_change_pb(
            c.instance.instance_id,
            StateChange(c.decision.from_state, c.decision.to_state, c.decision.reason, c.source, c.at),
        )
        for c in changes
    ]


def _message_changes(changes: Iterable[MessageChange]) -> list[webhook_pb2.MessageTransition]:
    return [webhook_pb2.MessageTransition(message_id=c.message_id, change=state_change_pb(c.change)) for c in changes]


def ingest_pb(result: IngestResult) -> webhook_pb2.IngestEventResponse:
    return webhook_pb2.IngestEventResponse(
        event_id=result.event_id,
        route=ROUTE_TO_PB[result.route.value],
        duplicate=result.duplicate,
        reason=str(result.reason),
        instance_id=result.instance_id or "",
        instance_transitions=_instance_changes(result.instance_changes),
        message_transitions=_message_changes(result.message_changes),
    )


def received_at(request: webhook_pb2.IngestEventRequest) -> datetime | None:
    """The bridge's receive time; None (= now) when absent. Out of range is bad input; a time
    in the future is clamped to now (last_event_at only moves forward)."""
    if not request.HasField("received_at"):
        return None
    try:
        at = request.received_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest([Violation("received_at", "not a valid timestamp")]) from None
    now = datetime.now(UTC)
    return min(at, now)


def _media(pb: send_pb2.MediaContent) -> Media:
    return Media(url=pb.url.strip(), caption=pb.caption, mimetype=pb.mimetype)


def send_request(pb: send_pb2.SendMessageRequest) -> SendRequest:
    which = pb.WhichOneof("content")
    kind: MessageKind | None = None
    content: Content | None = None
    if which == "text":
        kind, content = MessageKind.TEXT, Text(pb.text.body)
    elif which in ("image", "audio", "video", "sticker"):
        kind, content = MessageKind(which.upper()), _media(getattr(pb, which))
    elif which == "document":
        d = pb.document
        kind = MessageKind.DOCUMENT
        content = Document(d.url.strip(), d.file_name, d.caption, d.mimetype, d.extension.lstrip("."))
    elif which == "location":
        loc = pb.location
        kind, content = MessageKind.LOCATION, Location(loc.latitude, loc.longitude, loc.name, loc.address)
    elif which == "contact":
        c = pb.contact
        kind, content = MessageKind.CONTACT, Contact(c.name, c.phone, c.business_description)
    elif which == "reaction":
        r = pb.reaction
        kind, content = MessageKind.REACTION, Reaction(r.emoji, r.target_provider_message_id)
    return SendRequest(
        instance_id=pb.instance_id.strip(),
        to=pb.to,
        idempotency_key=pb.idempotency_key,
        kind=kind,
        content=content,
        reply_to=pb.reply_to_provider_message_id,
        delay_seconds=pb.delay_seconds,
        hold=hold_wish(pb),
    )


def hold_wish(pb: send_pb2.SendMessageRequest) -> HoldWish | None:
    """hold_for / send_at as given (statemachine/hold.py validates them), None when neither is set."""
    if not pb.HasField("hold_for") and not pb.HasField("send_at"):
        return None
    try:
        hold_for = pb.hold_for.ToTimedelta() if pb.HasField("hold_for") else None
    except (OverflowError, ValueError):
        raise InvalidRequest([Violation("hold_for", "not a usable duration")]) from None
    try:
        send_at = pb.send_at.ToDatetime(tzinfo=UTC) if pb.HasField("send_at") else None
    except (OverflowError, ValueError):
        raise InvalidRequest([Violation("send_at", "not a usable time")]) from None
    return HoldWish(hold_for, send_at)
