"""E2E fixtures: a W-API simulator and a real App (gRPC + webhook bridge) wired to it, on loopback."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from adapters.simulator import Simulator
from services.bootstrap import App
from services.config import Settings
from tests.e2e.stack import Stack

StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def make_stack(database_url: str) -> AsyncIterator[StackFactory]:
    """Starts a Simulator and an App wired to it; keyword arguments override Settings fields,
    `sim_options` the Simulator's receipt delays."""
    started: list[Stack] = []

    async def start(*, sim_options: dict[str, float] | None = None, **overrides: Any) -> Stack:
        delays = {"delivered_after": 0.05, "read_after": 0.1, **(sim_options or {})}
        sim = Simulator(delivered_after=delays["delivered_after"], read_after=delays["read_after"])
        await sim.start(host="127.0.0.1", port=0)
        secret = secrets.token_urlsafe(16)
        values: dict[str, Any] = {
            "grpc_port": 0,
            "http_port": 0,
            "database_url": database_url,
            "wapi_base_url": sim.base_url,
            "webhook_secret": secret,
            "probe_interval": 0,
            "sweep_interval": 0,
            "send_timeout": 0.5,
            "probe_timeout": 0.5,
            "shutdown_grace": 0.5,
            "log_format": "text",
        }
        values.update(overrides)
        try:
            app = await App.start(Settings(**values))  # the real WapiProvider
        except BaseException:
            await sim.stop()
            raise
        assert app.http_port
        stack = Stack(app, sim, secret, grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}"))
        sim.set_webhook_url(stack.webhook_url)
        started.append(stack)
        return stack

    try:
        yield start
    finally:
        for stack in reversed(started):
            await stack.close()


@pytest.fixture
async def stack(make_stack: StackFactory) -> Stack:
    return await make_stack()
