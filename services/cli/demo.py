"""`wapi-guard demo`: the whole promise, end to end, on the embedded default.

SQLite in a temporary folder, the W-API simulator on loopback, a real `serve` (gRPC + webhook
bridge), two instances: "Aventura" (healthy) and LITE-4IW93E-MGVYDW (connected, no phone), then
one Z-API and one Evolution API instance (the simulator's dialects, same port), both without a phone.
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
from pathlib import Path
from typing import Any

import grpc

from adapters.simulator import Simulator
from services.api.wapiguard.v1 import (
    events_pb2,
    events_pb2_grpc,
    instance_health_pb2_grpc,
    send_pb2_grpc,
)
from services.bootstrap import App
from services.cli.demo_steps import (
    AVENTURA,
    INCOMPLETE,
    ISTATE,
    OTHER_PROVIDERS,
    RECIPIENT,
    STATE,
    Echo,
    Outcome,
    Report,
    scenario,
)
from services.config import Settings


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
        zapi_base_url=sim.dialects.root_url,
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
        await scenario(send, health, sim, report, echo)
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
    names = {AVENTURA: "Aventura", INCOMPLETE: "LITE-4IW93E-MGVYDW"} | {p[3]: p[2] for p in OTHER_PROVIDERS}
    name = names.get(event.instance_id, event.instance_id)
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
