"""What every provider's webhook route shares: the app keys, the body cap and the secret check
(the W-API bridge and the Z-API/Evolution routes both read them; neither imports the other)."""

from __future__ import annotations

import hmac

from aiohttp import web

from services.app.ingest import Ingest

MAX_BODY = 256 * 1024
INGEST_KEY = web.AppKey("ingest", Ingest)
SECRET_KEY = web.AppKey("secret", str)


def authorized(request: web.Request) -> bool:
    """The path's secret (or the X-Webhook-Secret header) is the configured one; no secret: open."""
    expected = request.app[SECRET_KEY]
    if not expected:
        return True
    given = request.match_info.get("secret") or request.headers.get("X-Webhook-Secret") or ""
    return hmac.compare_digest(given.encode(), expected.encode())
