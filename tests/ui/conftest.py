"""UI fixtures: the W-API simulator and a real App (gRPC + HTTP bridge with the status page) on loopback,
and a runner for the `wapi-guard` command line through its real entry point."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from adapters.simulator import Simulator
from services.api.wapiguard.v1 import instance_health_pb2_grpc, send_pb2, send_pb2_grpc
from services.bootstrap import App
from services.config import Settings
from statemachine.domain import InstanceRecord, Plan
from tests.integration.harness import wire_webhooks

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

AVENTURA = "3B6XIW-ZTS923-GEAY6V"
INCOMPLETE = "LITE-4IW93E-MGVYDW"
RECIPIENT = "5515981121710"
MASKED = "5515•••••1710"
# Secrets that must never reach a page, an API answer or the terminal.
WAPI_TOKENS = {AVENTURA: "wapi-instance-token-AVENTURA-0001", INCOMPLETE: "wapi-instance-token-LITE-0002"}
ADMIN = "admin-token-0123456789abcdef"
SCOPED = "crm-token-abcdef0123456789"
API_TOKENS = f"admin:{ADMIN},crm:{SCOPED}@{INCOMPLETE}"


@dataclass
class UiStack:
    app: App
    sim: Simulator
    secret: str
    channel: grpc.aio.Channel
    send: send_pb2_grpc.SendServiceAsyncStub = field(init=False)
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub = field(init=False)
    stopped: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.send = send_pb2_grpc.SendServiceStub(self.channel)
        self.health = instance_health_pb2_grpc.InstanceHealthServiceStub(self.channel)

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.channel.close()
        await self.app.stop(grace=0.5)
        await self.sim.stop()

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    @property
    def secrets(self) -> list[str]:
        """Every secret string of this stack (tests check none of them leaks)."""
        return [*WAPI_TOKENS.values(), ADMIN, SCOPED, self.secret]

    async def add(
        self, instance_id: str, name: str, *, behaviour: str = "healthy", plan: Plan = Plan.PRO, wired: bool = True
    ) -> InstanceRecord:
        """`wired`: the simulator posts to this bridge, recorded as `webhooks configure` leaves it
        (see tests.e2e.stack.wire_webhooks); False: webhooks UNCONFIGURED, as with no --public-url."""
        self.sim.add_instance(instance_id, WAPI_TOKENS[instance_id], behaviour=behaviour, plan=plan.value)
        record = await self.app.instances.register(instance_id, name, WAPI_TOKENS[instance_id], plan)
        if not wired:
            return record
        await wire_webhooks(self.app, instance_id)
        return await self.app.instances.health(instance_id)

    async def add_both(self) -> None:
        await self.add(AVENTURA, "Aventura")
        await self.add(INCOMPLETE, "Loja LITE", behaviour="session_incomplete", plan=Plan.LITE)

    async def send_text(self, instance_id: str, key: str, token: str | None = None) -> Any:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        request = send_pb2.SendMessageRequest(
            instance_id=instance_id, to=RECIPIENT, idempotency_key=key, text=send_pb2.TextContent(body=key)
        )
        return await self.send.SendMessage(request, metadata=metadata, timeout=10)


StackFactory = Callable[..., Awaitable[UiStack]]


@pytest.fixture
async def make_stack(database_url: str) -> AsyncIterator[StackFactory]:
    started: list[UiStack] = []

    async def start(**overrides: Any) -> UiStack:
        sim = Simulator(delivered_after=0.05, read_after=0.1)
        await sim.start(host="127.0.0.1", port=0)
        secret = secrets.token_urlsafe(16)
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": 0,
            "database_url": database_url,
            "wapi_base_url": sim.base_url,
            "webhook_secret": secret,
            "probe_interval": 0,
            "sweep_interval": 0,
            "send_timeout": 2.0,
            "probe_timeout": 2.0,
            "shutdown_grace": 0.5,
            "log_level": "WARNING",
            "log_format": "text",
        }
        values.update(overrides)
        try:
            app = await App.start(Settings(**values))
        except BaseException:
            await sim.stop()
            raise
        sim.set_webhook_url(f"http://127.0.0.1:{app.http_port}/webhooks/wapi/{secret}")
        stack = UiStack(app, sim, secret, grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}"))
        started.append(stack)
        return stack

    try:
        yield start
    finally:
        for stack in reversed(started):
            await stack.stop()


@pytest.fixture
async def stack(make_stack: StackFactory) -> UiStack:
    return await make_stack()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m services.cli …` in a thread, so the in-process server keeps answering meanwhile."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WAPIGUARD_")}
    environment.update({"NO_COLOR": "1", "PYTHONIOENCODING": "utf-8"})
    environment.update(env or {})
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        cwd=REPO,
        env=environment,
        check=False,
    )
