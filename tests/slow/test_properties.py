"""Properties of the gRPC edge, fuzzed with hypothesis through a real App and a real database.

Webhook router: whatever bytes arrive, IngestEvent answers OK or INVALID_ARGUMENT (never
INTERNAL/UNKNOWN), stores every body once, and changes stored state only as its answers say.
Request validation: whatever SendMessageRequest arrives, SendMessage answers a real outcome or a
precise refusal (BadRequest field violations), never INTERNAL, and a refused request stores nothing.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from adapters.persistence.schema import events, instance_transitions, instances, messages
from adapters.wapi.webhooks import EVENT_ROUTES, STATUS_WORDS
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, send_pb2, webhook_pb2
from statemachine.domain import OutboundMessage, SendOutcome
from tests.integration.harness import Harness, ScriptedProvider, rich_error, start_harness, stop_harness

pytestmark = [pytest.mark.slow]

T = TypeVar("T")

LIVE = "fz-live"  # CONNECTED; the fuzzer aims at it
BYSTANDER = "fz-bystander-7Q"  # CONNECTED; the fuzzer never names it
BLOCKED = "fz-down"  # DISCONNECTED (send validation only)
PHONE = "5511987654321"
WITNESS_PID = "3EB0WITNESS000000000001"  # DELIVERED; the fuzzer names it
PROTECTED_PID = "3EB0PROTECTED0000000001"  # DELIVERED; the fuzzer never names it
UNKNOWN_PID = "3EB0UNKNOWN000000000001"
RECIPIENT = "5515981121710"

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
STATE_NAME = {int(v): k.removeprefix("MESSAGE_STATE_") for k, v in common_pb2.MessageState.items()}
INSTANCE_STATE_NAME = {int(v): k.removeprefix("INSTANCE_STATE_") for k, v in common_pb2.InstanceState.items()}
ROUTE_NAME = {int(v): k.removeprefix("EVENT_ROUTE_") for k, v in webhook_pb2.EventRoute.items()}


# --- a small world the fuzzer must not corrupt -----------------------------------------------------


class FixedIdProvider(ScriptedProvider):
    """Accepts every send; the id comes from `next_ids` when set, else a fresh one."""

    def __init__(self) -> None:
        super().__init__()
        self.next_ids: list[str] = []
        self.issued: set[str] = set()
        self._count = itertools.count()
        self.send_result = self._accept

    def _accept(self, _message: OutboundMessage) -> SendOutcome:
        provider_id = self.next_ids.pop(0) if self.next_ids else f"3EB0FUZZ{next(self._count):014X}"
        self.issued.add(provider_id)
        return SendOutcome(provider_message_id=provider_id)


@dataclass
class World:
    guard: Harness
    provider: FixedIdProvider
    protected_id: str
    witness_id: str
    known_bug_hits: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)
    event_ids: set[str] = field(default_factory=set)
    used_keys: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (instance, key) → request bytes

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


async def delivered_message(guard: Harness, provider: FixedIdProvider, provider_id: str) -> str:
    provider.next_ids.append(provider_id)
    sent = await guard.send.SendMessage(
        send_pb2.SendMessageRequest(instance_id=LIVE, to=RECIPIENT, text=send_pb2.TextContent(body=provider_id))
    )
    assert (sent.state, sent.provider_message_id) == (common_pb2.MESSAGE_STATE_SENT, provider_id)
    reply = await guard.webhook(
        {"event": "webhookStatus", "instanceId": LIVE, "messageId": provider_id, "status": "delivered", "moment": 1}
    )
    assert [t.change.to_state for t in reply.message_transitions] == [common_pb2.MESSAGE_STATE_DELIVERED]
    return sent.id


@pytest.fixture
async def world(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[World]:
    provider = FixedIdProvider()
    guard = await start_harness(database_url, provider=provider, sweep_interval=0)
    try:
        for instance_id in (LIVE, BYSTANDER, BLOCKED):
            await guard.register(instance_id)
            await guard.connect(instance_id, phone=PHONE)
        await guard.webhook({"event": "webhookDisconnected", "instanceId": BLOCKED, "moment": 1})
        protected = await delivered_message(guard, provider, PROTECTED_PID)
        witness = await delivered_message(guard, provider, WITNESS_PID)
        world = World(guard, provider, protected, witness)
        yield world
        if world.answers:
            print(f"\n[{request.node.name}] answers={dict(sorted(world.answers.items()))}")
            print(f"[{request.node.name}] known bugs hit={world.known_bug_hits}")
    finally:
        await stop_harness(guard)


async def outcome(call: Awaitable[T]) -> tuple[T | None, grpc.aio.AioRpcError | None]:
    """(reply, None) or (None, the error): lets the checks sit outside an except block."""
    try:
        return await call, None
    except grpc.aio.AioRpcError as error:
        return None, error


async def scalar(guard: Harness, query: Any) -> int:
    async with guard.repo.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def row(guard: Harness, table: Any, key: Any) -> dict[str, Any]:
    async with guard.repo.engine.connect() as conn:
        return dict((await conn.execute(select(table).where(key))).one()._mapping)


async def foreign_statuses_applied(guard: Harness, event_ids: set[str]) -> list[dict[str, Any]]:
    """Events of this example that named the witness under another instance id and were applied
    to it later, as parked statuses (reason APPLIED:LATE)."""
    query = select(events.c.id, events.c.instance_id, events.c.status).where(
        events.c.id.in_(sorted(event_ids)),
        events.c.provider_message_id == WITNESS_PID,
        events.c.reason == "APPLIED:LATE",
    )
    async with guard.repo.engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(query)]
    assert all(r["instance_id"] != LIVE for r in rows), rows  # the witness's own statuses apply at once
    return rows


def without_touch(instance: dict[str, Any]) -> dict[str, Any]:
    """last_event_at is flushed in the background from events received earlier (setup): not state."""
    return {k: v for k, v in instance.items() if k != "last_event_at"}


async def transitions_of(guard: Harness, instance_id: str) -> list[tuple[str, str, str]]:
    query = (
        select(instance_transitions.c.from_state, instance_transitions.c.to_state, instance_transitions.c.reason)
        .where(instance_transitions.c.instance_id == instance_id)
        .order_by(instance_transitions.c.id)
    )
    async with guard.repo.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(query)]


# --- webhook bodies ------------------------------------------------------------------------------

KNOWN_KEYS = (
    "event",
    "instanceId",
    "messageId",
    "status",
    "ack",
    "connected",
    "connectedPhone",
    "chat",
    "moment",
    "data",
)
EVENT_NAMES = sorted(EVENT_ROUTES)
HUGE = st.builds(
    lambda piece, n: piece * n, st.sampled_from(["A", "9", "é", "💥", "\x00", " ", "a\u0301"]), st.integers(129, 40_000)
)
NASTY = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "null", "true", "0", "-1", "NaN", "💥", "\u202e", "\t\n", "🇧🇷"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | NASTY
    | HUGE
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "event": st.sampled_from(EVENT_NAMES + [n.upper() for n in EVENT_NAMES] + ["webhookStatus", "webhookConnected"]),
    "instanceId": st.sampled_from([LIVE, LIVE.upper(), f" {LIVE} ", "fz-unknown", ""]),
    "messageId": st.sampled_from([WITNESS_PID, UNKNOWN_PID, WITNESS_PID.lower(), ""]),
    "status": st.sampled_from([*STATUS_WORDS, "DELIVERED", "Read", "composing", "available", "weird"]),
    "ack": st.integers(-2, 7),
    "connected": st.sampled_from([True, False, "false", "0", "no", "off", "true", "yes", 1, 0]),
    "connectedPhone": st.sampled_from(
        [PHONE, f"{PHONE}@s.whatsapp.net", f"{PHONE}:12@s.whatsapp.net", "+55 11 98765-4321", "123", ""]
    ),
    "chat": st.sampled_from([RECIPIENT, f"{RECIPIENT}@s.whatsapp.net", ""])
    | st.fixed_dictionaries({"id": st.sampled_from([RECIPIENT, ""])}, optional={"messageId": st.just(WITNESS_PID)}),
    "moment": st.integers(0, 2**41) | st.floats(allow_nan=True, allow_infinity=True),
}


def bodies(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any subset of the known keys, each plausible or of a wrong type, plus noise."""
    values = {key: strategy | JSON_VALUES for key, strategy in PLAUSIBLE.items()}
    values["data"] = (bodies(depth - 1) if depth > 1 else st.nothing()) | JSON_VALUES
    noise = st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=2)
    return st.builds(lambda known, extra: {**extra, **known}, st.fixed_dictionaries({}, optional=values), noise)


WELL_FORMED_BODIES: list[dict[str, Any]] = [
    {"event": "webhookStatus", "instanceId": LIVE, "messageId": WITNESS_PID, "status": "read", "moment": 2},
    {"event": "webhookConnected", "instanceId": LIVE, "connected": True, "connectedPhone": PHONE, "moment": 3},
    {"event": "webhookDisconnected", "instanceId": LIVE, "moment": 4},
    {"instanceId": LIVE, "connectedPhone": PHONE, "chat": {"id": RECIPIENT}, "status": "available", "moment": 5},
    {"event": "webhookReceived", "instanceId": LIVE, "messageId": UNKNOWN_PID, "fromMe": False, "moment": 6},
]
WELL_FORMED = st.sampled_from(WELL_FORMED_BODIES)


TEMPLATES = [
    *WELL_FORMED_BODIES,
    {"event": "webhookStatus", "data": {"instanceId": LIVE, "messageId": WITNESS_PID, "status": "delivered"}},
    {"event": "message_ack", "instanceId": LIVE, "id": WITNESS_PID, "ack": 3, "moment": 7},
    {"instanceId": LIVE, "chat": {"id": RECIPIENT, "messageId": WITNESS_PID}, "status": "read", "moment": 8},
    {"event": "webhookConnected", "instanceId": LIVE, "connected": "false", "moment": 9},
]


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed body with one to three keys replaced by junk, removed, or added."""
    body = dict(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(body) + list(KNOWN_KEYS)))
        if draw(st.booleans()) and key in body:
            del body[key]
        else:
            body[key] = draw(JSON_VALUES | NASTY | HUGE | PLAUSIBLE.get(key, JSON_VALUES))
    return body


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    raw = json.dumps(draw(WELL_FORMED | bodies(1))).encode()
    return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]


@st.composite
def deep(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(50, 5000))
    opener, closer = draw(st.sampled_from([('{"data":', "}"), ("[", "]"), ('{"event":"webhookStatus","data":', "}")]))
    return (opener * n + "{}" + closer * n).encode()


def encode(body: Any, ascii_only: bool) -> bytes:
    if ascii_only:
        return json.dumps(body).encode()  # lone surrogates become \\udXXX escapes (valid JSON)
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")  # invalid UTF-8


PAYLOADS = st.one_of(
    st.builds(encode, bodies(), st.booleans()),
    st.builds(encode, mutated(), st.booleans()),
    st.builds(encode, WELL_FORMED, st.just(True)),
    st.builds(encode, JSON_VALUES, st.booleans()),  # not an object, mostly
    truncated(),
    deep(),
    st.binary(max_size=600),
)
HEADERS = st.dictionaries(st.text(max_size=20), st.text(max_size=700), max_size=3)
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799  # google.protobuf.Timestamp's valid range
RECEIVED_AT = st.integers(0, 15).flatmap(
    lambda n: (
        st.one_of(  # not a valid Timestamp (one example in sixteen; hypothesis favours a range's ends)
            st.builds(
                Timestamp,
                seconds=st.integers(-(2**63), MIN_SECONDS - 1) | st.integers(MAX_SECONDS + 1, 2**63 - 1),
                nanos=st.integers(0, 999_999_999),
            ),
            st.builds(
                Timestamp,
                seconds=st.integers(0, 2**31),
                nanos=st.integers(-(2**31), -1) | st.integers(10**9, 2**31 - 1),
            ),
        )
        if n == 7
        else st.one_of(
            st.none(),
            st.builds(Timestamp, seconds=st.integers(MIN_SECONDS, MAX_SECONDS), nanos=st.integers(0, 999_999_999)),
            st.builds(Timestamp, seconds=st.integers(1_700_000_000, 1_900_000_000)),
        )
    )
)


def valid_timestamp(ts: Timestamp | None) -> bool:
    return ts is None or (MIN_SECONDS <= ts.seconds <= MAX_SECONDS and 0 <= ts.nanos <= 999_999_999)


# --- webhook router property ---------------------------------------------------------------------


@settings(FUZZ, max_examples=60)
@given(payloads=st.lists(PAYLOADS, min_size=1, max_size=3), headers=HEADERS, received_at=RECEIVED_AT)
async def test_webhook_router_answers_stores_and_corrupts_nothing(
    world: World, payloads: list[bytes], headers: dict[str, str], received_at: Timestamp | None
) -> None:
    guard = world.guard
    live = await guard.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=LIVE))
    if live.state != common_pb2.INSTANCE_STATE_CONNECTED:
        await guard.connect(LIVE, phone=PHONE)  # each example starts from a CONNECTED instance
    before_live = await row(guard, instances, instances.c.id == LIVE)
    assert before_live["state"] == "CONNECTED"
    before_bystander = await row(guard, instances, instances.c.id == BYSTANDER)
    before_bystander_changes = await transitions_of(guard, BYSTANDER)
    before_protected = await row(guard, messages, messages.c.id == world.protected_id)
    before_witness = await row(guard, messages, messages.c.id == world.witness_id)
    stored = await scalar(guard, select(func.count()).select_from(events))

    replies: list[webhook_pb2.IngestEventResponse] = []
    example_events: set[str] = set()
    for payload in payloads:
        request = webhook_pb2.IngestEventRequest(payload=payload, headers=headers, received_at=received_at)
        reply, error = await outcome(guard.webhooks.IngestEvent(request, timeout=30))
        if not valid_timestamp(received_at):
            # An envelope out of range is bad input: refused with its field, nothing stored.
            assert error is not None
            assert error.code() is INVALID
            assert "received_at" in rich_error(error).violations
            assert await scalar(guard, select(func.count()).select_from(events)) == stored
            continue
        if error is not None:
            assert error.code() is INVALID, f"{error.code().name} {error.details()!r} for {payload[:300]!r}"
            event_id = rich_error(error).metadata["event_id"]
            duplicate = event_id in world.event_ids
            world.count(world.answers, f"INVALID_ARGUMENT {rich_error(error).metadata['event_reason']}")
        else:
            assert reply is not None
            replies.append(reply)
            event_id, duplicate = reply.event_id, reply.duplicate
            world.count(world.answers, f"OK {ROUTE_NAME[reply.route]}{' duplicate' if duplicate else ''}")
        now = await scalar(guard, select(func.count()).select_from(events))
        assert now == stored + (0 if duplicate else 1), f"duplicate={duplicate}: {stored} → {now} rows"
        stored = now
        if not duplicate:
            kept = await row(guard, events, events.c.id == event_id)
            assert bytes(kept["payload"]) == payload  # stored raw, byte for byte
        world.event_ids.add(event_id)
        example_events.add(event_id)

    # Nothing the fuzzer never named moved.
    assert await row(guard, messages, messages.c.id == world.protected_id) == before_protected
    assert without_touch(await row(guard, instances, instances.c.id == BYSTANDER)) == without_touch(before_bystander)
    assert await transitions_of(guard, BYSTANDER) == before_bystander_changes

    # The witness moved exactly as the answers said, and only through status events.
    witness_changes = [
        (ROUTE_NAME[r.route], t.change)
        for r in replies
        for t in r.message_transitions
        if t.message_id == world.witness_id
    ]
    assert all(route in ("MESSAGE_STATUS", "CHAT_STATUS") for route, _ in witness_changes), witness_changes
    after_witness = await row(guard, messages, messages.c.id == world.witness_id)
    history = [{k: h[k] for k in ("to", "reason", "applied", "source")} for h in json.loads(after_witness["history"])]
    before_history = [
        {k: h[k] for k in ("to", "reason", "applied", "source")} for h in json.loads(before_witness["history"])
    ]
    reported = [
        {"to": STATE_NAME[c.to_state], "reason": c.reason, "applied": c.applied, "source": c.source}
        for _, c in witness_changes
    ]
    assert not await foreign_statuses_applied(guard, example_events)  # another instance's status never applies
    assert history == before_history + reported
    applied = [c for _, c in witness_changes if c.applied]
    assert after_witness["state"] == (STATE_NAME[applied[-1].to_state] if applied else before_witness["state"])
    assert after_witness["provider_message_id"] == WITNESS_PID

    # The live instance changed state only through a well-formed connection event for it.
    live_changes = [(ROUTE_NAME[r.route], t) for r in replies for t in r.instance_transitions if t.instance_id == LIVE]
    connection_events = [
        r for r in replies if r.instance_id == LIVE and ROUTE_NAME[r.route] in ("CONNECTION", "DISCONNECTION")
    ]
    after_live = await row(guard, instances, instances.c.id == LIVE)
    if not connection_events:
        assert (after_live["state"], after_live["reason"]) == (before_live["state"], before_live["reason"])
        assert not live_changes
    expected_state = INSTANCE_STATE_NAME[live_changes[-1][1].to_state] if live_changes else before_live["state"]
    assert after_live["state"] == expected_state


# --- known bugs found by the fuzzer, pinned -------------------------------------------------------


async def ingest_is_answered_and_stored(guard: Harness, payload: bytes) -> None:
    before = await scalar(guard, select(func.count()).select_from(events))
    reply, error = await outcome(
        guard.webhooks.IngestEvent(webhook_pb2.IngestEventRequest(payload=payload), timeout=10)
    )
    if reply is not None:
        event_id = reply.event_id
    else:
        assert error is not None
        assert error.code() is INVALID, f"{error.code().name}: {error.details()}"
        event_id = rich_error(error).metadata["event_id"]
    assert await scalar(guard, select(func.count()).select_from(events)) == before + 1
    assert bytes((await row(guard, events, events.c.id == event_id))["payload"]) == payload


@pytest.mark.parametrize(
    "payload",
    [
        b'{"event": "webhookStatus", "instanceId": "fz-live", "messageId": "\\ud800", "status": "read"}',
        b'{"event": "\\udfffwebhook", "instanceId": "fz-live"}',
    ],
    ids=["message-id", "event-name"],
)
async def test_webhook_with_a_lone_surrogate_escape_is_stored(world: World, payload: bytes) -> None:
    await ingest_is_answered_and_stored(world.guard, payload)


LONG = "A" * 200


@pytest.mark.parametrize(
    "body",
    [
        {"event": "webhookStatus", "instanceId": LIVE, "messageId": LONG, "status": "delivered"},
        {"event": "webhookStatus", "instanceId": LIVE, "messageId": "3EB0\x00X", "status": "delivered"},
        {"event": "webhook\x00Status", "instanceId": LIVE},
        {"instanceId": LIVE, "chat": {"id": LONG}, "status": "available"},
        {"instanceId": LIVE, "chat": RECIPIENT, "status": "s" * 40},
        {"instanceId": LIVE, "chat": RECIPIENT, "status": "available", "connectedLid": LONG},
    ],
    ids=["long-message-id", "nul-message-id", "nul-event", "long-chat-id", "long-chat-status", "long-lid"],
)
async def test_webhook_field_wider_than_its_column_is_stored(world: World, body: dict[str, Any]) -> None:
    await ingest_is_answered_and_stored(world.guard, json.dumps(body).encode())


@pytest.mark.parametrize(
    "received_at",
    [Timestamp(seconds=2**62), Timestamp(seconds=MIN_SECONDS - 1), Timestamp(seconds=1, nanos=-5)],
    ids=["far-future", "before-year-1", "negative-nanos"],
)
async def test_webhook_with_an_invalid_received_at_is_refused_as_invalid_argument(
    world: World, received_at: Timestamp
) -> None:
    body = {"event": "webhookConnected", "instanceId": LIVE, "connectedPhone": PHONE, "moment": 10}
    request = webhook_pb2.IngestEventRequest(payload=json.dumps(body).encode(), received_at=received_at)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await world.guard.webhooks.IngestEvent(request, timeout=10)
    assert caught.value.code() is INVALID, f"{caught.value.code().name}: {caught.value.details()}"


# --- lookups by id: found while probing the same edges; pinned ------------------------------------


@pytest.fixture
async def bare(database_url: str) -> AsyncIterator[Harness]:
    guard = await start_harness(database_url, sweep_interval=0)
    try:
        yield guard
    finally:
        await stop_harness(guard)


NUL_TOKEN = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|a\x00b").decode()


@pytest.mark.parametrize("rpc", ["GetMessage", "RetryMessage", "ListMessages-instance", "ListMessages-token"])
async def test_lookup_with_a_nul_in_an_id_is_not_reported_as_storage_down(bare: Harness, rpc: str) -> None:
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "GetMessage": lambda: bare.send.GetMessage(send_pb2.GetMessageRequest(message_id="a\x00b"), timeout=10),
        "RetryMessage": lambda: bare.send.RetryMessage(send_pb2.RetryMessageRequest(message_id="\x00"), timeout=10),
        "ListMessages-instance": lambda: bare.send.ListMessages(
            send_pb2.ListMessagesRequest(instance_id="a\x00"), timeout=10
        ),
        "ListMessages-token": lambda: bare.send.ListMessages(
            send_pb2.ListMessagesRequest(page_token=NUL_TOKEN), timeout=10
        ),
    }
    _reply, error = await outcome(calls[rpc]())
    if error is not None:
        assert error.code() in (grpc.StatusCode.NOT_FOUND, INVALID), f"{error.code().name}: {error.details()}"


@pytest.mark.parametrize("rpc", ["GetMessage", "RetryMessage"])
async def test_lookup_of_a_huge_id_is_a_rich_not_found(bare: Harness, rpc: str) -> None:
    huge = "a" * 5000
    call = (
        bare.send.GetMessage(send_pb2.GetMessageRequest(message_id=huge), timeout=10)
        if rpc == "GetMessage"
        else bare.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=huge), timeout=10)
    )
    _reply, error = await outcome(call)
    assert error is not None
    assert error.code() in (grpc.StatusCode.NOT_FOUND, INVALID), error.details()
    assert rich_error(error).reason in ("MESSAGE_NOT_FOUND", "INVALID_ARGUMENT")


@pytest.mark.parametrize("flag", [0, 0.0])
async def test_numeric_false_connected_flag_does_not_connect_an_instance(bare: Harness, flag: float) -> None:
    await bare.register(LIVE)
    await bare.connect(LIVE, phone=PHONE)
    await bare.webhook({"event": "webhookDisconnected", "instanceId": LIVE, "moment": 20})
    await bare.webhook(
        {"event": "webhookConnected", "instanceId": LIVE, "connected": flag, "connectedPhone": PHONE, "moment": 21}
    )
    health = await bare.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=LIVE))
    assert health.state != common_pb2.INSTANCE_STATE_CONNECTED, f"connected={flag!r} connected the instance"


@pytest.mark.parametrize("sender", ["fz-bystander-7Q", "fz-ghost"], ids=["other-registered-instance", "unregistered"])
async def test_status_naming_another_instance_does_not_move_this_instances_message(bare: Harness, sender: str) -> None:
    provider: ScriptedProvider = bare.provider
    provider.send_result = lambda _m: SendOutcome(provider_message_id=WITNESS_PID)
    for instance_id in (LIVE, BYSTANDER):
        await bare.register(instance_id)
        await bare.connect(instance_id, phone=PHONE)
    sent = await bare.send.SendMessage(
        send_pb2.SendMessageRequest(instance_id=LIVE, to=RECIPIENT, text=send_pb2.TextContent(body="oi"))
    )
    assert sent.state == common_pb2.MESSAGE_STATE_SENT
    reply = await bare.webhook(
        {"event": "webhookStatus", "instanceId": sender, "messageId": WITNESS_PID, "status": "delivered", "moment": 1}
    )
    assert list(reply.message_transitions) == []  # nothing reported...
    stored = await bare.send.GetMessage(send_pb2.GetMessageRequest(message_id=sent.id))
    assert stored.state == common_pb2.MESSAGE_STATE_SENT, "another instance's receipt delivered this message"


# --- SendMessage request validation ----------------------------------------------------------------

PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=130)
ANY_TEXT = st.text(max_size=40) | st.text(st.characters(codec="utf-8"), max_size=40)
HUGE_TEXT = st.builds(
    lambda piece, n: piece * n, st.sampled_from(["a", "ç", "💥", "\x01", " "]), st.integers(100, 9000)
)
STRINGS = ANY_TEXT | HUGE_TEXT | st.sampled_from(["", " ", "\x00", "\u202e", "\t"])
URLS = STRINGS | st.sampled_from(
    [
        "https://cdn.example.com/a.png",
        "http://x.io/y",
        "ftp://x.io/a",
        "http://",
        "https://[::1",
        "//x.io/a",
        "javascript:x",
    ]
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([math.nan, math.inf, -math.inf, 90.0, -180.0])
PHONES = st.sampled_from(
    [RECIPIENT, "+55 (15) 98112-1710", "120363025246125486@g.us", "176488829694091@lid", "1234567", "1" * 16]
)
KINDS = ("text", "image", "audio", "video", "sticker", "document", "location", "contact", "reaction")


def sometimes_broken(valid: st.SearchStrategy[Any], broken: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid seven times in eight: enough requests get past validation to reach the instance.
    (Broken on a middle value: hypothesis favours the ends of a range.)"""
    return st.integers(0, 7).flatmap(lambda n: broken if n == 3 else valid)


SHORT = st.text(max_size=30)
VALID_MEDIA = st.builds(
    send_pb2.MediaContent,
    url=sometimes_broken(st.sampled_from(["https://cdn.example.com/a.png", "http://x.io/y?z=1"]), URLS),
    caption=sometimes_broken(SHORT, STRINGS),
    mimetype=sometimes_broken(st.sampled_from(["", "image/png"]), STRINGS),
)
CONTENT: dict[str, st.SearchStrategy[Any]] = {
    "text": st.builds(send_pb2.TextContent, body=sometimes_broken(SHORT.filter(str.strip), STRINGS)),
    "image": VALID_MEDIA,
    "audio": VALID_MEDIA,
    "video": VALID_MEDIA,
    "sticker": VALID_MEDIA,
    "document": st.builds(
        send_pb2.DocumentContent,
        url=sometimes_broken(st.just("https://cdn.example.com/a.pdf"), URLS),
        file_name=sometimes_broken(st.just("a.pdf"), STRINGS),
        caption=sometimes_broken(SHORT, STRINGS),
        mimetype=sometimes_broken(st.just("application/pdf"), STRINGS),
        extension=sometimes_broken(st.sampled_from(["", "pdf", ".pdf"]), STRINGS),
    ),
    "location": st.builds(
        send_pb2.LocationContent,
        latitude=sometimes_broken(st.floats(-90, 90), FLOATS),
        longitude=sometimes_broken(st.floats(-180, 180), FLOATS),
        name=sometimes_broken(SHORT, STRINGS),
        address=sometimes_broken(SHORT, STRINGS),
    ),
    "contact": st.builds(
        send_pb2.ContactContent,
        name=sometimes_broken(SHORT.filter(str.strip), STRINGS),
        phone=sometimes_broken(PHONES, STRINGS),
        business_description=sometimes_broken(SHORT, STRINGS),
    ),
    "reaction": st.builds(
        send_pb2.ReactionContent,
        emoji=sometimes_broken(st.sampled_from(["👍", "👍🏽", "❤️"]), STRINGS),
        target_provider_message_id=sometimes_broken(st.just(WITNESS_PID), STRINGS),
    ),
}


@st.composite
def send_requests(draw: st.DrawFn) -> tuple[send_pb2.SendMessageRequest, bool]:
    """(request, valid by construction)."""
    if draw(st.integers(0, 4)) == 0:  # a well-formed text send: must go through
        body = draw(st.text(min_size=1, max_size=300).filter(str.strip))
        request = send_pb2.SendMessageRequest(
            instance_id=LIVE,
            to=draw(st.sampled_from([RECIPIENT, "+55 (15) 98112-1710", "120363025246125486@g.us"])),
            text=send_pb2.TextContent(body=body),
            delay_seconds=draw(st.integers(0, 15)),
            reply_to_provider_message_id=draw(st.sampled_from(["", WITNESS_PID])),
        )
        return request, True
    request = send_pb2.SendMessageRequest(
        instance_id=draw(sometimes_broken(st.sampled_from([LIVE, f" {LIVE} ", BLOCKED, "fz-nope"]), STRINGS)),
        to=draw(sometimes_broken(PHONES, STRINGS)),
        idempotency_key=draw(sometimes_broken(st.just("") | PRINTABLE, STRINGS)),
        reply_to_provider_message_id=draw(sometimes_broken(st.sampled_from(["", WITNESS_PID]), STRINGS)),
        delay_seconds=draw(sometimes_broken(st.integers(0, 15), st.integers(-(2**31), 2**31 - 1))),
    )
    kind = draw(sometimes_broken(st.sampled_from(KINDS), st.none()))
    if kind is not None:
        getattr(request, kind).CopyFrom(draw(CONTENT[kind]))
    return request, False


def must_violate(request: send_pb2.SendMessageRequest) -> set[str]:
    """Fields the API contract (proto comments) says are wrong, whatever else is."""
    fields: set[str] = set()
    if not request.instance_id.strip():
        fields.add("instance_id")
    if not 0 <= request.delay_seconds <= 15:
        fields.add("delay_seconds")
    kind = request.WhichOneof("content")
    if kind is None:
        fields.add("content")
    elif kind == "location":
        if not (math.isfinite(request.location.latitude) and -90 <= request.location.latitude <= 90):
            fields.add("location.latitude")
        if not (math.isfinite(request.location.longitude) and -180 <= request.location.longitude <= 180):
            fields.add("location.longitude")
    return fields


PRECONDITION_REASONS = frozenset(
    {"INSTANCE_DISCONNECTED", "SESSION_INCOMPLETE", "TIMEOUT_OR_GATEWAY", "HEALTH_UNKNOWN", "DELIVERY_STALLED"}
    | {"TOKEN_INVALID", "INSTANCE_NOT_FOUND", "NOT_SUPPORTED_BY_PLAN"}
)


@settings(FUZZ, max_examples=100)
@given(case=send_requests())
async def test_send_request_validation_never_internal_and_refusals_store_nothing(
    world: World, case: tuple[send_pb2.SendMessageRequest, bool]
) -> None:
    request, valid = case
    guard = world.guard
    rows = await scalar(guard, select(func.count()).select_from(messages))
    calls = len(world.provider.sends)
    key = (request.instance_id.strip(), request.idempotency_key)
    reused = bool(request.idempotency_key) and key in world.used_keys
    reply, error = await outcome(guard.send.SendMessage(request, timeout=30))
    if error is not None:
        assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
        rich = rich_error(error)
        world.count(world.answers, f"{error.code().name} {rich.reason}")
        now = await scalar(guard, select(func.count()).select_from(messages))
        if error.code() is INVALID:
            assert not valid, f"valid request refused: {rich.violations}"
            assert rich.reason == "INVALID_ARGUMENT"
            assert rich.violations
            assert all(f and d for f, d in rich.violations.items())
            assert must_violate(request) <= set(rich.violations), rich.violations
            assert (now, len(world.provider.sends)) == (rows, calls), "a refused request stored a row or was sent"
        elif error.code() is grpc.StatusCode.NOT_FOUND:
            assert rich.reason == "INSTANCE_NOT_FOUND"
            assert now == rows
            assert not must_violate(request)
        elif error.code() is grpc.StatusCode.FAILED_PRECONDITION:
            assert rich.reason in PRECONDITION_REASONS, rich.reason
            assert now == rows + (0 if reused else 1)  # stored as FAILED (or the replay of that)
            assert len(world.provider.sends) == calls
            world.used_keys.setdefault(key, request.SerializeToString())
        elif error.code() is grpc.StatusCode.ALREADY_EXISTS:
            assert reused, "ALREADY_EXISTS for a fresh key"
            assert world.used_keys[key] != request.SerializeToString(), "ALREADY_EXISTS for the same request"
            assert rich.reason == "IDEMPOTENCY_KEY_REUSED"
            assert now == rows
        else:
            pytest.fail(f"unexpected {error.code().name} {rich.reason}: {error.details()}")
        return
    assert reply is not None
    world.count(world.answers, f"OK {STATE_NAME[reply.state]}")
    assert reply.state == common_pb2.MESSAGE_STATE_SENT, reply
    assert reply.provider_message_id in world.provider.issued
    assert not must_violate(request)
    now = await scalar(guard, select(func.count()).select_from(messages))
    if reused:
        assert (now, len(world.provider.sends)) == (rows, calls)  # the first outcome, not a second send
    else:
        assert (now, len(world.provider.sends)) == (rows + 1, calls + 1)
        world.used_keys.setdefault(key, request.SerializeToString())
    stored = await row(guard, messages, messages.c.id == reply.id)
    assert (stored["state"], stored["provider_message_id"]) == ("SENT", reply.provider_message_id)
