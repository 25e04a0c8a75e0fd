"""Who is looking at the status page, in which language, and the answers every part of it shares.

The status page's auth: when `api_tokens` is set, every route but the static files needs a token —
HTTP Basic (any user name, the password is an API token: a browser prompts for it) or
`Authorization: Bearer`. A scoped token sees only its instances. The CSRF key of the page's forms
lives here too (an HMAC of the viewer's identity). Used by the page (status_page.py), its actions
(status_actions.py) and the bridge's /metrics.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from services.app.principals import ANONYMOUS, Principal, match_token, parse_tokens
from services.config import Settings
from services.i18n import STATUS_PAGE_TEXTS, resolve_lang

REALM = 'Basic realm="wapi-guard", charset="UTF-8"'
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def security_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The headers of every dynamic answer of the page (never cached), plus `extra`."""
    return {**SECURITY_HEADERS, "Cache-Control": "no-store", **(extra or {})}


class Csrf:
    def __init__(self, settings: Settings) -> None:
        material = b""
        if settings.api_tokens:
            material += settings.api_tokens.get_secret_value().encode()
        if settings.webhook_secret:
            material += settings.webhook_secret.get_secret_value().encode()
        # Without configured secrets the key lives as long as the process (forms then expire on restart).
        self._key = (
            hashlib.sha256(b"wapi-guard status csrf\x00" + material).digest() if material else secrets.token_bytes(32)
        )

    def token(self, principal: Principal) -> str:
        return hmac.new(self._key, principal.name.encode(), hashlib.sha256).hexdigest()

    def valid(self, request: web.Request, principal: Principal, presented: str) -> bool:
        if not hmac.compare_digest(presented.encode(), self.token(principal).encode()):
            return False
        # Browsers say where a request comes from: Sec-Fetch-Site first (the page's no-referrer
        # policy makes a form post's Origin "null"), else Origin against our own host.
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None:
            return site in ("same-origin", "none")
        origin = request.headers.get("Origin")
        if origin is not None:
            return origin != "null" and urlsplit(origin).netloc == request.host
        return True


class Viewer:
    """Authenticates a request and picks its language (the page and its actions share one)."""

    def __init__(self, settings: Settings) -> None:
        self.tokens = parse_tokens(settings.api_tokens.get_secret_value()) if settings.api_tokens else []

    def principal(self, request: web.Request) -> Principal | None:
        """None: no valid credential. Basic (password = API token) or Bearer; constant time."""
        if not self.tokens:
            return ANONYMOUS
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        presented = ""
        if scheme.lower() == "bearer":
            presented = value.strip()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                decoded = ""
            presented = decoded.partition(":")[2]
        return match_token(self.tokens, presented)

    def lang(self, request: web.Request) -> str:
        return resolve_lang(request.query.get("lang"), request.headers.get("Accept-Language"))

    def denied(self, lang: str, *, as_json: bool) -> web.Response:
        headers = security_headers({"WWW-Authenticate": REALM})
        text = STATUS_PAGE_TEXTS[lang]["auth"]
        if as_json:
            return web.json_response({"error": "unauthenticated", "message": text}, status=401, headers=headers)
        return web.Response(text=text, status=401, headers=headers, content_type="text/plain")

    def headers(self) -> dict[str, str]:
        return security_headers()
