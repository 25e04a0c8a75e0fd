"""The bridge's Z-API and Evolution webhook paths: /webhooks/zapi/<secret>, /webhooks/evolution/<secret>.

Same contract as W-API's path (services/http/bridge.py): the secret in the path (or the
X-Webhook-Secret header), 2xx once stored, 503 when it could not be stored (the provider retries).
Each provider's dialect parses the body into the domain's events; a body that names several
messages (Z-API's `ids[]`) is stored as one event per message.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from adapters.evolution import webhooks as evolution
from adapters.zapi import webhooks as zapi
from services.app.errors import classify
from services.http.webhook_keys import INGEST_KEY, MAX_BODY, authorized
from statemachine.errors import InvalidPayload
from statemachine.ports import WebhookParser

log = logging.getLogger("wapi_guard.bridge")

DIALECTS: Final[dict[str, tuple[Any, WebhookParser]]] = {
    zapi.NAME: (zapi.split, zapi.parse),
    evolution.NAME: (evolution.split, evolution.parse),
}


async def receive_provider(request: web.Request) -> web.Response:
    if not authorized(request):
        return web.json_response({"error": "not found"}, status=404)
    dialect = DIALECTS.get(request.match_info.get("provider", ""))
    if dialect is None:
        return web.json_response({"error": "not found"}, status=404)
    split, parse = dialect
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.json_response({"error": "payload too large", "reason": "PAYLOAD_TOO_LARGE"}, status=413)
    if request.content_type not in ("application/json", "text/plain", "application/octet-stream", ""):
        return web.json_response(
            {"error": f"unsupported content type {request.content_type}", "reason": "UNSUPPORTED_MEDIA_TYPE"},
            status=415,
        )
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "payload too large", "reason": "PAYLOAD_TOO_LARGE"}, status=413)
    except Exception:
        return web.json_response({"error": "could not read body"}, status=400)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("apikey", "authorization")}
    ingest = request.app[INGEST_KEY]
    results: list[dict[str, Any]] = []
    for part in split(body):
        try:
            result = await ingest.ingest(part, headers, parse=parse)
        except InvalidPayload as bad:
            results.append({"event_id": bad.event_id, "route": "UNROUTABLE", "reason": bad.event_reason})
            continue
        except Exception as error:
            if classify(error) is None:
                log.exception("webhook ingest failed")
            else:
                log.warning("webhook not stored: %s", type(error).__name__)
            # What was stored stays stored (each part is deduplicated): a retry re-applies nothing twice.
            return web.json_response({"error": "not stored, retry later", "reason": "STORAGE_UNAVAILABLE"}, status=503)
        results.append(
            {
                "event_id": result.event_id,
                "route": result.route.value,
                "duplicate": result.duplicate,
                "reason": str(result.reason),
            }
        )
    status = 202 if all(r["route"] == "UNROUTABLE" for r in results) else 200
    first = results[0] if results else {}
    return web.json_response({"stored": True, **first, "events": results}, status=status)


def add_provider_routes(app: web.Application) -> None:
    app.router.add_post("/webhooks/{provider:zapi|evolution}/{secret}", receive_provider)
    app.router.add_post("/webhooks/{provider:zapi|evolution}", receive_provider)
