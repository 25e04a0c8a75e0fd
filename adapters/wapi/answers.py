"""W-API's answers as the client reads them: the HTTP answer classified (JSON, HTML gateway page,
empty), the token scrubbed from every detail, and a send's answer turned into its outcome. Part
of the client (client.py)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

import httpx

from adapters.wapi.contract import (
    error_message,
    extract_message_id,
    extract_queue_id,
    is_error_body,
    truncate,
)
from statemachine.domain import (
    ActionOutcome,
    ProbeOutcome,
    Reason,
    SendOutcome,
)
from statemachine.providers import normalize_failure

logger = logging.getLogger("wapi_guard.wapi")


_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_HTML_TITLE = re.compile(rb"(?is)<(title|h1)[^>]*>(.*?)</\1>")


@dataclass(frozen=True, slots=True)
class _Answer:
    """One HTTP answer, read (bounded) and classified."""

    status: int
    is_html: bool
    is_json: bool
    payload: Any  # parsed JSON when is_json
    raw: bytes

    @property
    def html_title(self) -> str:
        match = _HTML_TITLE.search(self.raw)
        if match is None:
            return ""
        return re.sub(r"<[^>]+>", " ", match.group(2).decode("utf-8", "replace"))


def _classify(status: int, content_type: str, raw: bytes) -> _Answer:
    head = raw.lstrip()[:1]
    is_html = "html" in content_type.lower() or head == b"<"
    payload: Any = None
    is_json = False
    if not is_html and raw.strip():
        try:
            payload = json.loads(raw)
            is_json = True
        except ValueError:  # includes UnicodeDecodeError
            payload = None
    return _Answer(status=status, is_html=is_html, is_json=is_json, payload=payload, raw=raw)


class _Scrubber:
    """Removes the token (and any bearer credential) from text that may leave this module."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "_Scrubber(***)"

    def __call__(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return truncate(_BEARER.sub(r"\1***", text))


def _refusal(message: str) -> Reason:
    """A send error's reason: NOT_ON_WHATSAPP when its words say the number does not exist (the
    words shared by the providers, statemachine/providers.py), else PROVIDER_ERROR."""
    reason = normalize_failure(message)
    return reason if reason is Reason.NOT_ON_WHATSAPP else Reason.PROVIDER_ERROR


def _send_outcome(answer: _Answer, scrub: _Scrubber) -> SendOutcome:
    status = answer.status
    if answer.is_html:
        return SendOutcome(failure=Reason.PROVIDER_UNAVAILABLE, detail=_html_detail(answer, scrub), http_status=status)
    if status in (401, 403):
        return SendOutcome(failure=Reason.TOKEN_INVALID, detail=_http_detail(answer, scrub), http_status=status)
    if status == 404:
        return SendOutcome(failure=Reason.INSTANCE_NOT_FOUND, detail=_http_detail(answer, scrub), http_status=status)
    if status == 429 or status >= 500 or status < 200 or 300 <= status < 400:
        return SendOutcome(failure=Reason.PROVIDER_UNAVAILABLE, detail=_http_detail(answer, scrub), http_status=status)
    if status >= 400:
        detail = _http_detail(answer, scrub)
        return SendOutcome(failure=_refusal(detail), detail=detail, http_status=status)
    # 2xx
    if not answer.is_json:
        return SendOutcome(
            failure=Reason.PROVIDER_UNAVAILABLE,
            detail=f"HTTP {status} without a JSON body",
            http_status=status,
        )
    if is_error_body(answer.payload):
        # An error flag wins over an id: reporting "sent" for an errored answer is the fake "sent".
        message = error_message(answer.payload) or "W-API flagged an error"
        return SendOutcome(failure=_refusal(message), detail=scrub(message), http_status=status)
    message_id = extract_message_id(answer.payload)
    if message_id is None and (queue_id := extract_queue_id(answer.payload)):
        return SendOutcome(queue_id=queue_id, detail="queued by W-API (insertedId)", http_status=status)
    if message_id is None:
        return SendOutcome(
            failure=Reason.PROVIDER_NO_MESSAGE_ID,
            detail=f"HTTP {status} accepted without a message id",
            http_status=status,
        )
    return SendOutcome(provider_message_id=message_id, http_status=status)


_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


def _png_from_text(text: str) -> bytes:
    """PNG bytes from a data URL or bare base64 text; empty when it is not a PNG."""
    data = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        raw = base64.b64decode(data, validate=False)
    except (ValueError, binascii.Error):
        return b""
    return raw if raw.startswith(_PNG_MAGIC) else b""


def _http_detail(answer: _Answer, scrub: _Scrubber) -> str:
    message = error_message(answer.payload) if answer.is_json else ""
    if not message and not answer.is_json and answer.raw.strip():
        message = answer.raw[:200].decode("utf-8", "replace")
    return scrub(f"HTTP {answer.status}: {message}" if message else f"HTTP {answer.status}")


def _html_detail(answer: _Answer, scrub: _Scrubber) -> str:
    title = answer.html_title.strip()
    suffix = f": {title}" if title else ""
    return scrub(f"HTTP {answer.status} with an HTML page (gateway){suffix}")


def _with_detail(outcome: ProbeOutcome, detail: str) -> ProbeOutcome:
    return ProbeOutcome(
        connected=outcome.connected,
        phone=outcome.phone,
        lid=outcome.lid,
        failure=outcome.failure,
        detail=detail,
    )


def _timeout_detail(exc: httpx.TimeoutException, timeout: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timeout after {timeout:.2f}s (request not sent)"
    if isinstance(exc, httpx.PoolTimeout):
        return f"no free connection within {timeout:.2f}s (request not sent)"
    return f"{type(exc).__name__} after {timeout:.2f}s"


def _exc_detail(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _action_outcome(answer: _Answer, scrub: _Scrubber) -> tuple[ActionOutcome, _Answer | None]:
    """An operator action's answer as its outcome (the answer too, when it succeeded)."""
    status = answer.status
    if answer.is_html:
        return ActionOutcome(ok=False, failure=Reason.PROVIDER_UNAVAILABLE, detail=_html_detail(answer, scrub)), None
    detail = _http_detail(answer, scrub)
    if status in (401, 403):
        return ActionOutcome(ok=False, failure=Reason.TOKEN_INVALID, detail=detail), None
    if status == 404:
        return ActionOutcome(ok=False, failure=Reason.INSTANCE_NOT_FOUND, detail=detail), None
    if status == 429 or status >= 500 or status < 200 or 300 <= status < 400:
        return ActionOutcome(ok=False, failure=Reason.PROVIDER_UNAVAILABLE, detail=detail), None
    if status >= 400:
        return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail=detail), None
    if answer.is_json and is_error_body(answer.payload):
        message = scrub(error_message(answer.payload) or "W-API flagged an error")
        return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail=message), None
    message = scrub(error_message(answer.payload)) if answer.is_json else ""
    return ActionOutcome(ok=True, message=message), answer
