"""Status page served by the webhook bridge's HTTP server (routes and live updates; the parts: status_viewer.py
who is looking, status_snapshot.py what they may see, status_views.py the JSON and HTML views,
status_actions.py the per-instance actions).

    GET /status                  the page (server-rendered; works without JavaScript)
    GET /status/api/snapshot     the same data as JSON (labels in the page's language)
    GET /status/api/events       Server-Sent Events: `snapshot` (changed sections, as HTML fragments
                                 rendered here), `ping` (nothing changed) and `unavailable` events
    GET /status/static/<file>    the page's CSS and JavaScript (public: they hold no data)

Live updates: each event stream subscribes to `Instances.subscribe(include_current=True)` (instance
changes from any replica) and re-reads the snapshot on every change and every REFRESH_SECONDS (stuck
and failed messages have no change feed). All text is rendered and escaped in status_views.py.

Auth: when `api_tokens` is set, every route but the static files needs a token — HTTP Basic (any
user name, the password is an API token: a browser prompts for it) or `Authorization: Bearer`. A
scoped token sees only its instances. Instance W-API tokens are never read here: every query goes
through Instances.list_instances / MessageQueries.list_messages / the transition log, none of which selects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

from aiohttp import web

from services.app.errors import classify
from services.app.held_counts import Held
from services.app.principals import Principal
from services.app.recovery import Recovery
from services.app.send_policy import SendPolicies
from services.app.send_protection import Protection
from services.app.sending import Sending
from services.config import Settings
from services.http.status_actions import StatusActions, add_action_routes
from services.http.status_policy import PolicyAction
from services.http.status_snapshot import REFRESH_SECONDS, Snapshot, StatusReads, build_snapshot
from services.http.status_viewer import SECURITY_HEADERS, Csrf, Viewer
from services.http.status_viewer import security_headers as _headers
from services.http.status_views import render_page, render_sections, snapshot_json
from services.http.status_views import text as _t
from services.i18n import iso
from statemachine.ports import SubscriptionStore

log = logging.getLogger("wapi_guard.status_page")

DEBOUNCE_SECONDS = 0.05  # a burst of instance changes becomes one snapshot
MAX_STREAMS = 32  # concurrent event streams per process
STATIC_FILES = {"status.css": "text/css", "status.js": "text/javascript"}
SECTIONS = ("summary", "instances", "messages", "changes")


@dataclass(slots=True, eq=False)
class _Stream:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False


class StatusPage:
    def __init__(
        self,
        settings: Settings,
        reads: StatusReads,
        recovery: Recovery | None = None,
        subscriptions: SubscriptionStore | None = None,
    ) -> None:
        self.reads = reads
        self.recovery = recovery
        self.subscriptions = subscriptions
        # The send policy's budgets and opt-outs per instance (set by the composition root).
        self.protection: Callable[[Sequence[str]], Awaitable[dict[str, Protection]]] | None = None
        # Held messages per instance (one grouped count; set by the composition root).
        self.held: Callable[[Sequence[str] | None], Awaitable[dict[str, Held]]] | None = None
        self.viewer = Viewer(settings)
        self.csrf = Csrf(settings)
        self.streams: set[_Stream] = set()
        # (open event streams, cut off as too slow): set by the composition root.
        self.event_streams: Callable[[], tuple[int, int]] | None = None
        self.policy_form = False  # the send policy's form on the cards (its route is wired)
        self.static: dict[str, bytes] = {}
        folder = resources.files("services.http").joinpath("static")
        for name in STATIC_FILES:
            try:
                self.static[name] = folder.joinpath(name).read_bytes()
            except OSError:
                log.warning("status page asset %s is missing (package data?)", name)

    # who is looking (status_viewer.Viewer)

    def principal(self, request: web.Request) -> Principal | None:
        """None: no valid credential (the bridge's /metrics asks too)."""
        return self.viewer.principal(request)

    async def _snapshot(self, principal: Principal) -> Snapshot | None:
        try:
            snap = await build_snapshot(self.reads, principal, self.subscriptions, self.protection, self.held)
            if self.recovery is not None and self.recovery.operations is not None:
                snap.csrf = self.csrf.token(principal)
                snap.policy_form = self.policy_form
            if self.event_streams is not None:
                snap.event_streams = self.event_streams()
            return snap
        except Exception as error:
            if classify(error) is None:
                log.exception("status snapshot failed")
            else:  # storage trouble: said on the page, no traceback every REFRESH_SECONDS per viewer
                log.warning("status snapshot failed: %s", type(error).__name__)
            return None

    # handlers

    async def index(self, request: web.Request) -> web.StreamResponse:
        lang = self.viewer.lang(request)
        principal = self.principal(request)
        if principal is None:
            return self.viewer.denied(lang, as_json=False)
        snap = await self._snapshot(principal)
        if snap is None:
            return web.Response(
                text=_t(lang, "unavailable"),
                status=503,
                headers=_headers({"Retry-After": "2"}),
                content_type="text/plain",
            )
        return web.Response(
            text=render_page(snap, lang),
            content_type="text/html",
            charset="utf-8",
            headers=_headers({"Content-Language": lang, "Vary": "Accept-Language, Authorization"}),
        )

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(f"/status{query}")

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        lang = self.viewer.lang(request)
        principal = self.principal(request)
        if principal is None:
            return self.viewer.denied(lang, as_json=True)
        snap = await self._snapshot(principal)
        if snap is None:
            return web.json_response(
                {"error": "unavailable", "message": _t(lang, "unavailable")},
                status=503,
                headers=_headers({"Retry-After": "2"}),
            )
        return web.json_response(
            snapshot_json(snap, lang),
            headers=_headers({"Content-Language": lang, "Vary": "Accept-Language, Authorization"}),
            dumps=lambda value: json.dumps(value, ensure_ascii=False),
        )

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = self.static.get(name)
        if body is None:
            raise web.HTTPNotFound()
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return web.Response(body=body, content_type=STATIC_FILES[name], charset="utf-8", headers=headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        lang = self.viewer.lang(request)
        principal = self.principal(request)
        if principal is None:
            return self.viewer.denied(lang, as_json=True)
        if len(self.streams) >= MAX_STREAMS:
            return web.json_response(
                {"error": "busy", "message": _t(lang, "busy")}, status=503, headers=_headers({"Retry-After": "5"})
            )
        response = web.StreamResponse(
            headers=_headers({"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"})
        )
        stream = _Stream()
        self.streams.add(stream)
        watcher = asyncio.create_task(self._watch(stream, principal), name="status-page-watch")
        try:
            await response.prepare(request)
            await response.write(b"retry: 3000\n\n")
            await self._pump(response, stream, principal, lang)
        except ConnectionResetError:
            pass  # the viewer went away
        finally:
            self.streams.discard(stream)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        return response

    async def _watch(self, stream: _Stream, principal: Principal) -> None:
        """Instance changes (from any replica) wake the stream; the current state wakes it first."""
        scope = principal.instances
        if scope is not None and not scope:
            return  # a token scoped to nothing watches nothing (an empty list would mean "all")
        ids = sorted(scope) if scope is not None else []
        while not stream.closing:
            try:
                subscription = cast(
                    AsyncGenerator[Any, None], self.reads.instances.subscribe(ids, include_current=True)
                )
                async with contextlib.aclosing(subscription) as events:
                    async for _event in events:
                        stream.wake.set()
            except Exception:
                log.warning("status page subscription failed; retrying", exc_info=True)
                await asyncio.sleep(REFRESH_SECONDS)

    async def _pump(self, response: web.StreamResponse, stream: _Stream, principal: Principal, lang: str) -> None:
        sent: dict[str, str] = {}
        seq = 0
        stream.wake.set()
        while not stream.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.wake.wait(), REFRESH_SECONDS)
            if stream.closing:
                break
            await asyncio.sleep(DEBOUNCE_SECONDS)
            stream.wake.clear()
            snap = await self._snapshot(principal)
            seq += 1
            if snap is None:
                data = {"message": _t(lang, "live_unavailable")}
                await response.write(_sse("unavailable", seq, data))
                continue
            sections = render_sections(snap, lang)
            changed = {k: v for k, v in sections.items() if sent.get(k) != v}
            generated = iso(snap.generated_at)
            if changed:
                sent.update(changed)
                await response.write(_sse("snapshot", seq, {"generated_at": generated, "html": changed}))
            else:
                await response.write(_sse("ping", seq, {"generated_at": generated}))

    async def on_shutdown(self, app: web.Application) -> None:
        """Event streams never end on their own: end them, or the bridge waits its full shutdown timeout."""
        for stream in list(self.streams):
            stream.closing = True
            stream.wake.set()


def _sse(event: str, seq: int, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\nid: {seq}\ndata: {payload}\n\n".encode()


STATUS_PAGE_KEY = web.AppKey("status_page", StatusPage)


def add_status_routes(
    app: web.Application,
    settings: Settings,
    reads: StatusReads,
    sending: Sending,
    recovery: Recovery | None = None,
    subscriptions: SubscriptionStore | None = None,
    *,
    policies: tuple[SendPolicies, Callable[[], None] | None] | None = None,
) -> None:
    """Adds the status page routes to the bridge's aiohttp application (`policies`: the send
    policy's form and its route, status_policy.py)."""
    page = StatusPage(settings, reads, recovery, subscriptions)
    app[STATUS_PAGE_KEY] = page
    if recovery is not None:
        actions = StatusActions(page.viewer, reads, sending, recovery, page.csrf)
        add_action_routes(app, actions)
        if policies is not None:
            action = PolicyAction(actions, *policies)
            app.router.add_post("/status/instances/{instance_id}/send-policy", action.set_policy)
            page.policy_form = True
    app.router.add_get("/status", page.index)
    app.router.add_get("/status/", page.redirect)
    app.router.add_get("/", page.redirect)  # a browser pointed at the bridge lands on the page
    app.router.add_get("/status/api/snapshot", page.snapshot)
    app.router.add_get("/status/api/events", page.events)
    app.router.add_get("/status/static/{name}", page.asset)
    app.on_shutdown.append(page.on_shutdown)
