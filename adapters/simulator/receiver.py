"""A tiny webhook receiver on loopback: what wapi-guard's webhook endpoint looks like to the simulator.

Keeps every JSON body posted to it, so tests can assert on exactly what W-API (or the simulator) sent.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web


class WebhookReceiver:
    def __init__(self, path: str = "/hook/secret-path") -> None:
        self.path = path
        self.bodies: list[Any] = []
        self.paths: list[str] = []
        self.url = ""
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            await runner.cleanup()
            raise
        bound = int(sock.getsockname()[1])
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self.url = f"http://{host}:{bound}{self.path}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> WebhookReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body: Any = await request.json()
        except ValueError:
            body = await request.text()
        self.paths.append(request.path)
        self.bodies.append(body)
        self._changed.set()
        return web.json_response({"ok": True})

    async def wait_for(self, count: int, timeout: float = 2.0) -> list[Any]:
        """Wait (bounded by `timeout`) until at least `count` bodies arrived; returns all of them."""
        async with asyncio.timeout(timeout):
            while len(self.bodies) < count:
                self._changed.clear()
                await self._changed.wait()
        return list(self.bodies)
