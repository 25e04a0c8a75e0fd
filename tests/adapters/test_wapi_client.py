"""WapiProvider against the simulator over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx
import pytest

from adapters.simulator import GATEWAY_VARIANTS, STATUS_STYLES, Simulator
from adapters.wapi.client import WapiProvider
from statemachine.domain import (
    Credentials,
    Media,
    MessageKind,
    OutboundMessage,
    Reason,
    Text,
)

INSTANCE = "3B6XIW-ZTS923-GEAY6V"
TOKEN = "S3cr3t-T0ken-9f8e7d6c5b4a"  # as in conftest.py
PHONE = "5511999990000"
TO = "5511988887777"
SHORT = 0.2  # seconds: the timeout used where the simulator hangs
TEXT = OutboundMessage(MessageKind.TEXT, TO, Text("Olá"))


def _send_requests(sim: Simulator) -> list[Any]:
    return [r for r in sim.requests if r.path.startswith("/message/")]


def _probe_requests(sim: Simulator) -> list[Any]:
    return [r for r in sim.requests if r.path.startswith("/instance/")]


# --- sends ---------------------------------------------------------------------------------------


async def test_healthy_send_returns_the_providers_id(
    sim: Simulator, provider: WapiProvider, creds: Credentials
) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    outcome = await provider.send(creds, TEXT, timeout=2.0)
    assert outcome.failure is None
    assert outcome.http_status == 200
    assert outcome.provider_message_id is not None
    assert re.fullmatch(r"3EB0[0-9A-F]{28}", outcome.provider_message_id)
    assert outcome.provider_message_id == sim.sends(INSTANCE)[0]["message_id"]


async def test_reply_to_and_delay_reach_wapi(sim: Simulator, provider: WapiProvider, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    message = OutboundMessage(MessageKind.TEXT, TO, Text("oi"), reply_to="3EB0ABC", delay_seconds=2)
    assert (await provider.send(creds, message, timeout=2.0)).accepted
    assert sim.sends(INSTANCE)[0]["body"] == {
        "phone": TO,
        "message": "oi",
        "messageId": "3EB0ABC",
        "delayMessage": 2,
    }


@pytest.mark.parametrize(
    ("behaviour", "failure", "http_status"),
    [
        ("healthy", None, 200),
        ("session_incomplete", None, 200),  # W-API accepts; the core's instance machine blocks these
        ("silent_stall", None, 200),
        ("disconnected", Reason.PROVIDER_ERROR, 400),
        ("token_invalid", Reason.TOKEN_INVALID, 401),
        ("deleted", Reason.INSTANCE_NOT_FOUND, 404),
        ("accepted_without_id", Reason.PROVIDER_NO_MESSAGE_ID, 200),
        ("accepted_with_error", Reason.PROVIDER_ERROR, 200),
    ],
)
async def test_send_outcome_per_behaviour(
    sim: Simulator,
    provider: WapiProvider,
    creds: Credentials,
    behaviour: str,
    failure: Reason | None,
    http_status: int,
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour=behaviour)
    outcome = await provider.send(creds, TEXT, timeout=2.0)
    assert outcome.failure is failure
    assert outcome.http_status == http_status
    assert outcome.accepted is (failure is None)
    if failure is not None:
        assert outcome.provider_message_id is None
        assert outcome.detail


async def test_send_timeout_is_provider_timeout(sim: Simulator, provider: WapiProvider, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="timeout")
    started = time.monotonic()
    outcome = await provider.send(creds, TEXT, timeout=SHORT)
    assert time.monotonic() - started < SHORT + 0.5
    assert outcome.failure is Reason.PROVIDER_TIMEOUT
    assert outcome.provider_message_id is None
    assert outcome.http_status is None


async def test_send_gateway_variants_are_provider_unavailable(
    sim: Simulator, provider: WapiProvider, creds: Credentials
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="gateway_error")
    for variant in GATEWAY_VARIANTS:  # the simulator rotates through them deterministically
        outcome = await provider.send(creds, TEXT, timeout=2.0)
        assert outcome.failure is Reason.PROVIDER_UNAVAILABLE, variant.name
        assert outcome.http_status == variant.status
        assert outcome.provider_message_id is None
    assert "HTML" in (await provider.send(creds, TEXT, timeout=2.0)).detail  # 502 page again


async def test_send_wrong_token_is_token_invalid(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    outcome = await provider.send(Credentials(INSTANCE, "not-the-token"), TEXT, timeout=2.0)
    assert (outcome.failure, outcome.http_status) == (Reason.TOKEN_INVALID, 401)
    assert sim.requests[0].has_valid_auth is False


async def test_send_unknown_instance_is_instance_not_found(sim: Simulator, provider: WapiProvider) -> None:
    outcome = await provider.send(Credentials("LITE-4IW93E-MGVYDW", TOKEN), TEXT, timeout=2.0)
    assert (outcome.failure, outcome.http_status) == (Reason.INSTANCE_NOT_FOUND, 404)


async def test_send_to_unreachable_port_is_provider_unavailable(creds: Credentials, closed_port: int) -> None:
    async with WapiProvider(f"http://127.0.0.1:{closed_port}/v1") as wapi:
        outcome = await wapi.send(creds, TEXT, timeout=1.0)
    assert outcome.failure is Reason.PROVIDER_UNAVAILABLE
    assert outcome.http_status is None


async def test_lite_plan_sticker_is_refused_by_wapi(sim: Simulator, provider: WapiProvider, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN, plan="LITE")
    sticker = OutboundMessage(MessageKind.STICKER, TO, Media("https://cdn.example.com/s.webp"))
    outcome = await provider.send(creds, sticker, timeout=2.0)
    assert (outcome.failure, outcome.http_status) == (Reason.PROVIDER_ERROR, 400)


async def test_inconsistent_message_is_invalid_argument_without_any_request(
    sim: Simulator, provider: WapiProvider, creds: Credentials
) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    outcome = await provider.send(creds, OutboundMessage(MessageKind.IMAGE, TO, Text("x")), timeout=2.0)
    assert outcome.failure is Reason.INVALID_ARGUMENT
    assert sim.requests == []


@pytest.mark.parametrize("token", ["", "has space", "line\nbreak"])
async def test_unusable_token_is_token_invalid_without_any_request(
    sim: Simulator, provider: WapiProvider, token: str
) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    creds = Credentials(INSTANCE, token)
    assert (await provider.send(creds, TEXT, timeout=1.0)).failure is Reason.TOKEN_INVALID
    assert (await provider.probe(creds, timeout=1.0)).failure is Reason.TOKEN_INVALID
    assert sim.requests == []


async def test_one_shared_pool_serves_concurrent_sends(sim: Simulator, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="silent_stall")
    async with WapiProvider(sim.base_url, max_connections=4) as wapi:
        outcomes = await asyncio.gather(*(wapi.send(creds, TEXT, timeout=3.0) for _ in range(40)))
    assert all(o.accepted for o in outcomes)
    assert len({o.provider_message_id for o in outcomes}) == 40
    assert len(sim.sends(INSTANCE)) == 40


async def test_injected_transport_is_used(sim: Simulator, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.1")
    async with WapiProvider(sim.base_url, transport=transport) as wapi:
        assert (await wapi.send(creds, TEXT, timeout=2.0)).accepted
        assert (await wapi.probe(creds, timeout=2.0)).connected is True
    assert [r.path for r in sim.requests] == ["/message/send-text", "/instance/status-instance"]


# --- probes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STATUS_STYLES)
async def test_probe_each_connected_spelling_with_phone(
    sim: Simulator, provider: WapiProvider, creds: Credentials, style: str
) -> None:
    sim.add_instance(INSTANCE, TOKEN, phone=PHONE, status_style=style)
    outcome = await provider.probe(creds, timeout=2.0)
    assert (outcome.connected, outcome.phone, outcome.failure) == (True, PHONE, None)
    [request] = sim.requests
    assert (request.method, request.path, request.query) == (
        "GET",
        "/instance/status-instance",
        {"instanceId": INSTANCE},
    )
    assert request.has_valid_auth


@pytest.mark.parametrize("style", STATUS_STYLES)
async def test_probe_connected_without_phone_is_reported_as_is(
    sim: Simulator, provider: WapiProvider, creds: Credentials, style: str
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="session_incomplete", status_style=style)
    outcome = await provider.probe(creds, timeout=2.0)
    assert (outcome.connected, outcome.phone, outcome.failure) == (True, None, None)


async def test_probe_qr_is_disconnected(sim: Simulator, provider: WapiProvider, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="disconnected")
    outcome = await provider.probe(creds, timeout=2.0)
    assert (outcome.connected, outcome.failure) == (False, None)


async def test_probe_timeout_is_timeout_or_gateway_within_budget(
    sim: Simulator, provider: WapiProvider, creds: Credentials
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="timeout")
    started = time.monotonic()
    outcome = await provider.probe(creds, timeout=SHORT)
    assert time.monotonic() - started < SHORT + 0.5  # retries never exceed the budget
    assert (outcome.connected, outcome.failure) == (None, Reason.TIMEOUT_OR_GATEWAY)


async def test_probe_each_gateway_variant_is_timeout_or_gateway(sim: Simulator, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="gateway_error")
    async with WapiProvider(sim.base_url, probe_attempts=1) as wapi:
        for variant in GATEWAY_VARIANTS:
            outcome = await wapi.probe(creds, timeout=2.0)
            assert (outcome.connected, outcome.failure) == (None, Reason.TIMEOUT_OR_GATEWAY), variant.name
            assert str(variant.status) in outcome.detail
    assert len(sim.requests) == len(GATEWAY_VARIANTS)


async def test_probe_retries_gateway_trouble_up_to_probe_attempts(sim: Simulator, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="gateway_error")
    async with WapiProvider(sim.base_url, probe_attempts=3) as wapi:
        outcome = await wapi.probe(creds, timeout=2.0)
    assert outcome.failure is Reason.TIMEOUT_OR_GATEWAY
    assert [r.path for r in sim.requests] == ["/instance/status-instance"] * 3


async def test_probe_recovers_when_a_retry_succeeds(sim: Simulator, creds: Credentials) -> None:
    """Gateway trouble on the first attempt, healthy on the second: the probe says connected."""
    sim.add_instance(INSTANCE, TOKEN, behaviour="gateway_error")

    async with WapiProvider(sim.base_url, probe_attempts=2) as wapi:
        probe = asyncio.create_task(wapi.probe(creds, timeout=2.0))
        for _ in range(200):  # bounded: wait for the first attempt to be answered
            if sim.requests:
                break
            await asyncio.sleep(0.005)
        sim.set_behaviour(INSTANCE, "healthy")
        outcome = await probe
    assert (outcome.connected, outcome.phone) == (True, PHONE)
    assert len(sim.requests) == 2


@pytest.mark.parametrize(
    ("behaviour", "failure"),
    [("token_invalid", Reason.TOKEN_INVALID), ("deleted", Reason.INSTANCE_NOT_FOUND)],
)
async def test_probe_auth_and_missing_instance_are_not_retried(
    sim: Simulator, provider: WapiProvider, creds: Credentials, behaviour: str, failure: Reason
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour=behaviour)
    outcome = await provider.probe(creds, timeout=2.0)
    assert (outcome.connected, outcome.failure) == (None, failure)
    assert len(sim.requests) == 1


async def test_probe_wrong_token_is_token_invalid(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    outcome = await provider.probe(Credentials(INSTANCE, "wrong"), timeout=2.0)
    assert outcome.failure is Reason.TOKEN_INVALID


async def test_probe_unknown_instance_is_instance_not_found(sim: Simulator, provider: WapiProvider) -> None:
    outcome = await provider.probe(Credentials("NOPE-000000-000000", TOKEN), timeout=2.0)
    assert outcome.failure is Reason.INSTANCE_NOT_FOUND


async def test_probe_unreachable_port_is_timeout_or_gateway(creds: Credentials, closed_port: int) -> None:
    async with WapiProvider(f"http://127.0.0.1:{closed_port}/v1", probe_attempts=2) as wapi:
        started = time.monotonic()
        outcome = await wapi.probe(creds, timeout=1.0)
    assert time.monotonic() - started < 1.5
    assert (outcome.connected, outcome.failure) == (None, Reason.TIMEOUT_OR_GATEWAY)


def test_constructor_validates_limits() -> None:
    with pytest.raises(ValueError, match="probe_attempts"):
        WapiProvider(probe_attempts=0)
    with pytest.raises(ValueError, match="max_connections"):
        WapiProvider(max_connections=0)
