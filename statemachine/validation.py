"""Request validation: every problem found at once, as (field, description) pairs.

Bad input is refused before anything is stored (google.rpc.BadRequest at the gRPC edge).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from statemachine.domain import (
    Contact,
    Content,
    Document,
    Location,
    Media,
    MessageKind,
    Reaction,
    Text,
)
from statemachine.hold import HoldWish
from statemachine.phone import DEFAULT_REGION, canonical_phone

MAX_TEXT = 4096  # WhatsApp's practical text limit (Cloud API caps text bodies at 4096).
MAX_CAPTION = 1024
MAX_URL = 2048
MAX_FILE_NAME = 255
MAX_ID = 64
MAX_IDEMPOTENCY_KEY = 128
MAX_PROVIDER_ID = 128
MAX_DELAY_SECONDS = 15
MAX_INSTANCE_IDS = 1_000

_CHAT_RE = re.compile(r"[0-9A-Za-z._:-]{3,64}@(g\.us|lid|s\.whatsapp\.net|c\.us|newsletter)")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PRINTABLE_RE = re.compile(r"[\x21-\x7e]+")
_PHONE_JID_DOMAINS = ("s.whatsapp.net", "c.us")
_NOT_A_RECIPIENT = "must be a phone number (+55 15 98112-1710, or national) or a chat id like 1203…@g.us"


@dataclass(frozen=True, slots=True)
class Violation:
    field: str
    description: str


@dataclass(frozen=True, slots=True)
class SendRequest:
    instance_id: str
    to: str
    idempotency_key: str
    kind: MessageKind | None
    content: Content | None
    reply_to: str = ""
    delay_seconds: int = 0
    # hold_for / send_at (statemachine/hold.py); None: refused at once when blocked, as always.
    hold: HoldWish | None = None


def canonical_recipient(to: str, region: str = DEFAULT_REGION) -> tuple[str, str]:
    """``(recipient, "")`` in its canonical form, or ``("", problem)``.

    A phone (``+55 (15) 98112-1710``, ``15 98112-1710`` with region ``BR``, ``5515981121710``)
    becomes its E.164 digits, ``5515981121710`` (`statemachine.phone.canonical_phone`). A chat id
    is kept as given: a group (``…@g.us``), a LID (``…@lid``), a newsletter (``…@newsletter``) or a
    user JID (``…@s.whatsapp.net``, ``…@c.us``), whose digits must then be a valid international
    number. Whitespace around either is dropped.
    """
    text = to.strip()
    if not text:
        return "", "required"
    if "@" not in text:
        return canonical_phone(text, region)
    if not text.isascii() or not _CHAT_RE.fullmatch(text):
        return "", _NOT_A_RECIPIENT
    user, _, domain = text.partition("@")
    number = user.partition(":")[0]
    if domain in _PHONE_JID_DOMAINS and number.isdigit() and canonical_phone("+" + number, region)[0] != number:
        return "", f"the number of this WhatsApp id is not a valid international number ({number})"
    return text, ""


def _check_url(field: str, url: str, out: list[Violation]) -> None:
    if not url:
        out.append(Violation(field, "required"))
        return
    if len(url) > MAX_URL:
        out.append(Violation(field, f"longer than {MAX_URL} characters"))
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        out.append(Violation(field, "not a valid URL"))
        return
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        out.append(Violation(field, "must be an absolute http(s) URL"))


def _check_len(field: str, value: str, limit: int, out: list[Violation]) -> None:
    if len(value) > limit:
        out.append(Violation(field, f"longer than {limit} characters"))


def validate_instance_id(instance_id: str, field: str = "instance_id") -> list[Violation]:
    if not instance_id:
        return [Violation(field, "required")]
    if len(instance_id) > MAX_ID or not _ID_RE.fullmatch(instance_id):
        return [Violation(field, f"must be 1-{MAX_ID} letters, digits, '.', '_' or '-'")]
    return []


def validate_instance_filter(field: str, instance_ids: Iterable[str]) -> list[Violation]:
    """An instance filter of a request (event list, stream): at most MAX_INSTANCE_IDS ids, each a
    valid instance id (blank entries are ignored). Reports the first few bad entries by index."""
    ids = list(instance_ids)
    if len(ids) > MAX_INSTANCE_IDS:
        return [Violation(field, f"at most {MAX_INSTANCE_IDS} instance ids, got {len(ids)}")]
    out: list[Violation] = []
    for index, value in enumerate(ids):
        if value.strip():
            out.extend(validate_instance_id(value.strip(), f"{field}[{index}]"))
        if len(out) >= 10:
            break
    return out


def canonical_send(req: SendRequest, region: str = DEFAULT_REGION) -> tuple[SendRequest, list[Violation]]:
    """The request with its recipient (and a contact card's phone) in canonical form, and every
    problem found (none: it may be stored and sent as it is now)."""
    to, to_problem = canonical_recipient(req.to, region)
    content, contact_problem = req.content, ""
    if isinstance(content, Contact):
        phone, contact_problem = canonical_phone(content.phone, region)
        content = replace(content, phone=phone or content.phone)
    canonical = replace(req, to=to or req.to, content=content)
    return canonical, _violations(canonical, to_problem, contact_problem)


def validate_send(req: SendRequest, region: str = DEFAULT_REGION) -> list[Violation]:
    return canonical_send(req, region)[1]


def _violations(req: SendRequest, to_problem: str, contact_problem: str) -> list[Violation]:
    out = validate_instance_id(req.instance_id)
    if to_problem:
        out.append(Violation("to", to_problem))
    if req.idempotency_key and (
        len(req.idempotency_key) > MAX_IDEMPOTENCY_KEY or not _PRINTABLE_RE.fullmatch(req.idempotency_key)
    ):
        out.append(Violation("idempotency_key", f"must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters"))
    _check_len("reply_to_provider_message_id", req.reply_to, MAX_PROVIDER_ID, out)
    if not 0 <= req.delay_seconds <= MAX_DELAY_SECONDS:
        out.append(Violation("delay_seconds", f"must be between 0 and {MAX_DELAY_SECONDS}"))
    content, kind = req.content, req.kind
    if content is None or kind is None:
        out.append(
            Violation(
                "content",
                "one of text, image, audio, video, document, location, contact, sticker or reaction is required",
            )
        )
        return out
    field = kind.lower()
    match content:
        case Text(body=body):
            if not body.strip():
                out.append(Violation("text.body", "must not be empty"))
            _check_len("text.body", body, MAX_TEXT, out)
        case Media(url=url, caption=caption, mimetype=mimetype):
            _check_url(f"{field}.url", url, out)
            _check_len(f"{field}.caption", caption, MAX_CAPTION, out)
            _check_len(f"{field}.mimetype", mimetype, 127, out)
        case Document(url=url, file_name=file_name, caption=caption, extension=extension):
            _check_url("document.url", url, out)
            if not file_name.strip():
                out.append(Violation("document.file_name", "required"))
            _check_len("document.file_name", file_name, MAX_FILE_NAME, out)
            _check_len("document.caption", caption, MAX_CAPTION, out)
            _check_len("document.extension", extension, 16, out)
        case Location(latitude=lat, longitude=lon, name=name, address=address):
            if not (math.isfinite(lat) and -90 <= lat <= 90):
                out.append(Violation("location.latitude", "must be between -90 and 90"))
            if not (math.isfinite(lon) and -180 <= lon <= 180):
                out.append(Violation("location.longitude", "must be between -180 and 180"))
            _check_len("location.name", name, 256, out)
            _check_len("location.address", address, 512, out)
        case Contact(name=name, business_description=desc):
            if not name.strip():
                out.append(Violation("contact.name", "required"))
            _check_len("contact.name", name, 256, out)
            if contact_problem:
                out.append(Violation("contact.phone", contact_problem))
            _check_len("contact.business_description", desc, 512, out)
        case Reaction(emoji=emoji, target_provider_message_id=target):
            if not emoji or len(emoji) > 16:
                out.append(Violation("reaction.emoji", "must be one emoji"))
            if not target:
                out.append(Violation("reaction.target_provider_message_id", "required"))
            _check_len("reaction.target_provider_message_id", target, MAX_PROVIDER_ID, out)
    return out


# --- outbound webhook subscriptions ------------------------------------------------------------

# Bounds of every list a subscription request carries (INVALID_ARGUMENT past them; the instance
# filter's bound is MAX_INSTANCE_IDS above).
MAX_EVENT_TYPES = 32
MAX_DELIVERY_IDS = 1_000
MAX_SUBSCRIPTION_URL = 2000
MAX_DESCRIPTION = 200
MAX_SUBSCRIPTION_ID = 64
MAX_PAGE_TOKEN = 2**63 - 1
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")
_PAGE_TOKEN_RE = re.compile(r"[0-9]{1,19}")


def validate_subscription_id(field: str, value: str) -> list[Violation]:
    if not value.strip():
        return [Violation(field, "required")]
    if len(value) > MAX_SUBSCRIPTION_ID or not _ID_RE.fullmatch(value.strip()):
        return [Violation(field, "not a webhook subscription id")]
    return []


def parse_page_token(field: str, token: str) -> int | None:
    """A deliveries page token (a positive decimal delivery id); None when empty. Raises ValueError."""
    if not token:
        return None
    if not _PAGE_TOKEN_RE.fullmatch(token) or int(token) > MAX_PAGE_TOKEN:
        raise ValueError(f"{field}: not a page token of this list")
    return int(token)


def validate_description(field: str, text: str) -> list[Violation]:
    if len(text) > MAX_DESCRIPTION:
        return [Violation(field, f"longer than {MAX_DESCRIPTION} characters")]
    if "\x00" in text:
        return [Violation(field, "must not contain NUL characters")]
    return []


def validate_subscription_url(field: str, url: str) -> list[Violation]:
    """Syntax of a receiver URL: absolute http(s), a host, no credentials, no control characters.
    Where it points (private, loopback, metadata addresses) is the outbound policy's decision."""
    if not url:
        return [Violation(field, "required")]
    if len(url) > MAX_SUBSCRIPTION_URL:
        return [Violation(field, f"longer than {MAX_SUBSCRIPTION_URL} characters")]
    if _CONTROL_RE.search(url):
        return [Violation(field, "must not contain spaces or control characters")]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return [Violation(field, "not a valid URL")]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [Violation(field, "must be an absolute http(s) URL")]
    if "@" in parts.netloc:
        return [Violation(field, "must not contain credentials (user:password@); authenticate by the signature")]
    if port == 0:
        return [Violation(field, "port 0 is not a receiver port")]
    return []
