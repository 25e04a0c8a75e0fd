"""The aiohttp-backed httpx transport, against a real HTTP server on 127.0.0.1: it must behave like
httpx's own transport where the W-API adapter depends on it (bodies, headers, timeouts, errors)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from adapters.wapi.client import MAX_ANSWER_BYTES, WapiProvider
from adapters.wapi.transport import AiohttpTransport
from statemachine.domain import Credentials, MessageKind, OutboundMessage, Reason, Text

CREDS = Credentials("INST-1", "tok-transport-123")
TEXT = OutboundMessage(MessageKind.TEXT, "5511988887777", Text("Olá"))


class Server:
    """A loopback server whose answer each test chooses; it records what reached it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.handler: Any = None
        self.connections_closed = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.path_qs, dict(request.headers), body))
        result: web.StreamResponse = await self.handler(request)
        return result


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_request_reaches_the_server_as_httpx_built_it(server: tuple[Server, str]) -> None:
    state, base = server

    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"messageId": "3EB0AAA"})

    state.handler = ok
    async with WapiProvider(base) as wapi:
        outcome = await wapi.send(CREDS, TEXT, timeout=2.0)
    assert outcome.provider_message_id == "3EB0AAA"
    (path, headers, body) = state.requests[0]
    assert path == "/message/send-text?instanceId=INST-1"
    assert headers["Authorization"] == "Bearer tok-transport-123"
    assert headers["User-Agent"].startswith("wapi-guard/")
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["message"] == "Olá"


async def test_gzip_answer_is_decoded_once(server: tuple[Server, str]) -> None:
    state, base = server

    async def gzipped(_request: web.Request) -> web.Response:
        raw = gzip.compress(json.dumps({"messageId": "3EB0GZ"}).encode())
        return web.Response(body=raw, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    state.handler = gzipped
    async with WapiProvider(base) as wapi:
        assert (await wapi.send(CREDS, TEXT, timeout=2.0)).provider_message_id == "3EB0GZ"


async def test_a_huge_answer_is_read_only_up_to_the_cap(server: tuple[Server, str]) -> None:
    state, base = server
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(400):  # 26 MB offered, bounded
            try:
                await response.write(chunk)
            except (ConnectionError, RuntimeError):
                break
            sent += len(chunk)
        return response

    state.handler = endless
    async with WapiProvider(base) as wapi:
        outcome = await wapi.send(CREDS, TEXT, timeout=5.0)
    assert outcome.failure is Reason.PROVIDER_UNAVAILABLE  # a 200 without JSON is not a send
    assert outcome.provider_message_id is None
    assert sent < 400 * 65536  # the client stopped reading: the body was streamed, not slurped
    assert MAX_ANSWER_BYTES < 400 * 65536


async def test_no_answer_within_the_budget_is_a_provider_timeout(server: tuple[Server, str]) -> None:
    state, base = server

    async def hang(_request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({"messageId": "late"})

    state.handler = hang
    async with WapiProvider(base) as wapi:
        started = asyncio.get_running_loop().time()
        outcome = await wapi.send(CREDS, TEXT, timeout=0.3)
        elapsed = asyncio.get_running_loop().time() - started
    assert outcome.failure is Reason.PROVIDER_TIMEOUT
    assert elapsed < 2.0
    assert len(state.requests) == 1  # one attempt, never retried


async def test_waiting_for_a_pooled_connection_is_a_connect_timeout_not_a_send(server: tuple[Server, str]) -> None:
    state, base = server
    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 5)
        return web.json_response({"messageId": "3EB0SLOW"})

    state.handler = slow
    transport = AiohttpTransport(max_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        first = asyncio.create_task(client.post(f"{base}/a", json={}, timeout=5.0))
        await asyncio.sleep(0.2)
        with pytest.raises(httpx.ConnectTimeout):
            await client.post(f"{base}/b", json={}, timeout=httpx.Timeout(5.0, pool=0.2, connect=0.1))
        release.set()
        assert (await first).json() == {"messageId": "3EB0SLOW"}
    assert [path for path, _, _ in state.requests] == ["/a"]  # the second request never left


async def test_refused_connection_is_an_httpx_connect_error(closed_port: int) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{closed_port}/", timeout=2.0)


async def test_server_dropping_the_connection_is_an_httpx_transport_error(server: tuple[Server, str]) -> None:
    state, base = server

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.1)
        return web.Response()

    state.handler = drop
    async with WapiProvider(base) as wapi:
        outcome = await wapi.send(CREDS, TEXT, timeout=2.0)
    assert outcome.failure is Reason.PROVIDER_UNAVAILABLE
    assert "tok-transport-123" not in outcome.detail


async def test_http_proxy_from_the_environment_is_used(
    server: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, proxy = server

    async def as_proxy(request: web.Request) -> web.Response:
        return web.json_response({"messageId": "3EB0PROXY", "seen": str(request.url)})

    state.handler = as_proxy
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "")
    async with WapiProvider("http://wapi.invalid/v1") as wapi:  # a host nobody can resolve: only the proxy
        outcome = await wapi.send(CREDS, TEXT, timeout=2.0)
    assert outcome.provider_message_id == "3EB0PROXY"
    assert state.requests[0][1]["Authorization"] == "Bearer tok-transport-123"


async def test_no_proxy_hosts_are_reached_directly(server: tuple[Server, str], monkeypatch: pytest.MonkeyPatch) -> None:
    state, base = server

    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"messageId": "3EB0DIRECT"})

    state.handler = ok
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would refuse: must not be used
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with WapiProvider(base) as wapi:
        assert (await wapi.send(CREDS, TEXT, timeout=2.0)).provider_message_id == "3EB0DIRECT"
