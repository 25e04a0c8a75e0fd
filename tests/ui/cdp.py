"""A minimal Chrome DevTools Protocol driver for headless Chromium (aiohttp websockets, no extra package).

browser = await Chromium.launch(CHROMIUM, tmp_path / "profile")
page = await browser.new_page()
await page.send("Page.navigate", url="http://127.0.0.1:8080/status")
await page.wait_for("document.readyState === 'complete'")
await browser.close()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1280,1000",
)

Handler = Callable[[dict[str, Any]], Coroutine[Any, Any, Any]]


class CDPError(RuntimeError):
    pass


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _open_log(profile: Path) -> BinaryIO:
    profile.mkdir(parents=True, exist_ok=True)
    return (profile.parent / "chromium.log").open("wb")


class Page:
    """One page target: commands with replies, and event handlers."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: dict[str, list[Handler]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CDPError(f"{data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            for handler in self._handlers.get(data.get("method", ""), []):
                task = asyncio.create_task(handler(data.get("params", {})))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("DevTools connection closed"))

    def on(self, method: str, handler: Handler) -> None:
        self._handlers.setdefault(method, []).append(handler)

    async def send(self, method: str, timeout: float = 10, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        async with asyncio.timeout(timeout):
            return await future

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10, what: str = "") -> Any:
        """Polls a JavaScript expression until it is truthy; fails with its last value after `timeout`."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or expression} (last value {value!r})")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))
        return path

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        for task in [self._reader, *self._tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Chromium:
    def __init__(self, process: asyncio.subprocess.Process, port: int, session: aiohttp.ClientSession) -> None:
        self.process = process
        self.port = port
        self.session = session
        self.pages: list[Page] = []

    @classmethod
    async def launch(cls, binary: str, profile: Path, *, timeout: float = 15) -> Chromium:
        log = await asyncio.to_thread(_open_log, profile)
        try:
            process = await asyncio.create_subprocess_exec(
                binary, *FLAGS, f"--user-data-dir={profile}", "about:blank", stdout=log, stderr=log
            )
        finally:
            log.close()
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        port = 0
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"chromium exited with {process.returncode}; see {profile.parent / 'chromium.log'}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                port = int((await asyncio.to_thread(port_file.read_text)).splitlines()[0])
                break
            await asyncio.sleep(0.05)
        if not port:
            process.kill()
            await process.wait()
            raise RuntimeError("chromium did not open its DevTools port in time")
        return cls(process, port, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)))

    async def new_page(self) -> Page:
        async with self.session.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as response:
            target = await response.json(content_type=None)
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        page = Page(self.session, ws)
        self.pages.append(page)
        return page

    async def close(self) -> None:
        for page in self.pages:
            with contextlib.suppress(Exception):
                await page.close()
        await self.session.close()
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
