"""The W-API simulator: an aiohttp app speaking W-API's HTTP contract on loopback, plus its driver.

Same paths (``/v1/message/send-*``, ``/v1/instance/*``, ``/v1/webhook/update-webhook-*``), same auth
(``Authorization: Bearer <token>`` checked per instance, ``instanceId`` query parameter required), same
payload shapes (see payloads.py). Each instance has a *behaviour* that decides how it answers, and
the simulator posts W-API-shaped webhooks to a configured URL. A small JSON control API under
``/_sim/`` drives it from another process.

The parts, one layer on the other: state.py (instances, recipients, posting), the W-API dialect
(wapi_webhooks.py: the webhooks it posts; wapi_pairing.py: pairing, restart, webhook log;
wapi_routes.py: the /v1 endpoints), control.py (/_sim/) and, here, the lifecycle (start/stop) and
the aiohttp app. Another provider's dialect goes in modules of its own next to the W-API ones.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Final

from aiohttp import ClientSession, ClientTimeout, web

from adapters.simulator.control import ControlApi
from adapters.simulator.state import API_PREFIX, SimInstance, SimRecipient, SimRequest

__all__ = ["API_PREFIX", "SimInstance", "SimRecipient", "SimRequest", "Simulator", "build_app"]

logger = logging.getLogger("wapi_guard.simulator")

WEBHOOK_POST_TIMEOUT: Final = 5.0
SHUTDOWN_TIMEOUT: Final = 1.0
MAX_BODY_BYTES: Final = 64 * 1024 * 1024


class Simulator(ControlApi):
    """A W-API stand-in on loopback. See the module docstring and payloads.BEHAVIOURS."""

    def __repr__(self) -> str:
        return f"Simulator(base_url={self.base_url if self._port else None!r}, instances={len(self._instances)})"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._host = host
        self._port = int(sock.getsockname()[1])
        self.dialects.bound_to(self._port)
        self._session = ClientSession(timeout=ClientTimeout(total=WEBHOOK_POST_TIMEOUT))
        runner = web.AppRunner(
            build_app(self), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        logger.debug("simulator listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stops serving, wakes hanging handlers and cancels every pending webhook task."""
        self._closed = True
        self._stopping.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Simulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def build_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)  # base64 media bodies are large
    app.router.add_route("*", API_PREFIX + "/{tail:.*}", sim.handle_api)
    app.router.add_route("*", "/_sim/{tail:.*}", sim.handle_control)
    sim.dialects.attach(app)  # Z-API and Evolution (adapters/simulator/dialects.py)
    return app
