"""Z-API and Evolution API simulators: the same behaviours as the W-API simulator, each in its
provider's own dialect, on loopback (docs/providers.md has the shapes and their sources).

One aiohttp app answers both dialects:
- Z-API: `/instances/<id>/token/<token>/<method>` (+ `Client-Token` header when the instance has one);
- Evolution: `/<group>/<action>/<instance name>` with the `apikey` header.

Behaviours (per instance): `healthy` (connected with a phone; server ack, delivery, read),
`session_incomplete` (connected without a phone: Z-API `/device` empty, Evolution `open` without
`ownerJid`), `dropped_webhooks` (acked and delivered, but the status webhooks never posted: only
Evolution's findStatusMessage tells), `silent_stall` (sends accepted, nothing ever acked),
`acking_stall` (server ack only, never delivered), `pairing` (disconnected until the pairing
code is typed), `restore` (Z-API:
"You need to restore the session."), `disconnected`. Quirks kept on purpose: Evolution answers
`restart` of a closed instance with HTTP 200 `{"error": true}`, and a send to a number not on
WhatsApp with 400 `exists: false`; Z-API posts its status webhook with an `ids[]` array and
answers every send with 200 (queued), the outcome coming through its send webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from adapters.simulator.dialect_payloads import (
    BEHAVIOURS,
    EVOLUTION,
    RESTORE_ERROR,
    ZAPI,
    DialectInstance,
)
from adapters.simulator.dialect_state import _body
from adapters.simulator.evolution_dialect import EvolutionDialect
from adapters.simulator.zapi_dialect import ZapiDialect

__all__ = ["BEHAVIOURS", "EVOLUTION", "RESTORE_ERROR", "ZAPI", "DialectInstance", "DialectSimulator"]


class DialectSimulator(ZapiDialect, EvolutionDialect):
    """Both dialects on one loopback port; tests and the CLI drive it through its methods."""

    # --- lifecycle --------------------------------------------------------------------------

    def attach(self, app: web.Application) -> None:
        """Adds both dialects (and the control routes under /_dialects/) to `app`; the
        W-API simulator mounts them on its own app, so one process speaks all three."""
        app.router.add_route("*", "/instances/{iid}/token/{token}/{method:.+}", self._zapi)
        app.router.add_get("/instance/fetchInstances", self._evolution_fetch)
        app.router.add_route("*", "/{group:instance|message|chat|webhook}/{action}/{name}", self._evolution)
        app.router.add_post("/_dialects/instances", self._control_add)
        app.router.add_post("/_dialects/instances/{iid}/{what:behaviour|emit|pairing}", self._control_instance)
        app.router.add_get("/_dialects/instances/{iid}", self._control_show)
        app.on_cleanup.append(self._cleanup)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        self.attach(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server: Any = site._server
        self._port = int(server.sockets[0].getsockname()[1])

    def bound_to(self, port: int) -> None:
        """The port of the app this was attached to (for root_url)."""
        self._port = port

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # runs _cleanup
            self._runner = None

    # --- control API (another process drives the simulator over HTTP) ------------------------

    async def _control_add(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict):
            return web.json_response({"error": "JSON object expected"}, status=400)
        try:
            instance = self.add_instance(
                str(body.get("provider", "")),
                str(body["instance_id"]),
                str(body["token"]),
                behaviour=str(body.get("behaviour", "healthy")),
                phone=str(body.get("phone", "5511987650000")),
                client_token=str(body.get("client_token", "")),
                webhook_url=str(body.get("webhook_url", "")),
            )
        except (KeyError, ValueError) as error:
            return web.json_response({"error": f"bad instance: {error}"}, status=400)
        return web.json_response({"instance_id": instance.instance_id, "provider": instance.provider})

    async def _control_instance(self, request: web.Request) -> web.Response:
        iid, what = request.match_info["iid"], request.match_info["what"]
        if iid not in self.instances:
            return web.json_response({"error": "no such instance"}, status=404)
        body = await _body(request)
        body = body if isinstance(body, dict) else {}
        try:
            if what == "behaviour":
                self.set_behaviour(iid, str(body.get("behaviour", "")))
                return web.json_response({"behaviour": self.instances[iid].behaviour})
            if what == "pairing":
                return web.json_response({"paired": await self.type_pairing_code(iid, str(body.get("code", "")))})
            kind = str(body.pop("kind", ""))
            return web.json_response({"posted": await self.emit(iid, kind, **body)})
        except (KeyError, ValueError, TypeError) as error:
            return web.json_response({"error": str(error)}, status=400)

    async def _control_show(self, request: web.Request) -> web.Response:
        instance = self.instances.get(request.match_info["iid"])
        if instance is None:
            return web.json_response({"error": "no such instance"}, status=404)
        return web.json_response(
            {
                "provider": instance.provider,
                "behaviour": instance.behaviour,
                "sends": instance.sends,
                "webhooks": instance.configured,
                "pairing_code": instance.pairing_code,
            }
        )

    async def __aenter__(self) -> DialectSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"
