"""`wapi-guard demo`: the whole promise, end to end, on the embedded default.

SQLite in a temporary folder, the W-API simulator on loopback, a real `serve` (gRPC + webhook
bridge), two instances: "Aventura" (healthy) and LITE-4IW93E-MGVYDW (connected, no phone).
Everything goes through the public gRPC API, as an internal service would use it. Exits 0
only when every expectation holds: delivered/read, or an explicit block — never a false sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters.simulator import Simulator
from services.api.wapiguard.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
)
from services.bootstrap import App
from services.config import Settings

AVENTURA = "3B6XIW-ZTS923-GEAY6V"
INCOMPLETE = "LITE-4IW93E-MGVYDW"
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


async def run_demo(*, keep: bool = False, as_json: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="wapi-guard-demo-"))
    secret = secrets.token_urlsafe(16)
    sim = Simulator(delivered_after=0.3, read_after=0.8)
    await sim.start()
    settings = Settings(
        grpc_port=0,
        http_port=0,
        database_url=f"sqlite+aiosqlite:///{workdir / 'demo.db'}",
        wapi_base_url=sim.base_url,
        webhook_secret=secret,
        probe_interval=0,
        log_level="WARNING",
    )
    app = await App.start(settings)
    sim.set_webhook_url(f"http://127.0.0.1:{app.http_port}/webhooks/wapi/{secret}")
    if app.recovery is not None:
        # The bridge's public URL is known once it listens: registration then points each instance's
        # W-API webhooks at it and verifies them (what --public-url does), so deliveries are confirmable.
        app.recovery.config = dataclasses.replace(app.recovery.config, public_url=f"http://127.0.0.1:{app.http_port}")
    sim.add_instance(AVENTURA, "demo-token-aventura", behaviour="healthy", phone="5511987654321")
    sim.add_instance(INCOMPLETE, "demo-token-lite", behaviour="session_incomplete", plan="LITE")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    send = send_pb2_grpc.SendServiceStub(channel)
    health = instance_health_pb2_grpc.InstanceHealthServiceStub(channel)
    report = Report()
    seen: list[events_pb2.Event] = []
    events = events_pb2_grpc.EventServiceStub(channel)
    stream = events.Subscribe(events_pb2.SubscribeRequest(from_now=True, progress_interval_seconds=1))
    await stream.read()  # the first progress message: subscribed, everything from here on arrives
    echo = Echo()
    consumer = asyncio.create_task(_consume(stream, seen, echo))
    print(f"wapi-guard demo — SQLite at {workdir / 'demo.db'}, W-API simulator at {sim.base_url}")
    print(f"gRPC on 127.0.0.1:{app.grpc_port}, webhook bridge on 127.0.0.1:{app.http_port}\n")
    try:
        await _scenario(send, health, sim, report, echo)
        await asyncio.sleep(0.5)
        _check_events(seen, report)
    finally:
        consumer.cancel()
        stream.cancel()
        await channel.close()
        await app.stop(grace=1.0)
        await sim.stop()
        if keep:
            print(f"\nkept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    failed = [o for o in report.outcomes if not o.ok]
    print(
        f"\n{len(report.outcomes) - len(failed)}/{len(report.outcomes)} expectations met; "
        f"false SENT reported for an instance that cannot deliver: {report.false_sent}"
    )
    if not as_json:
        _what_next()
    if as_json:
        print(json.dumps({"outcomes": [o.__dict__ for o in report.outcomes], "false_sent": report.false_sent}))
    return 0 if not failed and report.false_sent == 0 else 1


def _command() -> str:
    """How to call `wapi-guard` from here: the script next to this interpreter (`.venv/bin/wapi-guard`
    after `make demo`), relative to the current folder when it is inside it."""
    script = Path(sys.executable).parent / "wapi-guard"
    if not script.exists():
        return "wapi-guard"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _what_next() -> None:
    w = _command()
    print(
        f"""
What next — run it yourself (three terminals; the flags are explained in README.md):
  {w} simulator --port 8099 --instance DEMO-1:demo-token:healthy:5511987654321
  {w} serve --wapi-base-url http://127.0.0.1:8099/v1 --webhook-secret s3cret --public-url http://127.0.0.1:8080
  WAPIGUARD_WAPI_TOKEN=demo-token {w} instances add DEMO-1 --name Demo
  {w} send --instance DEMO-1 --to {RECIPIENT} --text "Olá!"
  {w} messages          # then: {w} --help for every command
Status page: http://127.0.0.1:8080/status
Docs: README.md (quick start, operator commands, exit codes), docs/architecture.md"""
    )


def short_id(message_id: str) -> str:
    """The distinctive end of an id: message ids are time-ordered (UUIDv7-like), so ids made in the
    same second share their first eight characters and differ in the last ones."""
    return message_id.replace("-", "")[-8:]


def _describe_event(event: events_pb2.Event) -> str:
    name = {AVENTURA: "Aventura", INCOMPLETE: "LITE-4IW93E-MGVYDW"}.get(event.instance_id, event.instance_id)
    which = event.WhichOneof("payload")
    if which == "message_state_changed":
        c = event.message_state_changed
        return f"{name}: message {short_id(c.message_id)} {STATE[c.from_state]} → {STATE[c.to_state]} (v{c.version})"
    if which == "message_failed":
        f = event.message_failed
        return f"{name}: message {short_id(f.change.message_id)} FAILED ({f.failure_reason})"
    if which == "message_stuck":
        return f"{name}: ALERT message {short_id(event.message_stuck.message_id)} stuck in SENT"
    if which == "instance_health_changed":
        c2 = event.instance_health_changed
        return f"{name}: instance {ISTATE[c2.from_state]} → {ISTATE[c2.to_state]} ({c2.reason})"
    return f"{name}: {event.type_name}"


@dataclass
class Echo:
    """Which events the consumer prints: not those of the routine traffic that builds a history."""

    on: bool = True
    quiet: set[str] = field(default_factory=set)  # message ids

    def shows(self, event: events_pb2.Event) -> bool:
        which = event.WhichOneof("payload")
        change = event.message_state_changed if which == "message_state_changed" else None
        return self.on and (change is None or change.message_id not in self.quiet)


async def _consume(stream: Any, seen: list[events_pb2.Event], echo: Echo) -> None:
    """A consumer of the event stream, as a CRM would run it: prints each event as it arrives."""
    while True:
        item = await stream.read()
        if item is grpc.aio.EOF:
            return
        if item.HasField("event"):
            seen.append(item.event)
            if echo.shows(item.event):
                print(f"   ⇢ event stream: {_describe_event(item.event)}")


def _check_events(seen: list[events_pb2.Event], report: Report) -> None:
    print("\n5. What the event stream consumer received (no polling)")
    first: dict[str, list[str]] = {}
    for event in seen:
        if event.WhichOneof("payload") == "message_state_changed" and event.instance_id == AVENTURA:
            c = event.message_state_changed
            first.setdefault(c.message_id, []).append(STATE[c.to_state])
    story = next(iter(first.values()), [])
    report.add(
        Outcome("events", "Aventura", "PENDING → SENT → DELIVERED → READ", " → ".join(story), "message.state_changed")
    )
    health = []
    for e in seen:
        if e.WhichOneof("payload") == "instance_health_changed" and e.instance_id == AVENTURA:
            change = e.instance_health_changed
            state = ISTATE[change.to_state]
            health.append(state if state == "CONNECTED" else f"{state} ({change.reason})")
    report.add(
        Outcome(
            "events",
            "Aventura",
            "CONNECTED → DEGRADED (DELIVERY_STALLED) → CONNECTED",
            " → ".join(health),
            "instance.health_changed: the learned stall test, then the operator's clear",
        )
    )


async def _scenario(
    send: send_pb2_grpc.SendServiceAsyncStub,
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub,
    sim: Simulator,
    report: Report,
    echo: Echo,
) -> None:
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

    await _stall(send, health, sim, report, echo)
    await _recovery(send, health, sim, report)


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
