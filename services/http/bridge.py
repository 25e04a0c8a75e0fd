"""HTTP webhook bridge: W-API posts here; the raw body goes to the Webhook service's core.

Runs in the serve process, on the same event loop as gRPC. Answers 2xx once the event is
stored (W-API then has no reason to retry) and 503 when it could not be stored (it should).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from adapters.deadline import request_scope
from services.app.errors import classify
from services.app.ingest import Ingest
from services.app.recovery import Recovery
from services.app.send_policy import SendPolicies
from services.app.sending import Sending
from services.config import Settings
from services.http.provider_webhooks import add_provider_routes
from services.http.status_page import STATUS_PAGE_KEY, add_status_routes
from services.http.status_snapshot import StatusReads
from services.http.webhook_keys import INGEST_KEY, MAX_BODY, SECRET_KEY, authorized
from services.observability.telemetry import Telemetry
from statemachine.errors import InvalidPayload
from statemachine.ports import SubscriptionStore

log = logging.getLogger("wapi_guard.bridge")
METRICS_OPEN_KEY = web.AppKey("metrics_open", bool)
TELEMETRY_KEY = web.AppKey("telemetry", Telemetry)


@dataclass(frozen=True)
class Surface:
    """What the HTTP surface is built over (the composition root, services/bootstrap.py, builds it):
    the webhook ingest, the metrics, the status page's reads, and its actions (retry, recovery)."""

    ingest: Ingest
    telemetry: Telemetry
    reads: StatusReads
    sending: Sending
    recovery: Recovery | None = None
    subscriptions: SubscriptionStore | None = None
    # The send policy's form on the page (SendPolicies, and the opt-outs' "lists changed" hook).
    policies: SendPolicies | None = None
    lists_changed: Callable[[], None] | None = None


async def receive(request: web.Request) -> web.Response:
    if not authorized(request):
        return web.json_response({"error": "not found"}, status=404)
    if request.content_length is not None and request.content_length > MAX_BODY:
        return web.json_response({"error": "payload too large", "reason": "PAYLOAD_TOO_LARGE"}, status=413)
    ctype = request.content_type
    if ctype not in ("application/json", "text/plain", "application/octet-stream", ""):
        return web.json_response(
            {"error": f"unsupported content type {ctype}", "reason": "UNSUPPORTED_MEDIA_TYPE"}, status=415
        )
    try:
        body = await request.read()  # the whole body, however it was chunked; capped by client_max_size
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": "payload too large", "reason": "PAYLOAD_TOO_LARGE"}, status=413)
    except Exception:
        return web.json_response({"error": "could not read body"}, status=400)
    headers = {k: v for k, v in request.headers.items()}
    try:
        with request_scope(None):  # bounded by --db-timeout: W-API gets a 503 and retries
            result = await request.app[INGEST_KEY].ingest(body, headers)
    except InvalidPayload as bad:
        # Stored with its reason; a retry of the same bytes cannot help.
        return web.json_response(
            {"stored": True, "event_id": bad.event_id, "route": "UNROUTABLE", "reason": bad.event_reason},
            status=202,
        )
    except Exception as error:
        if classify(error) is None:
            log.exception("webhook ingest failed")
        else:
            log.warning("webhook not stored: %s", type(error).__name__)
        return web.json_response({"error": "not stored, retry later", "reason": "STORAGE_UNAVAILABLE"}, status=503)
    return web.json_response(
        {
            "stored": True,
            "event_id": result.event_id,
            "route": result.route.value,
            "duplicate": result.duplicate,
            "reason": str(result.reason),
        },
        status=200,
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Behind the status page's auth (its labels name every instance), unless opened by flag.
    Only an unscoped token may read it: a scoped one would see other owners' instance ids."""
    if not request.app[METRICS_OPEN_KEY]:
        principal = request.app[STATUS_PAGE_KEY].principal(request)
        if principal is None:
            return web.json_response(
                {"error": "unauthenticated", "reason": "UNAUTHENTICATED"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="wapi-guard metrics"'},
            )
        if principal.instances is not None:
            return web.json_response({"error": "permission denied", "reason": "PERMISSION_DENIED"}, status=403)
    body = request.app[TELEMETRY_KEY].prometheus_text()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def build_app(settings: Settings, parts: Surface) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[INGEST_KEY] = parts.ingest
    app[TELEMETRY_KEY] = parts.telemetry
    app[SECRET_KEY] = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    app[METRICS_OPEN_KEY] = settings.metrics_open
    app.router.add_post("/webhooks/wapi/{secret}", receive)
    app.router.add_post("/webhooks/wapi", receive)
    add_provider_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    add_status_routes(
        app,
        settings,
        parts.reads,
        parts.sending,
        parts.recovery,
        parts.subscriptions,
        policies=(parts.policies, parts.lists_changed) if parts.policies is not None else None,
    )
    return app


async def start_bridge(settings: Settings, parts: Surface) -> tuple[web.AppRunner, int]:
    # Bounded by the same grace as gRPC: a stuck webhook post cannot hold a shutdown for 60 s.
    runner = web.AppRunner(build_app(settings, parts), access_log=None, shutdown_timeout=settings.shutdown_grace)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.http_port or 0, reuse_port=settings.reuse_port or None)
    await site.start()
    server: Any = site._server
    port = int(server.sockets[0].getsockname()[1])
    return runner, port
