"""Provider truth rules: pure, one place, for every provider wapi-guard speaks to.

Each provider says "connected" in its own words; none of them proves a session on its own. These
functions turn a provider's raw answers (already decoded JSON, never HTTP) into the domain's
values, so the instance machine applies the one rule everywhere: CONNECTED only with a phone.
Sources of the shapes: docs/providers.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from statemachine.domain import MessageState, ProbeOutcome, Reason
from statemachine.phone import e164_phone


class ProviderKind(StrEnum):
    """Which provider API an instance lives on. W-API is the default (today's clients)."""

    WAPI = "WAPI"
    ZAPI = "ZAPI"
    EVOLUTION = "EVOLUTION"

    @property
    def path_name(self) -> str:
        """The provider's name in the bridge's webhook path (/webhooks/<name>/<secret>)."""
        return self.value.lower()


ZAPI_DEFAULT_BASE_URL: Final = "https://api.z-api.io"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """How to reach one instance's provider. `client_token` is Z-API's optional account security
    token (the `Client-Token` header): a secret, never printed."""

    kind: ProviderKind = ProviderKind.WAPI
    base_url: str = ""
    client_token: str = field(default="", repr=False)

    def __str__(self) -> str:
        return f"ProviderConfig(kind={self.kind.value}, base_url={self.base_url!r}, client_token=***)"


# --- session truth ---------------------------------------------------------------------------

ZAPI_RESTORE_SESSION: Final = "You need to restore the session."
ZAPI_NULL_NOT_ALLOWED: Final = "null not allowed"  # Client-Token required but missing/wrong


def zapi_session(status: Mapping[str, Any], device: Mapping[str, Any] | None) -> ProbeOutcome:
    """Z-API: `GET /status` has no identity, so CONNECTED needs `GET /device`'s phone too.

    - `error: "You need to restore the session."` is its own reason (remedy: restore-session);
    - connected without a valid phone on /device (empty, missing, or /device failed) reports
      "connected" with no phone: the instance machine makes that SESSION_INCOMPLETE;
    - connected with `smartphoneConnected: false` is DEGRADED (PHONE_OFFLINE), phone kept;
    - anything else not connected is a disconnection.
    """
    error = status.get("error")
    if isinstance(error, str) and error.strip() == ZAPI_RESTORE_SESSION:
        return ProbeOutcome(connected=False, failure=Reason.SESSION_NEEDS_RESTORE, detail=ZAPI_RESTORE_SESSION)
    if isinstance(error, str) and ZAPI_NULL_NOT_ALLOWED in error:
        return ProbeOutcome(connected=None, failure=Reason.TOKEN_INVALID, detail="Z-API refused the Client-Token")
    if status.get("connected") is not True:
        return ProbeOutcome(connected=False, detail=error if isinstance(error, str) else "")
    phone = e164_phone(device.get("phone")) if device else None
    if phone is None:
        return ProbeOutcome(connected=True, phone=None, detail="Z-API says connected but /device shows no phone")
    if status.get("smartphoneConnected") is False:
        return ProbeOutcome(
            connected=True, phone=phone, failure=Reason.PHONE_OFFLINE, detail="Z-API: smartphoneConnected is false"
        )
    return ProbeOutcome(connected=True, phone=phone)


EVOLUTION_LOGGED_OUT_CODES: Final = frozenset({401, 402, 403, 406})


def evolution_owner(instance: Mapping[str, Any] | None) -> str | None:
    """The owner of an Evolution instance row (fetchInstances: `ownerJid`, or a connection
    webhook's `wuid`) as a phone, or None."""
    if not instance:
        return None
    for key in ("ownerJid", "owner", "wuid"):
        phone = e164_phone(instance.get(key))
        if phone is not None:
            return phone
    return None


def evolution_session(state: str | None, owner: str | None) -> ProbeOutcome:
    """Evolution: CONNECTED only when the socket state is `open` AND the instance has an owner.
    `open` without one (a fresh instance: the schema's default status is `open`) is reported
    connected without a phone, i.e. SESSION_INCOMPLETE. `refused` (QR limit reached) is its own
    reason; `connecting` and `close` are disconnections."""
    text = (state or "").strip().lower()
    if text == "open":
        return ProbeOutcome(connected=True, phone=e164_phone(owner))
    if text == "refused":
        return ProbeOutcome(connected=False, failure=Reason.QR_REFUSED, detail="Evolution: QR code limit reached")
    if text in ("connecting", "close", "closed"):
        return ProbeOutcome(connected=False, detail=f"Evolution state {text}")
    return ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail="Evolution: unreadable state")


def evolution_logged_out(code: Any) -> bool:
    """`status.instance` closed with one of these codes: logged out, Evolution will not reconnect."""
    try:
        return int(code) in EVOLUTION_LOGGED_OUT_CODES
    except (TypeError, ValueError):
        return False


# --- status vocabularies ---------------------------------------------------------------------

ZAPI_STATUS: Final[Mapping[str, MessageState]] = {
    "SENT": MessageState.SENT,
    "RECEIVED": MessageState.DELIVERED,
    "DELIVERED": MessageState.DELIVERED,
    "READ": MessageState.READ,
    "PLAYED": MessageState.PLAYED,
}
"""Z-API's MessageStatusCallback words. READ_BY_ME (the instance read an inbound message) is
deliberately absent: it says nothing about an outbound message."""

ZAPI_IGNORED_STATUS: Final = frozenset({"READ_BY_ME", "PENDING"})

EVOLUTION_STATUS: Final[Mapping[str, MessageState]] = {
    "SERVER_ACK": MessageState.SENT,
    "DELIVERY_ACK": MessageState.DELIVERED,
    "READ": MessageState.READ,
    "PLAYED": MessageState.PLAYED,
    "ERROR": MessageState.FAILED,
}
"""Evolution's messages.update words (Baileys' ack names). PENDING is the send answer's own
state (not an ack) and DELETED an annotation: neither moves a message."""

EVOLUTION_IGNORED_STATUS: Final = frozenset({"PENDING", "DELETED"})


# --- failure reasons -------------------------------------------------------------------------

_ZAPI_FAILURES: Final[tuple[tuple[tuple[str, ...], Reason], ...]] = (
    (
        ("phone number does not exist", "invalid phone number", "got invalid phone", "not on whatsapp"),
        Reason.NOT_ON_WHATSAPP,
    ),
    (("timeout on send message", "error on send message"), Reason.PROVIDER_UNCERTAIN),
    (
        ("invalid media", "404 error", "not a valid url", "unsupported sticker", "media format"),
        Reason.INVALID_MEDIA,
    ),
    (
        ("permission", "rejected", "did not allow", "only be sent in groups", "accept buttons"),
        Reason.SEND_REJECTED,
    ),
)


def normalize_failure(text: str | None, code: str | None = None) -> Reason:
    """A provider's failure words → one normalized reason: NOT_ON_WHATSAPP, SEND_REJECTED,
    INVALID_MEDIA, PROVIDER_UNCERTAIN (a timeout that may still go out) or PROVIDER_ERROR."""
    if code and code.upper().startswith("SHADOW"):
        return Reason.SEND_REJECTED
    lowered = (text or "").lower()
    for needles, reason in _ZAPI_FAILURES:
        if any(needle in lowered for needle in needles):
            return reason
    return Reason.PROVIDER_ERROR
