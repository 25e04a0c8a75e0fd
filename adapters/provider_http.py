"""One JSON-over-HTTP call to a provider (Z-API, Evolution), as a value: the shared plumbing of
the non-W-API provider clients.

Rules (the same as adapters/wapi/client.py): one attempt per call, nothing retried here; provider
trouble is a value, never an exception; the credentials (Z-API puts its token in the URL path,
Evolution its apikey in a header) never reach a detail, a log line or an exception text.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import httpx

from statemachine.domain import Reason

MAX_ANSWER_BYTES: Final = 1_000_000
MAX_DETAIL: Final = 300
_USER_AGENT: Final = "wapi-guard/0.1"
_URL = re.compile(r"https?://\S+")


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer (status, parsed JSON or None), or `failure` when none came."""

    status: int = 0
    payload: Any = None
    failure: Reason | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None and 200 <= self.status < 300


def scrub(text: str, *secrets: str) -> str:
    """`text` without any of `secrets` and without URLs (a Z-API URL carries the token)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _URL.sub("<url>", text)[:MAX_DETAIL]


class JsonHttp:
    """An httpx client shared by every instance of one provider kind."""

    def __init__(self, provider: str, *, traced: bool, max_connections: int = 100) -> None:
        self._provider = provider
        self._traced = traced
        self._client = httpx.AsyncClient(
            headers={"User-Agent": _USER_AGENT, "Accept": "application/json"},
            limits=httpx.Limits(max_connections=max_connections),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def instrument(self, tracer_provider: object) -> None:
        """Client spans for every provider call, only where the URL carries no credential: the
        instrumentation records the full URL, and Z-API's URL holds the instance token."""
        if not self._traced:
            return
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        HTTPXClientInstrumentor.instrument_client(self._client, tracer_provider=tracer_provider)  # type: ignore[arg-type]

    async def call(
        self,
        method: str,
        url: str,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        sending: bool = False,
    ) -> Answer:
        """One request. A timeout on a send is PROVIDER_TIMEOUT (it may still go out), on anything
        else TIMEOUT_OR_GATEWAY; an unreachable provider is PROVIDER_UNAVAILABLE /
        TIMEOUT_OR_GATEWAY likewise."""
        try:
            response = await self._client.request(
                method,
                url,
                headers=headers,
                json=body,
                params=params,
                timeout=httpx.Timeout(max(timeout, 0.01)),
            )
            raw = response.content[:MAX_ANSWER_BYTES]
        except httpx.TimeoutException:
            reason = Reason.PROVIDER_TIMEOUT if sending else Reason.TIMEOUT_OR_GATEWAY
            return Answer(failure=reason, detail=f"{self._provider} did not answer in time")
        except httpx.HTTPError as error:
            reason = Reason.PROVIDER_UNAVAILABLE if sending else Reason.TIMEOUT_OR_GATEWAY
            detail = scrub(f"{self._provider} unreachable: {type(error).__name__}", *secrets)
            return Answer(failure=reason, detail=detail)
        payload: Any = None
        if raw.strip():
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
        return Answer(status=response.status_code, payload=payload)


def error_text(payload: Any, *secrets: str) -> str:
    """The provider's own words in an error body (Z-API `error`/`message`, Evolution
    `response.message[]`), scrubbed and cut."""
    if isinstance(payload, dict):
        for key in ("error", "message"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return scrub(value, *secrets)
        response = payload.get("response")
        if isinstance(response, dict):
            message = response.get("message")
            if isinstance(message, list):
                return scrub("; ".join(m if isinstance(m, str) else json.dumps(m) for m in message), *secrets)
            if isinstance(message, str):
                return scrub(message, *secrets)
    return ""


def png_of_data_url(data_url: str) -> bytes:
    """The PNG bytes of a QR code answered as a data URL (or bare base64); empty when unreadable."""
    _head, _sep, tail = data_url.partition("base64,")
    try:
        return base64.b64decode(tail or data_url, validate=False)
    except (binascii.Error, ValueError):
        return b""
