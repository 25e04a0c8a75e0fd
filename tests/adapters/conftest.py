"""Fixtures for the W-API adapter and simulator tests: everything over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from adapters.simulator import Simulator, WebhookReceiver
from adapters.wapi.client import WapiProvider
from statemachine.domain import Credentials

# The tests spell these out too; keep them in step.
INSTANCE = "3B6XIW-ZTS923-GEAY6V"
TOKEN = "S3cr3t-T0ken-9f8e7d6c5b4a"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    rec = WebhookReceiver()
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(delivered_after=0.05, read_after=0.1)
    await simulator.start(host="127.0.0.1", port=0)
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def provider(sim: Simulator) -> AsyncIterator[WapiProvider]:
    wapi = WapiProvider(sim.base_url, probe_attempts=2)
    try:
        yield wapi
    finally:
        await wapi.aclose()


@pytest.fixture
def creds() -> Credentials:
    return Credentials(INSTANCE, TOKEN)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
