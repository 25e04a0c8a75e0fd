"""W-API's send bodies (docs/wapi-contract.md, "Sending"): the send table, one row per message kind,
and the body builder. Part of the contract (contract.py re-exports every name here)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from statemachine.domain import (
    Contact,
    Document,
    Location,
    Media,
    MessageKind,
    OutboundMessage,
    Reaction,
    Text,
)

# --- endpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendSpec:
    """One row of the send table: W-API endpoint and our field -> W-API body key."""

    endpoint: str
    fields: Mapping[str, str]


# Keys every send body may carry (docs/wapi-contract.md, "Sending").
PHONE_FIELD: Final = "phone"
REPLY_TO_FIELD: Final = "messageId"  # reply to a message (W-API's reference: text, image; sent on every kind)
DELAY_FIELD: Final = "delayMessage"  # seconds

# THE table: one row per kind, body keys exactly as W-API spells them. Correct W-API facts here.
SEND_TABLE: Final[Mapping[MessageKind, SendSpec]] = {
    MessageKind.TEXT: SendSpec("/message/send-text", {"body": "message"}),
    MessageKind.IMAGE: SendSpec("/message/send-image", {"url": "image", "caption": "caption"}),
    MessageKind.AUDIO: SendSpec("/message/send-audio", {"url": "audio"}),
    MessageKind.VIDEO: SendSpec("/message/send-video", {"url": "video", "caption": "caption"}),
    MessageKind.DOCUMENT: SendSpec(
        "/message/send-document",
        {
            "url": "document",
            "file_name": "fileName",
            "extension": "extension",  # (inferred) no leading dot; derived from file_name when empty
            "caption": "caption",  # (inferred)
        },
    ),
    MessageKind.LOCATION: SendSpec(
        "/message/send-location",
        # latitude / longitude are sent as decimal strings (W-API's reference)
        {"name": "name", "address": "address", "latitude": "latitude", "longitude": "longitude"},
    ),
    MessageKind.CONTACT: SendSpec(
        "/message/send-contact",
        {
            "name": "contactName",
            "phone": "contactPhone",
            "business_description": "contactBusinessDescription",
        },
    ),
    MessageKind.STICKER: SendSpec("/message/send-sticker", {"url": "sticker"}),
    MessageKind.REACTION: SendSpec(
        "/message/send-reaction", {"emoji": "reaction", "target_provider_message_id": "messageId"}
    ),
}


# --- request bodies ------------------------------------------------------------------------------


class ContentMismatchError(ValueError):
    """The message's content does not fit its kind (a caller bug, never provider trouble)."""


def build_send_body(message: OutboundMessage) -> tuple[str, dict[str, Any]]:
    """(endpoint, JSON body) for one send. Raises ContentMismatchError for an inconsistent message.

    Optional fields (caption, contactBusinessDescription, reply-to, delay) are left out when empty.
    """
    spec = SEND_TABLE.get(message.kind)
    if spec is None:
        raise ContentMismatchError(f"no W-API endpoint for kind {message.kind!r}")
    if not message.to.strip():
        raise ContentMismatchError("recipient ('to') is empty")
    values: dict[str, Any] = {}  # our field name -> value; None / "" means "leave out"
    content = message.content
    kind = message.kind

    if kind is MessageKind.TEXT and isinstance(content, Text):
        values["body"] = content.body
    elif isinstance(content, Media) and "url" in spec.fields and kind is not MessageKind.DOCUMENT:
        values["url"] = content.url
        values["caption"] = content.caption  # dropped below for kinds without a caption field
    elif kind is MessageKind.DOCUMENT and isinstance(content, Document):
        values["url"] = content.url
        values["file_name"] = content.file_name
        values["extension"] = content.extension.strip().lstrip(".").lower() or extension_from_file_name(
            content.file_name
        )
        values["caption"] = content.caption
    elif kind is MessageKind.LOCATION and isinstance(content, Location):
        # name and address are always sent (W-API's reference lists them with the coordinates, none optional)
        values["name"] = content.name
        values["address"] = content.address
        values["latitude"] = coordinate_text(content.latitude, limit=90.0)
        values["longitude"] = coordinate_text(content.longitude, limit=180.0)
    elif kind is MessageKind.CONTACT and isinstance(content, Contact):
        values["name"] = content.name
        values["phone"] = content.phone
        values["business_description"] = content.business_description
    elif kind is MessageKind.REACTION and isinstance(content, Reaction):
        if not content.target_provider_message_id:
            raise ContentMismatchError("reaction needs the target provider message id")
        values["emoji"] = content.emoji
        values["target_provider_message_id"] = content.target_provider_message_id
    else:
        raise ContentMismatchError(f"{type(content).__name__} content does not fit kind {kind.value}")

    always = {"body", "url", "file_name", "name", "address", "latitude", "longitude", "phone"}
    always |= {"emoji", "target_provider_message_id"}
    body: dict[str, Any] = {PHONE_FIELD: message.to}
    for ours, theirs in spec.fields.items():
        if ours not in values:
            continue
        value = values[ours]
        if ours in always or value:
            body[theirs] = value

    # Reply-to shares the `messageId` key; a reaction's messageId is its target, so no reply there.
    if message.reply_to and kind is not MessageKind.REACTION:
        body[REPLY_TO_FIELD] = message.reply_to
    if message.delay_seconds > 0:
        body[DELAY_FIELD] = int(message.delay_seconds)
    return spec.endpoint, body


def extension_from_file_name(file_name: str) -> str:
    """'Relatório.final.PDF' -> 'pdf'; '' when the name has no usable extension."""
    base = file_name.rsplit("/", 1)[-1]
    if "." not in base.strip("."):
        return ""
    ext = base.rsplit(".", 1)[-1].strip().lower()
    return ext if ext.isalnum() and len(ext) <= 10 else ""


def coordinate_text(value: float, *, limit: float) -> str:
    """A coordinate as W-API wants it: a decimal string, never exponent notation."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ContentMismatchError(f"coordinate {value!r} is not a number") from None
    if not math.isfinite(number) or abs(number) > limit:
        raise ContentMismatchError(f"coordinate {value!r} is out of range")
    return format(Decimal(repr(number)), "f")
