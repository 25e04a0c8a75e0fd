"""Domain vocabulary shared by the rules, the adapters and the gRPC mapping."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class InstanceState(StrEnum):
    UNKNOWN = "UNKNOWN"
    CONNECTED = "CONNECTED"
    SESSION_INCOMPLETE = "SESSION_INCOMPLETE"
    DEGRADED = "DEGRADED"
    DISCONNECTED = "DISCONNECTED"


class MessageState(StrEnum):
    PENDING = "PENDING"
    # W-API took it into its send queue (an `insertedId`), no message id yet: not sent.
    QUEUED = "QUEUED"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    READ = "READ"
    PLAYED = "PLAYED"
    FAILED = "FAILED"
    # Blocked for now (send policy, unhealthy instance) or scheduled, with a hold: waits for the
    # dispatcher (statemachine/hold.py). Not sent; leaves for PENDING (released) or FAILED.
    HELD = "HELD"


class MessageKind(StrEnum):
    TEXT = "TEXT"
    IMAGE = "IMAGE"
    AUDIO = "AUDIO"
    VIDEO = "VIDEO"
    DOCUMENT = "DOCUMENT"
    LOCATION = "LOCATION"
    CONTACT = "CONTACT"
    STICKER = "STICKER"
    REACTION = "REACTION"


class Plan(StrEnum):
    PRO = "PRO"
    LITE = "LITE"


class Reason(StrEnum):
    """Machine-readable reasons: ErrorInfo.reason, failure_reason and instance reasons."""

    # Instance health (why a send is blocked).
    SESSION_INCOMPLETE = "SESSION_INCOMPLETE"
    TIMEOUT_OR_GATEWAY = "TIMEOUT_OR_GATEWAY"
    INSTANCE_DISCONNECTED = "INSTANCE_DISCONNECTED"
    HEALTH_UNKNOWN = "HEALTH_UNKNOWN"
    TOKEN_INVALID = "TOKEN_INVALID"  # noqa: S105 - a reason code, not a secret
    INSTANCE_NOT_FOUND = "INSTANCE_NOT_FOUND"
    DELIVERY_STALLED = "DELIVERY_STALLED"
    NOT_SUPPORTED_BY_PLAN = "NOT_SUPPORTED_BY_PLAN"
    # Instance health (why it is fine).
    PHONE_CONFIRMED = "PHONE_CONFIRMED"
    REGISTERED = "REGISTERED"
    # Connected, but the provider's webhooks are not known to reach us (unconfigured, unverified or
    # pointing elsewhere, and no receipt lately): delivery cannot be confirmed.
    WEBHOOKS_UNCONFIGURED = "WEBHOOKS_UNCONFIGURED"
    # Provider outcome of a send.
    PROVIDER_ERROR = "PROVIDER_ERROR"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    PROVIDER_NO_MESSAGE_ID = "PROVIDER_NO_MESSAGE_ID"
    PROVIDER_ACCEPTED = "PROVIDER_ACCEPTED"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    # Another attempt (still running) holds this idempotency key.
    SEND_IN_PROGRESS = "SEND_IN_PROGRESS"
    # Webhook-driven message changes.
    WEBHOOK_STATUS = "WEBHOOK_STATUS"
    STALE_STATUS = "STALE_STATUS"
    # Request problems.
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    MESSAGE_NOT_RETRYABLE = "MESSAGE_NOT_RETRYABLE"
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
    CONCURRENT_UPDATE = "CONCURRENT_UPDATE"
    CREATED = "CREATED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RETRY_REQUESTED = "RETRY_REQUESTED"
    # Operator recovery (instance reasons while it is under way, and refusals of the action).
    RESTARTING = "RESTARTING"
    PAIRING_IN_PROGRESS = "PAIRING_IN_PROGRESS"
    RECOVERY_IN_PROGRESS = "RECOVERY_IN_PROGRESS"
    RECOVERY_RATE_LIMITED = "RECOVERY_RATE_LIMITED"
    PUBLIC_URL_NOT_CONFIGURED = "PUBLIC_URL_NOT_CONFIGURED"
    # A send W-API only queued (an `insertedId`, no message id yet).
    PROVIDER_QUEUED = "PROVIDER_QUEUED"
    # The instance's send policy (statemachine/send_policy.py) refused the send for now.
    QUIET_HOURS = "QUIET_HOURS"
    SEND_INTERVAL = "SEND_INTERVAL"
    SEND_RATE_PER_MINUTE = "SEND_RATE_PER_MINUTE"
    NEW_RECIPIENTS_HOURLY = "NEW_RECIPIENTS_HOURLY"
    NEW_RECIPIENTS_DAILY = "NEW_RECIPIENTS_DAILY"
    # The recipient asked this instance to stop messaging them (statemachine/optout.py).
    RECIPIENT_OPTED_OUT = "RECIPIENT_OPTED_OUT"
    # The provider's number check said this recipient is not on WhatsApp (statemachine/recipients.py).
    NOT_ON_WHATSAPP = "NOT_ON_WHATSAPP"
    # Provider-specific session reasons and normalized send failures (statemachine/providers.py).
    SESSION_NEEDS_RESTORE = "SESSION_NEEDS_RESTORE"  # Z-API: "You need to restore the session."
    LOGGED_OUT = "LOGGED_OUT"  # Evolution: closed with 401/402/403/406, no automatic reconnect
    QR_REFUSED = "QR_REFUSED"  # Evolution: QR code limit reached (state "refused")
    PHONE_OFFLINE = "PHONE_OFFLINE"  # Z-API: connected, smartphoneConnected false
    # Z-API: an inbound message arrived as `waitingMessage: true` ("Aguardando mensagem"): the phone
    # could not decrypt it, the session's keys are broken (DEGRADED until a connection with a phone).
    WAITING_FOR_MESSAGE = "WAITING_FOR_MESSAGE"
    SEND_REJECTED = "SEND_REJECTED"  # refused/restricted by WhatsApp or the provider
    INVALID_MEDIA = "INVALID_MEDIA"
    PROVIDER_UNCERTAIN = "PROVIDER_UNCERTAIN"  # a provider timeout: the message may still go out
    # Holds (statemachine/hold.py): a send with `send_at` in the future waits for it; a held
    # message released to the send path; cancelled by the caller; a cancel of a message not held;
    # the operator's release is pending (the instance's policy asks for it).
    SCHEDULED = "SCHEDULED"
    HOLD_RELEASED = "HOLD_RELEASED"
    CANCELLED = "CANCELLED"
    MESSAGE_NOT_HELD = "MESSAGE_NOT_HELD"
    HOLD_EXPIRED = "HOLD_EXPIRED"


# --- outbound content ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    body: str


@dataclass(frozen=True, slots=True)
class Media:
    """Image, audio, video or sticker, by URL."""

    url: str
    caption: str = ""
    mimetype: str = ""


@dataclass(frozen=True, slots=True)
class Document:
    url: str
    file_name: str
    caption: str = ""
    mimetype: str = ""
    extension: str = ""


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    name: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    phone: str
    business_description: str = ""


@dataclass(frozen=True, slots=True)
class Reaction:
    emoji: str
    target_provider_message_id: str


Content = Text | Media | Document | Location | Contact | Reaction


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """What the provider adapter needs to send one message."""

    kind: MessageKind
    to: str
    content: Content
    reply_to: str = ""
    delay_seconds: int = 0


# --- provider port values --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    instance_id: str
    token: str = field(repr=False)
    # Which provider and where (services/app/providers.py fills them in per instance).
    provider: str = "WAPI"
    base_url: str = ""
    client_token: str = field(default="", repr=False)

    def __str__(self) -> str:  # never print the token, even by accident
        return f"Credentials(instance_id={self.instance_id!r}, token=***)"


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """Provider's answer to a send. Exactly one of provider_message_id / failure is set."""

    provider_message_id: str | None = None
    failure: Reason | None = None
    detail: str = ""
    http_status: int | None = None
    # W-API's queue handle when it only queued the message (no message id): never a "sent".
    queue_id: str | None = None

    @property
    def accepted(self) -> bool:
        return self.failure is None and bool(self.provider_message_id)

    @property
    def queued(self) -> bool:
        return self.failure is None and not self.provider_message_id and bool(self.queue_id)


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """Provider's answer to a status probe, before any judgement.

    `connected` is what the provider claims; `phone` is the identity it showed (phone, me.id, wid).
    The instance machine, not the adapter, decides what "connected without phone" means.
    `failure` is set when the provider could not be asked (TIMEOUT_OR_GATEWAY, TOKEN_INVALID,
    INSTANCE_NOT_FOUND); then `connected` is None.
    """

    connected: bool | None
    phone: str | None = None
    lid: str | None = None
    failure: Reason | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """Provider's answer to a recovery action (QR, pairing code, restart, disconnect, webhook
    update). `failure` is set when the provider refused or could not be asked."""

    ok: bool
    failure: Reason | None = None
    detail: str = ""
    message: str = ""  # the provider's own words
    connected: bool = False  # the answer says the instance is already paired
    phone: str | None = None
    qr_text: str = ""
    png: bytes = field(default=b"", repr=False)
    pairing_code: str = field(default="", repr=False)
    webhook_urls: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One webhook body from the provider's webhook log, replayable through ingest."""

    log_id: str
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class WebhookLogPage:
    entries: list[LoggedEvent]
    total_pages: int | None = None
    failure: Reason | None = None
    detail: str = ""


# Who the service itself audits a webhook set-up as (registration, and every reconnection's
# re-apply): automatic actions, never counted against the operator's per-instance recovery limit.
AUTOMATIC_REQUESTERS = ("registration", "reconnection")
RECOVERY_PENDING = "PENDING"  # the audit outcome of an action reserved but not finished yet


@dataclass(frozen=True, slots=True)
class RecoveryAction:
    instance_id: str
    action: str
    requested_by: str
    at: datetime
    outcome: str
    detail: str = ""


# --- persisted views -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChange:
    from_state: str
    to_state: str
    reason: str
    source: str
    at: datetime
    applied: bool = True


@dataclass(slots=True)
class InstanceRecord:
    instance_id: str
    name: str
    plan: Plan
    state: InstanceState
    reason: str
    phone_number: str | None
    checked_at: datetime | None
    last_event_at: datetime | None
    state_changed_at: datetime | None
    version: int
    consecutive_gateway_failures: int = 0
    stuck_messages: int = 0
    webhooks_state: str = "UNCONFIGURED"
    webhooks_detail: str = ""
    # The newest receipt (a delivery/read status or a server ack) W-API posted for this instance.
    last_receipt_at: datetime | None = None
    provider: str = "WAPI"  # statemachine.providers.ProviderKind


@dataclass(slots=True)
class MessageRecord:
    id: str
    instance_id: str
    to: str
    kind: MessageKind
    state: MessageState
    failure_reason: str
    failure_detail: str
    provider_message_id: str | None
    attempts: int
    idempotency_key: str
    request_hash: str
    content: dict[str, object]
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    stuck_at: datetime | None
    history: list[StateChange]
    version: int
    trace_id: str = ""
    span_id: str = ""
    queue_id: str | None = None
