"""The numbered steps of `wapi-guard demo` (services/cli/demo.py runs them): register both
instances, send through each, the same incomplete-session block on Z-API and Evolution API, the
learned stall test and its clear, the pairing-code recovery. Each
step talks to the running `serve` over the public gRPC API and records what it expected and got."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters.simulator import Simulator
from adapters.simulator.dialects import EVOLUTION, ZAPI
from services.api.wapiguard.v1 import (
    common_pb2,
    events_pb2,
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
)

AVENTURA = "3B6XIW-ZTS923-GEAY6V"
INCOMPLETE = "LITE-4IW93E-MGVYDW"
ZAPI_INCOMPLETE = "3C1F0A9E2B7D4E61A5B8C0D2E4F6A8B1"  # a Z-API instance id (hex, as Z-API issues them)
EVOLUTION_INCOMPLETE = "loja-norte"  # an Evolution instance name (self-hosted: the operator picks it)
# Per provider: the simulator's dialect, the gRPC enum, the label, the instance and its Client-Token.
OTHER_PROVIDERS = (
    (ZAPI, common_pb2.PROVIDER_ZAPI, "Z-API", ZAPI_INCOMPLETE, "demo-client-token"),
    (EVOLUTION, common_pb2.PROVIDER_EVOLUTION, "Evolution", EVOLUTION_INCOMPLETE, ""),
)
RECIPIENT = "5515981121710"  # canonical: country code 55, area 15, the ninth digit as given
STATE = {v: k.removeprefix("MESSAGE_STATE_") for k, v in common_pb2.MessageState.items()}
ISTATE = {v: k.removeprefix("INSTANCE_STATE_") for k, v in common_pb2.InstanceState.items()}


@dataclass
class Outcome:
    step: str
    instance: str
    expected: str
    got: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.expected == self.got


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    false_sent: int = 0

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        mark = "ok " if outcome.ok else "FAIL"
        print(f"  [{mark}] {outcome.instance:<22} expected {outcome.expected:<40} got {outcome.got}")
        if outcome.detail:
            print(f"         {'':<22} {outcome.detail}")


@dataclass
class Echo:
    """Which events the consumer prints: not those of the routine traffic that builds a history."""

    on: bool = True
    quiet: set[str] = field(default_factory=set)  # message ids

    def shows(self, event: events_pb2.Event) -> bool:
        which = event.WhichOneof("payload")
        change = event.message_state_changed if which == "message_state_changed" else None
        return self.on and (change is None or change.message_id not in self.quiet)


def _error(error: grpc.aio.AioRpcError) -> tuple[str, str, dict[str, str]]:
    status = rpc_status.from_call(error)
    reason, text, meta = "", "", {}
    for detail in status.details if status else []:
        info, localized = error_details_pb2.ErrorInfo(), error_details_pb2.LocalizedMessage()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            reason, meta = info.reason, dict(info.metadata)
        elif detail.Is(localized.DESCRIPTOR):
            detail.Unpack(localized)
            text = localized.message
    return reason, text, meta


def _history(msg: common_pb2.Message) -> str:
    return " → ".join(STATE[h.to_state] for h in msg.history if h.applied)


async def _wait_for(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def scenario(
    send: send_pb2_grpc.SendServiceAsyncStub,
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub,
    sim: Simulator,
    report: Report,
    echo: Echo,
) -> None:
    """The demo's numbered steps, in order (each adds its outcomes to the report)."""
    await _register(health, report)
    await _send_both(send, sim, report)
    await _incomplete_elsewhere(send, health, sim, report)
    await _stall(send, health, sim, report, echo)
    await _recovery(send, health, sim, report)


async def _register(health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub, report: Report) -> None:
    print("1. Register both instances (each is probed once, through the one instance machine)")
    for instance_id, name, token, plan in (
        (AVENTURA, "Aventura", "demo-token-aventura", common_pb2.PLAN_PRO),
        (INCOMPLETE, "Loja LITE", "demo-token-lite", common_pb2.PLAN_LITE),
    ):
        h = await health.RegisterInstance(
            instance_health_pb2.RegisterInstanceRequest(instance_id=instance_id, name=name, token=token, plan=plan)
        )
        expected = "CONNECTED" if instance_id == AVENTURA else "SESSION_INCOMPLETE"
        report.add(
            Outcome(
                "register",
                name,
                expected,
                ISTATE[h.state],
                f"phone_number={h.phone_number or 'null'} reason={h.reason}",
            )
        )


async def _send_both(send: send_pb2_grpc.SendServiceAsyncStub, sim: Simulator, report: Report) -> None:
    print(f"\n2. Send a text to {RECIPIENT} through each")
    text = send_pb2.TextContent(body="Olá! Seu pedido foi confirmado.")
    sent = await send.SendMessage(
        send_pb2.SendMessageRequest(instance_id=AVENTURA, to=RECIPIENT, idempotency_key="demo-1", text=text)
    )

    async def read_yet() -> common_pb2.Message | None:
        msg = await send.GetMessage(send_pb2.GetMessageRequest(message_id=sent.id))
        return msg if msg.state == common_pb2.MESSAGE_STATE_READ else None

    final = await _wait_for(read_yet, 10) or await send.GetMessage(send_pb2.GetMessageRequest(message_id=sent.id))
    report.add(
        Outcome(
            "send",
            "Aventura",
            "PENDING → SENT → DELIVERED → READ",
            _history(final),
            f"provider messageId={final.provider_message_id}",
        )
    )
    try:
        blocked = await send.SendMessage(
            send_pb2.SendMessageRequest(instance_id=INCOMPLETE, to=RECIPIENT, idempotency_key="demo-2", text=text)
        )
        report.false_sent += 1
        report.add(Outcome("send", "LITE-4IW93E-MGVYDW", "blocked: SESSION_INCOMPLETE", STATE[blocked.state]))
    except grpc.aio.AioRpcError as error:
        reason, message, meta = _error(error)
        report.add(
            Outcome(
                "send",
                "LITE-4IW93E-MGVYDW",
                "blocked: SESSION_INCOMPLETE",
                f"blocked: {reason}",
                f"{error.code().name}: “{message}”",
            )
        )
        stored = await send.GetMessage(send_pb2.GetMessageRequest(message_id=meta.get("message_id", "")))
        report.add(
            Outcome(
                "stored",
                "LITE-4IW93E-MGVYDW",
                "FAILED (SESSION_INCOMPLETE)",
                f"{STATE[stored.state]} ({stored.failure_reason})",
                f"provider calls for it: {len(sim.sends(INCOMPLETE))}",
            )
        )


async def _incomplete_elsewhere(
    send: send_pb2_grpc.SendServiceAsyncStub,
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub,
    sim: Simulator,
    report: Report,
) -> None:
    """The same block on Z-API and Evolution API: each connected without a phone in its own shape
    (Z-API `/status` connected with an empty `/device`; Evolution `open` without `ownerJid`)."""
    print("\n2b. The same incomplete session on Z-API and on Evolution API (provider chosen per instance)")
    text = send_pb2.TextContent(body="Olá! Seu pedido foi confirmado.")
    for dialect, provider, label, instance_id, client_token in OTHER_PROVIDERS:
        token = f"demo-token-{dialect}"
        sim.dialects.add_instance(
            dialect, instance_id, token, behaviour="session_incomplete", client_token=client_token
        )
        h = await health.RegisterInstance(
            instance_health_pb2.RegisterInstanceRequest(
                instance_id=instance_id,
                name=f"Loja {label}",
                token=token,
                provider=provider,
                base_url=sim.dialects.root_url if dialect == EVOLUTION else "",
                client_token=client_token,
            )
        )
        report.add(
            Outcome(
                "register",
                label,
                "SESSION_INCOMPLETE",
                ISTATE[h.state],
                f"provider={common_pb2.Provider.Name(h.provider)} phone_number={h.phone_number or 'null'}",
            )
        )
        try:
            blocked = await send.SendMessage(
                send_pb2.SendMessageRequest(
                    instance_id=instance_id, to=RECIPIENT, idempotency_key=f"demo-{dialect}", text=text
                )
            )
            report.false_sent += 1  # accepted (SENT or QUEUED) for an instance that cannot deliver
            report.add(Outcome("send", label, "blocked: SESSION_INCOMPLETE", STATE[blocked.state]))
        except grpc.aio.AioRpcError as error:
            reason, _, _ = _error(error)
            report.add(
                Outcome(
                    "send",
                    label,
                    "blocked: SESSION_INCOMPLETE",
                    f"blocked: {reason}",
                    f"{error.code().name}; provider calls for it: {len(sim.dialects.instances[instance_id].sends)}",
                )
            )


TRAFFIC = [f"551198765{i:04d}" for i in range(8)]  # Aventura's usual recipients


async def _stall(
    send: send_pb2_grpc.SendServiceAsyncStub,
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub,
    sim: Simulator,
    report: Report,
    echo: Echo,
) -> None:
    """The learned stall test with its default settings: a short healthy history, then a silent
    stall caught after a handful of sends, then the operator's clear."""
    await _usual_traffic(send, echo)
    await _silent_stall(send, health, sim, report)
    await _clear_stall(health, sim, report)


async def _usual_traffic(send: send_pb2_grpc.SendServiceAsyncStub, echo: Echo) -> None:
    print("\n3. Aventura's usual traffic (30 texts to 8 recipients) teaches its own delivery history")
    echo.on = False
    for i in range(30):
        msg = await send.SendMessage(
            send_pb2.SendMessageRequest(
                instance_id=AVENTURA,
                to=TRAFFIC[i % len(TRAFFIC)],
                idempotency_key=f"usual-{i}",
                text=send_pb2.TextContent(body=f"Pedido {i} confirmado."),
            )
        )
        echo.quiet.add(msg.id)
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # the last receipts arrive
    echo.on = True


async def _silent_stall(
    send: send_pb2_grpc.SendServiceAsyncStub,
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub,
    sim: Simulator,
    report: Report,
) -> None:
    print("   … then its session silently stalls: W-API still accepts sends, nothing is ever delivered")
    sim.set_behaviour(AVENTURA, "silent_stall")
    accepted: list[str] = []
    blocked_reason, blocked_text = "", ""
    for i in range(40):
        try:
            msg = await send.SendMessage(
                send_pb2.SendMessageRequest(
                    instance_id=AVENTURA,
                    to=TRAFFIC[i % len(TRAFFIC)],
                    idempotency_key=f"stall-{i}",
                    text=send_pb2.TextContent(body=f"#{i}"),
                )
            )
            accepted.append(STATE[msg.state])
        except grpc.aio.AioRpcError as error:
            blocked_reason, blocked_text, _ = _error(error)
            break
        await asyncio.sleep(0.3)
    print(f"   {len(accepted)} messages accepted by W-API after the stall began (not delivered), then:")
    report.add(
        Outcome(
            "send",
            "Aventura",
            "blocked: DELIVERY_STALLED",
            f"blocked: {blocked_reason}" if blocked_reason else "never blocked",
            f"after {len(accepted)} accepted sends (learned test, default settings); “{blocked_text}”",
        )
    )
    h = await health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=AVENTURA))
    report.add(Outcome("stall", "Aventura", "DEGRADED (DELIVERY_STALLED)", f"{ISTATE[h.state]} ({h.reason})"))
    probed = await health.GetInstanceHealth(
        instance_health_pb2.GetInstanceHealthRequest(instance_id=AVENTURA, refresh=True)
    )
    report.add(
        Outcome(
            "probe",
            "Aventura",
            "DEGRADED (DELIVERY_STALLED)",
            f"{ISTATE[probed.state]} ({probed.reason})",
            "W-API's status still says connected: a probe never clears a stall",
        )
    )


async def _clear_stall(
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub, sim: Simulator, report: Report
) -> None:
    print("   the operator checks the phone, the session works again: wapi-guard clear-stall 3B6XIW-ZTS923-GEAY6V")
    sim.set_behaviour(AVENTURA, "healthy")
    cleared = await health.ClearStall(instance_health_pb2.InstanceRequest(instance_id=AVENTURA))
    report.add(
        Outcome(
            "clear",
            "Aventura",
            "CONNECTED",
            ISTATE[cleared.health.state] if cleared.cleared else f"not cleared: {ISTATE[cleared.health.state]}",
            "audited with who asked (ListRecoveryActions, the instance's history)",
        )
    )


async def _recovery(
    send: send_pb2_grpc.SendServiceAsyncStub,
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub,
    sim: Simulator,
    report: Report,
) -> None:
    print("\n4. The operator reconnects the LITE instance by pairing code (wapi-guard connect … --phone)")
    answer = await health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id=INCOMPLETE, phone_number="5515981121710")
    )
    report.add(
        Outcome(
            "pairing",
            "LITE-4IW93E-MGVYDW",
            "DISCONNECTED (PAIRING_IN_PROGRESS)",
            f"{ISTATE[answer.health.state]} ({answer.health.reason})",
            f"pairing code {answer.pairing_code}; next: {answer.next_step}",
        )
    )
    print(f"   the code {answer.pairing_code} is typed on the phone (WhatsApp > Aparelhos conectados)")
    await sim.type_pairing_code(INCOMPLETE, answer.pairing_code)

    async def connected_yet() -> common_pb2.InstanceHealth | None:
        h = await health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=INCOMPLETE))
        return h if h.state == common_pb2.INSTANCE_STATE_CONNECTED else None

    h = await _wait_for(connected_yet, 10) or await health.GetInstanceHealth(
        instance_health_pb2.GetInstanceHealthRequest(instance_id=INCOMPLETE)
    )
    report.add(
        Outcome(
            "reconnect",
            "LITE-4IW93E-MGVYDW",
            "CONNECTED (PHONE_CONFIRMED)",
            f"{ISTATE[h.state]} ({h.reason})",
            f"phone_number={h.phone_number or 'null'} (only a connection event with a phone counts)",
        )
    )
    failed = await send.ListMessages(
        send_pb2.ListMessagesRequest(instance_id=INCOMPLETE, states=[common_pb2.MESSAGE_STATE_FAILED])
    )
    if not failed.messages:
        report.add(Outcome("retry", "LITE-4IW93E-MGVYDW", "SENT", "no FAILED message to retry"))
        return
    retried = await send.RetryMessage(send_pb2.RetryMessageRequest(message_id=failed.messages[0].id))
    report.add(
        Outcome(
            "retry",
            "LITE-4IW93E-MGVYDW",
            "SENT",
            STATE[retried.state] if retried.state != common_pb2.MESSAGE_STATE_DELIVERED else "SENT",
            f"wapi-guard retry {retried.id}: provider messageId={retried.provider_message_id}",
        )
    )
