"""Provider events as the core sees them, whatever shape the provider posted."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from statemachine.domain import MessageState


class Route(StrEnum):
    CONNECTION = "CONNECTION"
    DISCONNECTION = "DISCONNECTION"
    MESSAGE_STATUS = "MESSAGE_STATUS"
    CHAT_STATUS = "CHAT_STATUS"
    DELIVERY = "DELIVERY"
    RECEIVED = "RECEIVED"
    PRESENCE = "PRESENCE"
    UNROUTABLE = "UNROUTABLE"


class EventReason(StrEnum):
    MALFORMED_JSON = "MALFORMED_JSON"
    NOT_AN_OBJECT = "NOT_AN_OBJECT"
    UNKNOWN_EVENT = "UNKNOWN_EVENT"
    NO_EVENT_KEY = "NO_EVENT_KEY"
    MISSING_INSTANCE_ID = "MISSING_INSTANCE_ID"
    MISSING_MESSAGE_ID = "MISSING_MESSAGE_ID"
    UNKNOWN_STATUS = "UNKNOWN_STATUS"
    UNKNOWN_INSTANCE = "UNKNOWN_INSTANCE"
    UNKNOWN_MESSAGE = "UNKNOWN_MESSAGE"
    STALE_STATUS = "STALE_STATUS"
    APPLIED = "APPLIED"
    RECORDED = "RECORDED"
    CHAT_TELEMETRY = "CHAT_TELEMETRY"


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """One webhook body, parsed. Flat on purpose: each route reads the fields it needs."""

    route: Route
    reason: str
    dedupe_key: str
    instance_id: str | None = None
    provider_message_id: str | None = None
    status: MessageState | None = None
    raw_status: str | None = None
    connected: bool | None = None
    phone: str | None = None
    lid: str | None = None
    chat_id: str | None = None
    moment: datetime | None = None
    from_api: bool = False
    # A failure status's normalized reason and the provider's own words (Z-API's send webhook
    # `error`, Evolution's ERROR): what FAILED stores instead of a bare PROVIDER_ERROR.
    failure_reason: str = ""
    failure_detail: str = ""
    # An inbound message (a customer's, or one sent from the phone), normalized once by the
    # provider's parser into the feed's one shape (JSON-ready: kind, text, sender, media, ...):
    # stored with the change, so nothing past the adapters reads a provider's body.
    inbound: dict[str, Any] | None = field(default=None, compare=False)
