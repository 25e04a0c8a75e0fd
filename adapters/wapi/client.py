"""W-API over HTTP: the production implementation of statemachine.ports.Provider.

Rules (docs/wapi-contract.md, "What the replaced system got wrong"):
- a send is exactly ONE HTTP request: never retried, never re-sent with another body shape;
- a 2xx without a message id is not a send: no id is ever invented;
- a probe asks one endpoint (``/instance/status-instance``) and only retries gateway trouble;
- provider trouble is always a value (SendOutcome / ProbeOutcome), never an exception;
- the instance token is only ever written into the Authorization header: not into details, logs,
  exception texts or reprs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

import httpx

from adapters.wapi.contract import (
    ACTION_TABLE,
    DEFAULT_BASE_URL,
    INSTANCE_QUERY_PARAM,
    STATUS_ENDPOINT,
    WEBHOOK_KINDS,
    WEBHOOK_UPDATE_ENDPOINT,
    ContentMismatchError,
    already_connected,
    build_send_body,
    configured_webhook_urls,
    error_message,
    extract_message_id,
    extract_queue_id,
    is_error_body,
    pairing_code,
    parse_status,
    parse_webhook_logs,
    qr_text,
    truncate,
    webhook_body,
)
from adapters.wapi.transport import AiohttpTransport
from statemachine.domain import (
    ActionOutcome,
    Credentials,
    LoggedEvent,
    OutboundMessage,
    ProbeOutcome,
    Reason,
    SendOutcome,
    WebhookLogPage,
)
from statemachine.providers import normalize_failure
from statemachine.recipients import NumberCheck

logger = logging.getLogger("wapi_guard.wapi")

MAX_ANSWER_BYTES: Final = 1_000_000  # larger answers are cut (and are not JSON W-API would send)
PROBE_BACKOFF_BASE: Final = 0.05  # seconds; doubled per attempt, capped below
PROBE_BACKOFF_CAP: Final = 0.5
MIN_ATTEMPT_BUDGET: Final = 0.05  # do not start a probe attempt with less time than this
_USER_AGENT: Final = "wapi-guard/0.1"
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")
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


class WapiProvider:
    """W-API client. One shared httpx.AsyncClient (pooled connections) for every instance.

    `max_connections` bounds the pool of the default transport; an injected `transport` brings its
    own pool (httpx ignores the limits then). `probe_attempts` bounds probe retries (gateway trouble
    only); sends are never retried.
    """

    webhook_kinds: tuple[str, ...] = WEBHOOK_KINDS

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        probe_attempts: int = 2,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if probe_attempts < 1:
            raise ValueError("probe_attempts must be >= 1")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._base_url = base_url.rstrip("/")
        self._probe_attempts = probe_attempts
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        tls = httpx.create_ssl_context()  # httpx's default verification (certifi), built once
        self._client = httpx.AsyncClient(
            base_url=self._base_url + "/",
            # httpx's API over aiohttp's pool: httpcore's pool costs 0.8-2.3 ms of CPU per request
            # at 50 in flight (see transport.py). An injected transport brings its own pool.
            transport=transport or AiohttpTransport(max_connections=max_connections, verify=tls),
            verify=tls,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
        )

    def __repr__(self) -> str:
        return f"WapiProvider(base_url={self._base_url!r}, probe_attempts={self._probe_attempts})"

    @property
    def base_url(self) -> str:
        return self._base_url

    async def __aenter__(self) -> WapiProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def instrument(self, tracer_provider: object) -> None:
        """Client spans for every W-API call (OpenTelemetry httpx instrumentation).

        The token travels in the Authorization header, which the instrumentation does not record;
        the URL carries only the instance id.
        """
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(self._client, tracer_provider=tracer_provider)  # type: ignore[arg-type]

    # --- send ------------------------------------------------------------------------------------

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome:
        """Exactly one POST. Every outcome is a value; nothing is retried."""
        scrub = _Scrubber(credentials.token)
        instance = credentials.instance_id
        try:
            endpoint, body = build_send_body(message)
        except (ContentMismatchError, ValueError, TypeError) as exc:  # a caller bug: nothing is sent
            return SendOutcome(failure=Reason.INVALID_ARGUMENT, detail=scrub(str(exc)))
        if not instance:
            return SendOutcome(failure=Reason.INVALID_ARGUMENT, detail="instance id is empty")
        if not _HEADER_SAFE.match(credentials.token):
            return SendOutcome(failure=Reason.TOKEN_INVALID, detail="token is empty or not a valid header value")
        if timeout <= 0:
            return SendOutcome(failure=Reason.PROVIDER_TIMEOUT, detail="no time budget left; not sent")

        try:
            answer = await self._exchange("POST", endpoint, credentials, json_body=body, budget=timeout)
        except httpx.TimeoutException as exc:
            outcome = SendOutcome(failure=Reason.PROVIDER_TIMEOUT, detail=_timeout_detail(exc, timeout))
        except TimeoutError:
            outcome = SendOutcome(failure=Reason.PROVIDER_TIMEOUT, detail=f"no answer within {timeout:.2f}s")
        except (httpx.HTTPError, OSError) as exc:
            outcome = SendOutcome(failure=Reason.PROVIDER_UNAVAILABLE, detail=scrub(_exc_detail(exc)))
        except Exception as exc:  # a bug below us must still end as a value the core can persist
            logger.warning("send %s instance=%s: unexpected %s", endpoint, instance, type(exc).__name__)
            outcome = SendOutcome(failure=Reason.OUTCOME_UNKNOWN, detail=scrub(_exc_detail(exc)))
        else:
            outcome = _send_outcome(answer, scrub)
        logger.debug(
            "send %s instance=%s -> http=%s id=%s failure=%s",
            endpoint,
            instance,
            outcome.http_status,
            outcome.provider_message_id,
            outcome.failure,
        )
        return outcome

    # --- probe -----------------------------------------------------------------------------------

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome:
        """GET /instance/status-instance; retries gateway trouble only, all within `timeout`."""
        instance = credentials.instance_id
        if not instance:
            return ProbeOutcome(connected=None, failure=Reason.INSTANCE_NOT_FOUND, detail="instance id is empty")
        if not _HEADER_SAFE.match(credentials.token):
            return ProbeOutcome(
                connected=None,
                failure=Reason.TOKEN_INVALID,
                detail="token is empty or not a valid header value",
            )
        scrub = _Scrubber(credentials.token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        outcome = ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail="no time budget")
        for attempt in range(1, self._probe_attempts + 1):
            remaining = deadline - loop.time()
            if remaining < MIN_ATTEMPT_BUDGET and attempt > 1:
                break
            outcome, retryable = await self._probe_once(credentials, max(remaining, 0.01), scrub)
            logger.debug(
                "probe instance=%s attempt=%d -> connected=%s failure=%s",
                instance,
                attempt,
                outcome.connected,
                outcome.failure,
            )
            if not retryable:
                return outcome
            if attempt > 1:
                outcome = _with_detail(outcome, f"{outcome.detail} (attempt {attempt})")
            backoff = min(PROBE_BACKOFF_BASE * 2 ** (attempt - 1), PROBE_BACKOFF_CAP)
            if attempt == self._probe_attempts or deadline - loop.time() < backoff + MIN_ATTEMPT_BUDGET:
                break
            await asyncio.sleep(backoff)
        return outcome

    async def _probe_once(self, credentials: Credentials, budget: float, scrub: _Scrubber) -> tuple[ProbeOutcome, bool]:
        """(outcome, retryable). Only gateway trouble is retryable."""

        def gateway(detail: str) -> ProbeOutcome:
            return ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail=detail)

        try:
            answer = await self._exchange("GET", STATUS_ENDPOINT, credentials, json_body=None, budget=budget)
        except httpx.TimeoutException as exc:
            return gateway(_timeout_detail(exc, budget)), True
        except TimeoutError:
            return gateway(f"no answer within {budget:.2f}s"), True
        except (httpx.HTTPError, OSError) as exc:
            return gateway(scrub(_exc_detail(exc))), True
        except Exception as exc:  # never raise: the core keeps the last known state
            logger.warning("probe instance=%s: unexpected %s", credentials.instance_id, type(exc).__name__)
            return gateway(scrub(_exc_detail(exc))), False

        status = answer.status
        detail = _http_detail(answer, scrub)
        if answer.is_html:
            return gateway(_html_detail(answer, scrub)), True
        if status in (401, 403):
            return ProbeOutcome(connected=None, failure=Reason.TOKEN_INVALID, detail=detail), False
        if status == 404:
            return ProbeOutcome(connected=None, failure=Reason.INSTANCE_NOT_FOUND, detail=detail), False
        if status == 429 or status >= 500:
            return gateway(detail), True
        if 200 <= status < 300:
            if not answer.is_json:
                return gateway(f"HTTP {status} without a JSON body"), True
            parsed = parse_status(answer.payload)
            return _with_detail(parsed, scrub(parsed.detail)), False
        # Other 4xx / 3xx: take a clear connected claim if there is one, else report gateway trouble.
        if answer.is_json:
            parsed = parse_status(answer.payload)
            if parsed.connected is not None:
                return _with_detail(parsed, detail), False
        return gateway(detail), False

    # --- operator actions ------------------------------------------------------------------------

    async def qr_code(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        """The QR code as PNG bytes (``image=enable``) and its text form (``image=disable``).

        A paired instance answers JSON (``connected: true``) to both; then no image is returned.
        """
        outcome, answer = await self._action(credentials, "qr_code", {}, timeout=timeout)
        if answer is None or not outcome.ok:
            return outcome
        connected, phone = already_connected(answer.payload)
        text = qr_text(answer.payload) or ""
        if connected and not text:
            return ActionOutcome(ok=True, connected=True, phone=phone, message=outcome.message)
        _image, image_answer = await self._action(credentials, "qr_code_image", {}, timeout=timeout)
        png = b""
        if image_answer is not None and image_answer.raw.startswith(_PNG_MAGIC):
            png = image_answer.raw
        elif text:
            png = _png_from_text(text)
        if not text and png:
            text = "data:image/png;base64," + base64.b64encode(png).decode()
        if not text and not png:
            return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail="qr-code answer without a QR code")
        return ActionOutcome(ok=True, qr_text=text, png=png, message=outcome.message)

    async def pairing_code(self, credentials: Credentials, phone: str, *, timeout: float) -> ActionOutcome:
        outcome, answer = await self._action(credentials, "pairing_code", {"phone": phone}, timeout=timeout)
        if answer is None or not outcome.ok:
            return outcome
        code = pairing_code(answer.payload)
        connected, found_phone = already_connected(answer.payload)
        if code:
            return ActionOutcome(ok=True, pairing_code=code, message=outcome.message)
        if connected:
            return ActionOutcome(ok=True, connected=True, phone=found_phone, message=outcome.message)
        return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail="pairing-code answer without a code")

    async def restart(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        return (await self._action(credentials, "restart", {}, timeout=timeout))[0]

    async def disconnect(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        return (await self._action(credentials, "disconnect", {}, timeout=timeout))[0]

    async def set_webhook(self, credentials: Credentials, kind: str, url: str, *, timeout: float) -> ActionOutcome:
        if kind not in WEBHOOK_KINDS:
            return ActionOutcome(ok=False, failure=Reason.INVALID_ARGUMENT, detail=f"unknown webhook kind {kind!r}")
        endpoint = WEBHOOK_UPDATE_ENDPOINT.format(kind=kind)
        outcome, _answer = await self._call(credentials, "PUT", endpoint, {}, webhook_body(url), timeout=timeout)
        return outcome

    async def webhook_urls(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        outcome, answer = await self._action(credentials, "fetch_instance", {}, timeout=timeout)
        if answer is None or not outcome.ok:
            return outcome
        return ActionOutcome(ok=True, webhook_urls=configured_webhook_urls(answer.payload))

    async def webhook_logs(
        self, credentials: Credentials, *, page: int, per_page: int, timeout: float
    ) -> WebhookLogPage:
        outcome, answer = await self._action(
            credentials, "webhook_logs", {"page": str(page), "per_page": str(per_page)}, timeout=timeout
        )
        if answer is None or not outcome.ok:
            return WebhookLogPage([], failure=outcome.failure or Reason.PROVIDER_ERROR, detail=outcome.detail)
        entries, pages = parse_webhook_logs(answer.payload)
        return WebhookLogPage([LoggedEvent(e.log_id, e.payload) for e in entries], total_pages=pages)

    async def check_number(self, credentials: Credentials, phone: str, *, timeout: float) -> NumberCheck:
        """W-API's number check (`GET contacts/phone-exists?phoneNumber=`; the field is
        `phoneNumber`, not `phone`): whether `phone` is on WhatsApp, the form WhatsApp has it in
        and its LID. Never retried; every outcome a value."""
        outcome, answer = await self._call(
            credentials, "GET", "contacts/phone-exists", {"phoneNumber": phone}, None, timeout=timeout
        )
        if answer is None or not outcome.ok or not isinstance(answer.payload, dict):
            return NumberCheck(phone, None, failure=outcome.failure or Reason.PROVIDER_ERROR, detail=outcome.detail)
        exists = answer.payload.get("exists")
        if not isinstance(exists, bool):
            return NumberCheck(phone, None, failure=Reason.PROVIDER_ERROR, detail="answer without 'exists'")
        canonical = "".join(ch for ch in str(answer.payload.get("phoneNumber") or "") if ch.isdigit())
        lid = answer.payload.get("lid")
        return NumberCheck(phone, exists, canonical=canonical or phone, lid=lid if isinstance(lid, str) else "")

    async def _action(
        self, credentials: Credentials, name: str, values: dict[str, str], *, timeout: float
    ) -> tuple[ActionOutcome, _Answer | None]:
        spec = ACTION_TABLE[name]
        params = dict(spec.fixed)
        params.update({spec.query[k]: v for k, v in values.items() if k in spec.query})
        return await self._call(credentials, spec.method, spec.endpoint, params, None, timeout=timeout)

    async def _call(
        self,
        credentials: Credentials,
        method: str,
        endpoint: str,
        params: dict[str, str],
        json_body: dict[str, Any] | None,
        *,
        timeout: float,
    ) -> tuple[ActionOutcome, _Answer | None]:
        """One request of an operator action: never retried (a pairing request twice may get the
        number banned), every outcome a value, the token scrubbed from every text."""
        scrub = _Scrubber(credentials.token)
        if not credentials.instance_id:
            return ActionOutcome(ok=False, failure=Reason.INSTANCE_NOT_FOUND, detail="instance id is empty"), None
        if not _HEADER_SAFE.match(credentials.token):
            return ActionOutcome(ok=False, failure=Reason.TOKEN_INVALID, detail="token is not a valid header"), None
        url = self._url(endpoint, credentials.instance_id)
        if params:
            url = url.copy_merge_params(params)
        try:
            answer = await self._exchange_url(method, url, credentials, json_body=json_body, budget=timeout)
        except (httpx.TimeoutException, TimeoutError):
            return ActionOutcome(
                ok=False, failure=Reason.PROVIDER_TIMEOUT, detail=f"no answer within {timeout:.1f}s"
            ), None
        except (httpx.HTTPError, OSError) as exc:
            return ActionOutcome(ok=False, failure=Reason.PROVIDER_UNAVAILABLE, detail=scrub(_exc_detail(exc))), None
        status = answer.status
        if answer.is_html:
            return ActionOutcome(
                ok=False, failure=Reason.PROVIDER_UNAVAILABLE, detail=_html_detail(answer, scrub)
            ), None
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

    # --- HTTP ------------------------------------------------------------------------------------

    def _url(self, endpoint: str, instance_id: str) -> httpx.URL:
        """The absolute URL, parsed once per (endpoint, instance): httpx parses a relative URL,
        its merge with base_url and the query params anew on every request (~60 µs, profiled)."""
        key = (endpoint, instance_id)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= 4096:  # bounded: instances come and go
                self._urls.clear()
            url = httpx.URL(f"{self._base_url}/{endpoint.lstrip('/')}", params={INSTANCE_QUERY_PARAM: instance_id})
            self._urls[key] = url
        return url

    async def _exchange(
        self,
        method: str,
        endpoint: str,
        credentials: Credentials,
        *,
        json_body: dict[str, Any] | None,
        budget: float,
    ) -> _Answer:
        """One request; the whole exchange (connect, write, read) fits in `budget` seconds."""
        url = self._url(endpoint, credentials.instance_id)
        return await self._exchange_url(method, url, credentials, json_body=json_body, budget=budget)

    async def _exchange_url(
        self,
        method: str,
        url: httpx.URL,
        credentials: Credentials,
        *,
        json_body: dict[str, Any] | None,
        budget: float,
    ) -> _Answer:
        headers = {"Authorization": f"Bearer {credentials.token}"}
        async with (
            asyncio.timeout(budget),
            self._client.stream(
                method,
                url,
                json=json_body,
                headers=headers,
                timeout=httpx.Timeout(budget),
            ) as response,
        ):
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size >= MAX_ANSWER_BYTES:
                    break
            raw = b"".join(chunks)[:MAX_ANSWER_BYTES]
            return _classify(response.status_code, response.headers.get("content-type", ""), raw)


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
