"""Z-API and Evolution API behind the same truth rules, end to end: gRPC + the HTTP bridge against
each provider's simulator dialect (adapters/simulator/dialects.py) on loopback.

Every test runs once per provider: an incomplete session (each provider's own shape) blocks
sends with SESSION_INCOMPLETE; a connection webhook without a phone never yields CONNECTED; a
healthy send is QUEUED (the provider only took it) and moves to SENT → DELIVERED → READ from that
provider's own acks; a failure becomes FAILED with the normalized reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest

from adapters.simulator.dialects import EVOLUTION, ZAPI, DialectSimulator
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, instance_health_pb2_grpc, send_pb2, send_pb2_grpc
from services.app.provider_reconcile import PulledStatuses
from services.bootstrap import App
from services.config import Settings
from tests import polling
from tests.integration.harness import rich_error

RECIPIENT = "5515981121710"
PHONE = "5511987654321"
PROVIDER_PB = {ZAPI: common_pb2.PROVIDER_ZAPI, EVOLUTION: common_pb2.PROVIDER_EVOLUTION}
STATE = common_pb2.MessageState


@dataclass
class ProviderStack:
    app: App
    sim: DialectSimulator
    secret: str
    channel: grpc.aio.Channel
    provider: str

    @property
    def health(self) -> instance_health_pb2_grpc.InstanceHealthServiceAsyncStub:
        return instance_health_pb2_grpc.InstanceHealthServiceStub(self.channel)

    @property
    def send(self) -> send_pb2_grpc.SendServiceAsyncStub:
        return send_pb2_grpc.SendServiceStub(self.channel)

    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}/webhooks/{self.provider}/{self.secret}"

    async def add(
        self, instance_id: str, behaviour: str, *, hooked: bool = True, **kw: Any
    ) -> common_pb2.InstanceHealth:
        """Registers a simulated instance; `hooked`: its webhooks already point at the bridge."""
        token = secrets.token_urlsafe(12)
        self.sim.add_instance(
            self.provider,
            instance_id,
            token,
            behaviour=behaviour,
            phone=PHONE,
            webhook_url=self.webhook_url() if hooked else "",
            **kw,
        )
        request = instance_health_pb2.RegisterInstanceRequest(
            instance_id=instance_id,
            name=instance_id,
            token=token,
            provider=PROVIDER_PB[self.provider],
            base_url=self.sim.root_url if self.provider == EVOLUTION else "",
            client_token=kw.get("client_token", ""),
        )
        return await self.health.RegisterInstance(request)

    async def state_of(self, instance_id: str) -> common_pb2.InstanceHealth:
        return await self.health.GetInstanceHealth(
            instance_health_pb2.GetInstanceHealthRequest(instance_id=instance_id)
        )

    async def message(self, message_id: str) -> common_pb2.Message:
        return await self.send.GetMessage(send_pb2.GetMessageRequest(message_id=message_id))

    async def wait_message(self, message_id: str, state: common_pb2.MessageState.ValueType) -> common_pb2.Message:
        async def check() -> common_pb2.Message | None:
            msg = await self.message(message_id)
            return msg if msg.state == state else None

        return await polling.eventually(check, f"message {message_id} in state {state}", 5.0)


async def start_stack(provider: str, database_url: str, **overrides: Any) -> ProviderStack:
    sim = DialectSimulator()
    await sim.start()
    secret = secrets.token_urlsafe(16)
    values: dict[str, Any] = {
        "grpc_port": 0,
        "http_port": 0,
        "database_url": database_url,
        "wapi_base_url": sim.root_url + "/v1",
        "zapi_base_url": sim.root_url,
        "webhook_secret": secret,
        "probe_interval": 0,
        "sweep_interval": 0,
        "send_timeout": 1.0,
        "probe_timeout": 1.0,
        "shutdown_grace": 0.5,
        "log_format": "text",
    } | overrides
    try:
        app = await App.start(Settings(**values))
    except BaseException:
        await sim.stop()
        raise
    return ProviderStack(app, sim, secret, grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}"), provider)


async def stop_stack(stack: ProviderStack) -> None:
    await stack.channel.close()
    await stack.app.stop()
    await stack.sim.stop()


@pytest.fixture(params=[ZAPI, EVOLUTION])
async def pstack(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[ProviderStack]:
    stack = await start_stack(request.param, database_url)
    try:
        yield stack
    finally:
        await stop_stack(stack)


@pytest.fixture(params=[ZAPI, EVOLUTION])
async def stall_stack(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[ProviderStack]:
    """Stuck after half a second, a stall after two stuck messages (sweeps run by the test)."""
    stack = await start_stack(request.param, database_url, stuck_after=0.5, stall_threshold=2)
    try:
        yield stack
    finally:
        await stop_stack(stack)


def text(instance_id: str, key: str, to: str = RECIPIENT) -> send_pb2.SendMessageRequest:
    return send_pb2.SendMessageRequest(
        instance_id=instance_id, to=to, idempotency_key=key, text=send_pb2.TextContent(body="Olá!")
    )


async def test_incomplete_session_blocks_sends(pstack: ProviderStack) -> None:
    h = await pstack.add("inst-incomplete", "session_incomplete")
    assert (h.state, h.reason, h.phone_number, h.can_send) == (
        common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE,
        "SESSION_INCOMPLETE",
        "",
        False,
    )
    assert h.provider == PROVIDER_PB[pstack.provider]
    listed = await pstack.health.ListInstances(instance_health_pb2.ListInstancesRequest())
    assert [(i.instance_id, i.provider) for i in listed.instances] == [
        ("inst-incomplete", PROVIDER_PB[pstack.provider])
    ]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pstack.send.SendMessage(text("inst-incomplete", "k1"))
    rich = rich_error(refused.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_INCOMPLETE")
    assert pstack.sim.instances["inst-incomplete"].sends == []  # never reached the provider


async def test_connection_webhook_without_phone_never_connects(pstack: ProviderStack) -> None:
    h = await pstack.add("inst-flap", "healthy")
    assert (h.state, h.phone_number) == (common_pb2.INSTANCE_STATE_CONNECTED, PHONE)
    await pstack.sim.emit("inst-flap", "connected_without_phone")

    async def incomplete() -> common_pb2.InstanceHealth | None:
        found = await pstack.state_of("inst-flap")
        return found if found.state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE else None

    found = await polling.eventually(incomplete, "SESSION_INCOMPLETE after a phoneless connection webhook", 5.0)
    assert found.can_send is False
    # A connection webhook WITH the phone brings it back.
    await pstack.sim.emit("inst-flap", "connected")

    async def connected() -> common_pb2.InstanceHealth | None:
        found = await pstack.state_of("inst-flap")
        return found if found.state == common_pb2.INSTANCE_STATE_CONNECTED else None

    assert (await polling.eventually(connected, "CONNECTED again", 5.0)).phone_number == PHONE


async def test_healthy_send_is_queued_then_follows_the_providers_acks(pstack: ProviderStack) -> None:
    await pstack.add("inst-ok", "healthy")
    sent = await pstack.send.SendMessage(text("inst-ok", "k1"))
    # The provider only took it: QUEUED with its id, never SENT on the HTTP answer.
    assert sent.state == STATE.Value("MESSAGE_STATE_QUEUED")
    assert sent.provider_message_id == pstack.sim.instances["inst-ok"].sends[0]["messageId"]
    done = await pstack.wait_message(sent.id, STATE.Value("MESSAGE_STATE_READ"))
    path = [STATE.Name(h.to_state).removeprefix("MESSAGE_STATE_") for h in done.history if h.applied]
    # The provider's webhooks may overtake each other (no ordering promise): forward-only means a
    # late SENT/DELIVERED after READ is recorded, not applied. Each status is in the history once.
    assert path[:2] == ["PENDING", "QUEUED"]
    assert path[-1] == "READ"
    assert path == sorted(path, key=["PENDING", "QUEUED", "SENT", "DELIVERED", "READ"].index)
    reported = [STATE.Name(h.to_state).removeprefix("MESSAGE_STATE_") for h in done.history[2:]]
    assert sorted(reported) == ["DELIVERED", "READ", "SENT"]


async def test_acking_stall_stops_at_sent(pstack: ProviderStack) -> None:
    await pstack.add("inst-ack", "acking_stall")
    sent = await pstack.send.SendMessage(text("inst-ack", "k1"))
    await pstack.wait_message(sent.id, STATE.Value("MESSAGE_STATE_SENT"))
    silent = await pstack.add("inst-silent", "silent_stall")
    assert silent.state == common_pb2.INSTANCE_STATE_CONNECTED
    quiet = await pstack.send.SendMessage(text("inst-silent", "k2"))
    assert quiet.state == STATE.Value("MESSAGE_STATE_QUEUED")  # no ack: never claimed SENT


async def test_not_on_whatsapp_fails_with_the_normalized_reason(pstack: ProviderStack) -> None:
    await pstack.add("inst-fail", "healthy")
    pstack.sim.not_on_whatsapp.add("5511900000000")
    if pstack.provider == EVOLUTION:
        # Evolution checks the number inside the send: 400 with exists:false, answered at once.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pstack.send.SendMessage(text("inst-fail", "k1", to="5511900000000"))
        assert rich_error(refused.value).reason == "NOT_ON_WHATSAPP"
        return
    # Z-API queues it (200) and reports the failure through its send webhook.
    sent = await pstack.send.SendMessage(text("inst-fail", "k1", to="5511900000000"))
    assert sent.state == STATE.Value("MESSAGE_STATE_QUEUED")
    failed = await pstack.wait_message(sent.id, STATE.Value("MESSAGE_STATE_FAILED"))
    assert (failed.failure_reason, failed.failure_detail) == ("NOT_ON_WHATSAPP", "Phone number does not exist")


async def test_failure_status_webhook_fails_the_message(pstack: ProviderStack) -> None:
    await pstack.add("inst-err", "silent_stall")
    sent = await pstack.send.SendMessage(text("inst-err", "k1"))
    mid = sent.provider_message_id
    if pstack.provider == ZAPI:
        await pstack.sim.emit("inst-err", "send_failed", message_id=mid, error="Timeout on send message")
        expected = "PROVIDER_UNCERTAIN"  # a provider timeout: the message may still go out
    else:
        await pstack.sim.emit("inst-err", "status", message_ids=[mid], status="ERROR", to=RECIPIENT)
        expected = "PROVIDER_ERROR"
    failed = await pstack.wait_message(sent.id, STATE.Value("MESSAGE_STATE_FAILED"))
    assert failed.failure_reason == expected
    # A late ack cannot undo FAILED (forward-only).
    await pstack.sim.emit("inst-err", "status", message_ids=[mid], status="READ", to=RECIPIENT)
    assert (await pstack.message(sent.id)).state == STATE.Value("MESSAGE_STATE_FAILED")


async def test_pairing_brings_the_instance_back(pstack: ProviderStack) -> None:
    h = await pstack.add("inst-pair", "pairing")
    assert h.state == common_pb2.INSTANCE_STATE_DISCONNECTED
    answer = await pstack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id="inst-pair", phone_number="+" + PHONE)
    )
    assert answer.pairing_code
    assert await pstack.sim.type_pairing_code("inst-pair", answer.pairing_code.replace("-", ""))

    async def connected() -> common_pb2.InstanceHealth | None:
        found = await pstack.state_of("inst-pair")
        return found if found.state == common_pb2.INSTANCE_STATE_CONNECTED else None

    assert (await polling.eventually(connected, "CONNECTED after pairing", 5.0)).phone_number == PHONE


async def test_provider_specific_session_reasons(pstack: ProviderStack) -> None:
    if pstack.provider == ZAPI:
        h = await pstack.add("inst-restore", "restore")
        assert (h.state, h.reason) == (common_pb2.INSTANCE_STATE_DISCONNECTED, "SESSION_NEEDS_RESTORE")
        # The remedy is Z-API's restore-session (restart uses it first); the session comes back.
        await pstack.health.RestartInstance(instance_health_pb2.InstanceRequest(instance_id="inst-restore"))

        async def connected() -> common_pb2.InstanceHealth | None:
            found = await pstack.state_of("inst-restore")
            return found if found.state == common_pb2.INSTANCE_STATE_CONNECTED else None

        await polling.eventually(connected, "CONNECTED after restore-session", 5.0)
        return
    h = await pstack.add("inst-gone", "healthy")
    assert h.state == common_pb2.INSTANCE_STATE_CONNECTED
    await pstack.sim.emit("inst-gone", "logged_out")

    async def logged_out() -> common_pb2.InstanceHealth | None:
        found = await pstack.state_of("inst-gone")
        return found if found.reason == "LOGGED_OUT" else None

    assert (await polling.eventually(logged_out, "LOGGED_OUT", 5.0)).state == common_pb2.INSTANCE_STATE_DISCONNECTED
    # Evolution's quirk: restart of a closed instance is HTTP 200 {"error": true}: a FAILED action.
    pstack.sim.set_behaviour("inst-gone", "disconnected")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await pstack.health.RestartInstance(instance_health_pb2.InstanceRequest(instance_id="inst-gone"))
    assert failed.value.code() != grpc.StatusCode.OK


async def test_zapi_waiting_message_blocks_sends_until_the_session_reconnects(pstack: ProviderStack) -> None:
    """Z-API's inbound `waitingMessage: true` (a message the phone could not decrypt) degrades the
    instance: sends are refused with WAITING_FOR_MESSAGE until a connection webhook with the phone."""
    if pstack.provider != ZAPI:
        pytest.skip("waitingMessage is Z-API's own inbound flag")
    await pstack.add("inst-wait", "healthy")
    await pstack.sim.emit("inst-wait", "received")  # an ordinary inbound message changes nothing
    assert (await pstack.state_of("inst-wait")).state == common_pb2.INSTANCE_STATE_CONNECTED
    await pstack.sim.emit("inst-wait", "received_waiting")

    async def degraded() -> common_pb2.InstanceHealth | None:
        found = await pstack.state_of("inst-wait")
        return found if found.reason == "WAITING_FOR_MESSAGE" else None

    found = await polling.eventually(degraded, "DEGRADED after a waiting message", 5.0)
    assert (found.state, found.can_send, found.phone_number) == (common_pb2.INSTANCE_STATE_DEGRADED, False, PHONE)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pstack.send.SendMessage(text("inst-wait", "k1"))
    rich = rich_error(refused.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WAITING_FOR_MESSAGE")
    assert pstack.sim.instances["inst-wait"].sends == []
    await pstack.sim.emit("inst-wait", "connected")

    async def connected() -> common_pb2.InstanceHealth | None:
        found = await pstack.state_of("inst-wait")
        return found if found.state == common_pb2.INSTANCE_STATE_CONNECTED else None

    await polling.eventually(connected, "CONNECTED after the session reconnected", 5.0)
    assert (await pstack.send.SendMessage(text("inst-wait", "k2"))).state == STATE.Value("MESSAGE_STATE_QUEUED")


async def test_a_zapi_customer_who_writes_sair_is_opted_out(pstack: ProviderStack) -> None:
    """The opt-out keyword is read from each provider's own inbound shape, not only W-API's: a Z-API
    customer who answers "Sair" is refused at the next send (RECIPIENT_OPTED_OUT), no provider call."""
    if pstack.provider != ZAPI:
        pytest.skip("the simulator posts customers' messages in Z-API's dialect")
    await pstack.add("inst-optout", "healthy")
    await pstack.sim.emit("inst-optout", "received", to=RECIPIENT, text="Sair")  # answered once stored
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await pstack.send.SendMessage(text("inst-optout", "after-sair"))
    rich = rich_error(refused.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECIPIENT_OPTED_OUT")
    assert pstack.sim.instances["inst-optout"].sends == []


async def test_silent_stall_is_blocked(stall_stack: ProviderStack) -> None:
    """The provider takes every send (QUEUED) and never acks: stuck, then the instance stalls and
    stops accepting sends, although its session probes healthy."""
    h = await stall_stack.add("inst-stall", "silent_stall")
    assert h.state == common_pb2.INSTANCE_STATE_CONNECTED
    sent = [await stall_stack.send.SendMessage(text("inst-stall", f"s{i}")) for i in range(2)]
    assert {m.state for m in sent} == {STATE.Value("MESSAGE_STATE_QUEUED")}
    await asyncio.sleep(0.7)
    await stall_stack.app.jobs.sweep_once()

    async def stalled() -> common_pb2.InstanceHealth | None:
        found = await stall_stack.state_of("inst-stall")
        return found if found.reason == "DELIVERY_STALLED" else None

    found = await polling.eventually(stalled, "DELIVERY_STALLED", 5.0)
    assert (found.state, found.can_send) == (common_pb2.INSTANCE_STATE_DEGRADED, False)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stall_stack.send.SendMessage(text("inst-stall", "s9"))
    assert rich_error(refused.value).reason == "DELIVERY_STALLED"
    assert len(stall_stack.sim.instances["inst-stall"].sends) == 2  # the third never left


async def test_webhooks_are_configured_at_the_providers_own_bridge_path(pstack: ProviderStack) -> None:
    """With --public-url, registration points the provider's webhooks at /webhooks/<provider>/<secret>
    through its own API (Z-API update-webhook-*, Evolution webhook/set) and reads them back."""
    bridge = f"http://127.0.0.1:{pstack.app.http_port}"
    recovery = pstack.app.recovery
    assert recovery is not None
    recovery.config = dataclasses.replace(recovery.config, public_url=bridge)
    h = await pstack.add("inst-hooks", "healthy", hooked=False)
    sim_instance = pstack.sim.instances["inst-hooks"]
    expected = f"{bridge}/webhooks/{pstack.provider}/{pstack.secret}"
    assert set(sim_instance.configured.values()) == {expected}
    assert sim_instance.webhook_url == expected  # the simulator posts where wapi-guard configured
    assert h.webhooks_state == "CONFIGURED"
    checked = await pstack.health.CheckWebhooks(instance_health_pb2.InstanceRequest(instance_id="inst-hooks"))
    assert checked.configured
    assert pstack.secret not in checked.url
    # Drift: the provider now points elsewhere; the check says so.
    for kind in sim_instance.configured:
        sim_instance.configured[kind] = "https://elsewhere.example/hook"
    drifted = await pstack.health.CheckWebhooks(instance_health_pb2.InstanceRequest(instance_id="inst-hooks"))
    assert not drifted.configured
    # And the configured path carries the provider's statuses end to end.
    for kind in sim_instance.configured:
        sim_instance.configured[kind] = expected
    sent = await pstack.send.SendMessage(text("inst-hooks", "k1"))
    await pstack.wait_message(sent.id, STATE.Value("MESSAGE_STATE_READ"))


async def test_cli_adds_a_zapi_and_an_evolution_instance(database_url: str) -> None:
    """`wapi-guard instances add … --provider zapi|evolution`: the provider shows in the answer;
    the instance token and Z-API's client token come from the environment and are never echoed."""
    from tests.ui.conftest import cli

    stack = await start_stack(ZAPI, database_url)
    try:
        server = ("--server", f"127.0.0.1:{stack.app.grpc_port}")
        zapi_token, client_token, evo_token = "zt-SECRET-123", "ct-SECRET-456", "ek-SECRET-789"
        stack.sim.add_instance(ZAPI, "ZAPI-1", zapi_token, client_token=client_token, phone=PHONE)
        stack.sim.add_instance(EVOLUTION, "evo-1", evo_token, behaviour="session_incomplete")
        added = await cli(
            "instances", "add", "ZAPI-1", "--provider", "zapi", "--json", *server,
            env={"WAPIGUARD_WAPI_TOKEN": zapi_token, "WAPIGUARD_CLIENT_TOKEN": client_token},
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["instance"]["state"] == "CONNECTED"
        assert json.loads(added.stdout)["instance"]["provider"] == "ZAPI"
        evo = await cli(
            "instances", "add", "evo-1", "--provider", "evolution", "--base-url", stack.sim.root_url, "--json", *server,
            env={"WAPIGUARD_WAPI_TOKEN": evo_token},
        )  # fmt: skip
        assert evo.returncode == 0, evo.stderr
        assert json.loads(evo.stdout)["instance"]["state"] == "SESSION_INCOMPLETE"
        missing = await cli(
            "instances", "add", "evo-2", "--provider", "evolution", *server, env={"WAPIGUARD_WAPI_TOKEN": evo_token}
        )
        assert missing.returncode != 0
        assert "--base-url" in missing.stdout + missing.stderr
        health = await stack.state_of("ZAPI-1")
        assert health.provider == common_pb2.PROVIDER_ZAPI
        for output in (added, evo, missing):
            for secret in (zapi_token, client_token, evo_token):
                assert secret not in output.stdout + output.stderr
    finally:
        await stop_stack(stack)


async def test_one_simulator_speaks_all_three_dialects_and_every_incomplete_session_is_blocked(
    database_url: str,
) -> None:
    """`wapi-guard simulator` serves W-API, Z-API and Evolution on one port; its control API adds
    dialect instances; an incomplete session (each provider's own shape) blocks sends on all three."""
    import aiohttp

    from adapters.simulator import Simulator

    sim = Simulator()
    await sim.start()
    secret = secrets.token_urlsafe(16)
    app = await App.start(
        Settings(
            grpc_port=0,
            http_port=0,
            database_url=database_url,
            wapi_base_url=sim.base_url,
            zapi_base_url=sim.root_url,
            webhook_secret=secret,
            probe_interval=0,
            sweep_interval=0,
            send_timeout=1.0,
            probe_timeout=1.0,
            shutdown_grace=0.5,
            log_format="text",
        )
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        sim.add_instance("WAPI-INCOMPLETE", "wapi-token", "session_incomplete")
        async with aiohttp.ClientSession() as http:
            for provider, instance_id in ((ZAPI, "ZAPI-INCOMPLETE"), (EVOLUTION, "evo-incomplete")):
                body = {"provider": provider, "instance_id": instance_id, "token": f"{provider}-token"}
                async with http.post(
                    f"{sim.root_url}/_dialects/instances", json=body | {"behaviour": "session_incomplete"}
                ) as r:
                    assert r.status == 200, await r.text()
        health = instance_health_pb2_grpc.InstanceHealthServiceStub(channel)
        send = send_pb2_grpc.SendServiceStub(channel)
        registrations: list[tuple[str, str, common_pb2.Provider.ValueType, str]] = [
            ("WAPI-INCOMPLETE", "wapi-token", common_pb2.PROVIDER_UNSPECIFIED, ""),
            ("ZAPI-INCOMPLETE", "zapi-token", common_pb2.PROVIDER_ZAPI, ""),
            ("evo-incomplete", "evolution-token", common_pb2.PROVIDER_EVOLUTION, sim.root_url),
        ]
        for instance_id, token, kind, base_url in registrations:
            h = await health.RegisterInstance(
                instance_health_pb2.RegisterInstanceRequest(
                    instance_id=instance_id, token=token, provider=kind, base_url=base_url
                )
            )
            assert h.state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE, instance_id
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await send.SendMessage(text(instance_id, "k"))
            assert rich_error(refused.value).reason == "SESSION_INCOMPLETE", instance_id
        assert sim.sends("WAPI-INCOMPLETE") == []
        assert sim.dialects.instances["ZAPI-INCOMPLETE"].sends == []
        assert sim.dialects.instances["evo-incomplete"].sends == []
    finally:
        await channel.close()
        await app.stop()
        await sim.stop()


def test_simulator_command_line_takes_dialect_instances() -> None:
    from adapters.simulator.cli import build_parser

    args = build_parser().parse_args(
        ["--provider-instance", "zapi:Z1:tok:healthy", "--provider-instance", "evolution:e1:key:pairing:5511987654321"]
    )
    assert [(p, s.instance_id, s.behaviour, s.phone) for p, s in args.provider_instance] == [
        ("zapi", "Z1", "healthy", None),
        ("evolution", "e1", "pairing", "5511987654321"),
    ]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--provider-instance", "waha:Z1:tok:healthy"])


async def test_evolution_statuses_it_never_posted_are_reconciled(database_url: str) -> None:
    """Evolution stored the acks but dropped their webhooks: ReconcileEvents pulls them from
    chat/findStatusMessage for the messages stuck past the window, through the normal ingest."""
    stack = await start_stack(EVOLUTION, database_url, stuck_after=0.3)
    try:
        await stack.add("evo-drop", "dropped_webhooks")
        sent = await stack.send.SendMessage(text("evo-drop", "k1"))
        await asyncio.sleep(0.5)
        assert (await stack.message(sent.id)).state == STATE.Value("MESSAGE_STATE_QUEUED")  # nothing was posted
        await stack.app.jobs.sweep_once()  # past the window: stuck
        await stack.health.ReconcileEvents(instance_health_pb2.ReconcileEventsRequest(instance_id="evo-drop"))
        done = await stack.message(sent.id)
        path = [STATE.Name(h.to_state).removeprefix("MESSAGE_STATE_") for h in done.history if h.applied]
        assert path == ["PENDING", "QUEUED", "SENT", "DELIVERED", "READ"]
        # A second round finds nothing new: the pulled statuses are deduplicated.
        recovery = stack.app.recovery
        assert recovery is not None
        assert recovery.pull_statuses is not None
        again = cast("list[PulledStatuses]", await recovery.pull_statuses("evo-drop"))
        assert [(r.instance_id, r.applied) for r in again] == [("evo-drop", 0)]
        assert (await stack.message(sent.id)).version == done.version
    finally:
        await stop_stack(stack)


async def test_another_replica_routes_an_instance_it_did_not_register(database_url: str) -> None:
    """Replica B never saw the registration made through replica A: it reads the instance's
    provider from the store on first use, and sends to Z-API, not W-API."""
    a = await start_stack(ZAPI, database_url)
    b_app: App | None = None
    try:
        b_app = await App.start(a.app.settings)  # up before the registration: nothing to load at start
        await a.add("ZAPI-SHARED", "healthy")
        b = ProviderStack(b_app, a.sim, a.secret, grpc.aio.insecure_channel(f"127.0.0.1:{b_app.grpc_port}"), ZAPI)
        try:
            sent = await b.send.SendMessage(text("ZAPI-SHARED", "via-b"))
            assert sent.state == STATE.Value("MESSAGE_STATE_QUEUED")
            assert [s["messageId"] for s in a.sim.instances["ZAPI-SHARED"].sends] == [sent.provider_message_id]
        finally:
            await b.channel.close()
    finally:
        if b_app is not None:
            await b_app.stop()
        await stop_stack(a)
