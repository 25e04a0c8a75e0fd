"""Fault injection through a real App over gRPC: the database drops mid-load, W-API misbehaves
(through the real WapiProvider against the simulator), and nothing leaks afterwards.

Faults are made on loopback by `TcpProxy`, a small asyncio TCP relay written here: the App is
pointed at the proxy, and the test cuts, restores or slows the proxy while RPCs are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from adapters.persistence.schema import events, messages
from adapters.simulator import Simulator
from adapters.wapi.client import WapiProvider
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, send_pb2, webhook_pb2
from statemachine.domain import Credentials, OutboundMessage, SendOutcome, Text
from tests.conftest import POSTGRES_URL
from tests.integration.harness import Harness, ScriptedProvider, rich_error, start_harness, stop_harness
from tests.polling import eventually

pytestmark = [pytest.mark.slow]

T = TypeVar("T")

INSTANCE = "FAULT-1"
TOKEN = "tok-fault-123456"
PHONE = "5511987654321"
RECIPIENT = "5515981121710"
RPC_TIMEOUT = 15.0  # per load RPC: longer than the core's bounded retry to store a provider answer
requires_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="needs WAPIGUARD_TEST_DATABASE_URL (PostgreSQL)")


# --- a loopback TCP proxy that can be cut, restored and slowed ----------------------------------


class TcpProxy:
    """Relays 127.0.0.1:<port> to an upstream address, byte for byte, both ways.

    cut(): every live connection is reset and the listening socket is closed, so new connections
    are refused (what a client sees when the server process is gone). restore(): listens again on
    the same port. freeze()/thaw(): bytes stop/resume moving, sockets stay open. `delay` holds
    every upstream→client chunk that long (a slow peer).
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.port = 0
        self.connections = 0
        self.refused_upstream = 0
        self.upstream_ports: set[int] = set()  # local ports of the proxy→upstream sockets
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def is_cut(self) -> bool:
        return self._server is None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def restore(self) -> None:
        if self._server is None:
            await self.start()

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            transport.abort()
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        await self.cut()
        handlers = list(self._handlers)
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self.is_cut:
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                self.refused_upstream += 1
                writer.transport.abort()
                return
            self.connections += 1
            self.upstream_ports.add(int(up_writer.get_extra_info("sockname")[1]))
            pair = (writer.transport, up_writer.transport)
            self._transports.update(pair)
            pumps = {
                asyncio.create_task(self._pump(reader, up_writer, 0.0)),
                asyncio.create_task(self._pump(up_reader, writer, self.delay)),
            }
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                for transport in pair:
                    transport.abort()
                    self._transports.discard(transport)
        finally:
            self._handlers.discard(task)

    def freeze(self) -> None:
        """Connections stay open but no byte moves (a half-open network, a stopped VM)."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if delay:
                    await asyncio.sleep(delay)
                if writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def tcp_proxy(host: str, port: int, *, delay: float = 0.0) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port, delay=delay)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def text_request(body: str, key: str = "", instance_id: str = INSTANCE) -> send_pb2.SendMessageRequest:
    return send_pb2.SendMessageRequest(
        instance_id=instance_id, to=RECIPIENT, idempotency_key=key, text=send_pb2.TextContent(body=body)
    )


async def health(guard: Harness, instance_id: str = INSTANCE) -> common_pb2.InstanceHealth:
    return await guard.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=instance_id))


# --- Postgres ------------------------------------------------------------------------------------


def pg_upstream() -> tuple[str, int]:
    url = make_url(POSTGRES_URL)
    return url.host or "127.0.0.1", url.port or 5432


def through(proxy: TcpProxy) -> str:
    return make_url(POSTGRES_URL).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def verify_engine() -> AsyncEngine:
    """A direct engine on the real port, under its own application_name (not counted as the App's)."""
    return create_async_engine(
        POSTGRES_URL,
        poolclass=NullPool,
        connect_args={"server_settings": {"application_name": "wapi-guard-slow-verify"}},
    )


class RecordingProvider(ScriptedProvider):
    """ScriptedProvider that also remembers the id it answered for each text body."""

    def __init__(self) -> None:
        super().__init__()
        self.issued: dict[str, str] = {}
        self.send_result = self._accept

    def _accept(self, message: OutboundMessage) -> SendOutcome:
        assert isinstance(message.content, Text)
        provider_id = f"3EB0LOAD{len(self.issued):012X}"
        self.issued[message.content.body] = provider_id
        return SendOutcome(provider_message_id=provider_id)


@dataclass
class LoadLog:
    """What every RPC of the load answered."""

    sends: dict[str, tuple[str, Any]] = field(default_factory=dict)  # body → (outcome, Message | detail)
    ingests: list[tuple[str, Any, bytes]] = field(default_factory=list)  # (outcome, event_id | detail, body)
    unexpected: list[str] = field(default_factory=list)
    tried: int = 0
    unavailable: int = 0
    unavailable_during_cut: int = 0

    def classify(self, error: grpc.aio.AioRpcError, what: str, during_cut: bool) -> str:
        if error.code() is grpc.StatusCode.UNAVAILABLE:
            reason = rich_error(error).reason if error.trailing_metadata() else ""
            if reason == "STORAGE_UNAVAILABLE":
                self.unavailable += 1
                self.unavailable_during_cut += during_cut
                return "unavailable"
        self.unexpected.append(f"{what}: {error.code().name} {error.details()!r}")
        return "unexpected"


async def run_load(
    guard: Harness,
    proxy: TcpProxy,
    *,
    workers: int,
    before: float,
    cut_for: float,
    after: float,
    max_rpcs: int,
) -> LoadLog:
    """SendMessage and IngestEvent from `workers` tasks; the proxy is cut `before` seconds in,
    for `cut_for` seconds, and the load goes on `after` seconds past the restore."""
    log = LoadLog()
    numbers = itertools.count()
    delivered_later: list[str] = []  # provider ids of OK sends, to post receipts for
    stop = asyncio.Event()

    async def send_one(n: int) -> None:
        body, during_cut = f"load {n}", proxy.is_cut
        try:
            reply = await guard.send.SendMessage(text_request(body, key=f"load-{n}"), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            log.sends[body] = (log.classify(error, f"SendMessage {body}", during_cut), error.details())
            return
        log.sends[body] = ("ok", reply)
        if reply.state != common_pb2.MESSAGE_STATE_SENT or not reply.provider_message_id:
            log.unexpected.append(f"SendMessage {body}: OK but state={reply.state} id={reply.provider_message_id!r}")
        else:
            delivered_later.append(reply.provider_message_id)

    async def ingest_one(n: int) -> None:
        if delivered_later:
            body: dict[str, Any] = {
                "event": "webhookStatus",
                "instanceId": INSTANCE,
                "messageId": delivered_later.pop(0),
                "status": "delivered",
                "moment": 1_749_132_400 + n,
            }
        else:
            body = {"event": "webhookReceived", "instanceId": INSTANCE, "messageId": f"IN{n:08d}", "moment": n}
        during_cut, payload = proxy.is_cut, json.dumps(body).encode()
        try:
            reply = await guard.webhooks.IngestEvent(
                webhook_pb2.IngestEventRequest(payload=payload), timeout=RPC_TIMEOUT
            )
        except grpc.aio.AioRpcError as error:
            log.ingests.append((log.classify(error, f"IngestEvent {n}", during_cut), error.details(), payload))
            return
        log.ingests.append(("ok", reply.event_id, payload))

    async def worker() -> None:
        while not stop.is_set() and log.tried < max_rpcs:
            n = next(numbers)
            log.tried += 1
            failures_before = log.unavailable
            await (send_one(n) if n % 2 == 0 else ingest_one(n))
            if log.unavailable > failures_before:
                await asyncio.sleep(0.01)  # a client backs off a little while the store is down

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        await asyncio.sleep(before)
        await proxy.cut()
        await asyncio.sleep(cut_for)
        await proxy.restore()
        await asyncio.sleep(after)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), RPC_TIMEOUT + 5)
    return log


async def stored_rows(verify: AsyncEngine) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Messages by text body, and the ids of stored events, read on the real port."""
    async with verify.connect() as conn:
        rows = (await conn.execute(select(messages).where(messages.c.instance_id == INSTANCE))).all()
        event_ids = {r.id for r in await conn.execute(select(events.c.id))}
    by_body: dict[str, dict[str, Any]] = {}
    for row in rows:
        body = json.loads(row.content)["content"]["body"]
        assert body not in by_body, f"two rows for one request body {body!r}"
        by_body[body] = dict(row._mapping)
    return by_body, event_ids


async def first_successful_send(guard: Harness, timeout: float) -> float:
    """Seconds until a new SendMessage answers SENT; no restart in between."""
    started = time.monotonic()
    attempt = itertools.count()

    async def try_send() -> bool:
        try:
            reply = await guard.send.SendMessage(text_request(f"recovery {next(attempt)}"), timeout=2.0)
        except grpc.aio.AioRpcError:
            return False
        return reply.state == common_pb2.MESSAGE_STATE_SENT

    await eventually(try_send, "a send succeeds again after the database came back", timeout)
    return time.monotonic() - started


@requires_postgres
async def test_postgres_cut_mid_load_never_fakes_success_and_recovers_alone(database_url: str) -> None:
    provider = RecordingProvider()
    async with tcp_proxy(*pg_upstream()) as proxy:
        guard = await start_harness(through(proxy), provider=provider, sweep_interval=0)
        verify = verify_engine()
        try:
            await guard.register(INSTANCE, token=TOKEN)
            await guard.connect(INSTANCE, phone=PHONE)
            assert (await health(guard)).state == common_pb2.INSTANCE_STATE_CONNECTED

            log = await run_load(guard, proxy, workers=8, before=0.8, cut_for=1.5, after=0.8, max_rpcs=4000)
            recovery = await first_successful_send(guard, timeout=10.0)

            # Clients retry what they were told to retry: sends with the same idempotency key,
            # webhooks with the same body (what W-API does after the bridge's 503).
            first_sends = Counter(outcome for outcome, _ in log.sends.values())
            first_ingests = Counter(outcome for outcome, _, _ in log.ingests)
            retried: Counter[str] = Counter()
            answered = dict(log.sends)
            for body, (outcome, _detail) in sorted(log.sends.items()):
                if outcome != "unavailable":
                    continue
                key = "load-" + body.split()[-1]
                try:
                    again = await guard.send.SendMessage(text_request(body, key=key), timeout=RPC_TIMEOUT)
                except grpc.aio.AioRpcError as error:
                    if error.code() is grpc.StatusCode.ABORTED and rich_error(error).reason == "SEND_IN_PROGRESS":
                        # An insert whose commit ack was lost: its PENDING row holds the key until
                        # --pending-grace says the attempt is dead (then OUTCOME_UNKNOWN, RetryMessage).
                        retried["send → SEND_IN_PROGRESS"] += 1
                        continue
                    log.unexpected.append(f"retry of {body}: {error.code().name} {error.details()!r}")
                    continue
                retried[f"send → {common_pb2.MessageState.Name(again.state)}"] += 1
                if again.state != common_pb2.MESSAGE_STATE_PENDING:  # PENDING: an insert whose commit ack was lost
                    answered[body] = ("ok", again)
            acknowledged = [(event_id, payload) for outcome, event_id, payload in log.ingests if outcome == "ok"]
            for outcome, _detail, payload in log.ingests:
                if outcome != "unavailable":
                    continue
                try:
                    reply = await guard.webhooks.IngestEvent(
                        webhook_pb2.IngestEventRequest(payload=payload), timeout=RPC_TIMEOUT
                    )
                except grpc.aio.AioRpcError as error:
                    log.unexpected.append(f"retry of webhook: {error.code().name} {error.details()!r}")
                    continue
                retried["webhook → duplicate" if reply.duplicate else "webhook → stored"] += 1
                acknowledged.append((reply.event_id, payload))

            by_body, event_ids = await stored_rows(verify)
        finally:
            await stop_harness(guard)
            await verify.dispose()

    calls = Counter(message.content.body for _instance, message in provider.sends if isinstance(message.content, Text))
    load_calls = {b: c for b, c in calls.items() if b.startswith("load ")}
    by_provider_id = {row["provider_message_id"]: row for row in by_body.values() if row["provider_message_id"]}
    lost: list[str] = []
    for body, count in load_calls.items():
        if count != 1:
            lost.append(f"{body}: {count} provider calls (a double send)")
        row = by_body.get(body)
        if row is None:
            lost.append(f"{body}: provider called, no stored row")
        elif row["provider_message_id"] != provider.issued[body] or row["state"] not in ("SENT", "DELIVERED"):
            lost.append(f"{body}: provider answered {provider.issued[body]}, row says {row['state']}")
    for body, (outcome, reply) in answered.items():
        if outcome != "ok":
            continue
        row = by_body.get(body)
        if row is None or row["id"] != reply.id or row["provider_message_id"] != reply.provider_message_id:
            lost.append(f"{body}: answered SENT {reply.id} but the store says {row and row['state']}")
        if reply.provider_message_id != provider.issued.get(body):
            lost.append(f"{body}: answered SENT with an id the provider never gave (fake success)")
    for event_id, payload in acknowledged:
        if event_id not in event_ids:
            lost.append(f"event {event_id}: acknowledged, not stored")
        receipt = json.loads(payload)
        if receipt["event"] == "webhookStatus" and by_provider_id[receipt["messageId"]]["state"] != "DELIVERED":
            lost.append(f"receipt for {receipt['messageId']}: acknowledged, message not DELIVERED")
    pending_unsent = sorted(b for b, row in by_body.items() if row["state"] == "PENDING" and b not in load_calls)
    failed_rows = sorted(b for b, row in by_body.items() if row["state"] == "FAILED")

    print(
        "\n[postgres cut] "
        f"RPCs tried={log.tried} (sends={len(log.sends)} {dict(first_sends)}, "
        f"webhooks={len(log.ingests)} {dict(first_ingests)}); UNAVAILABLE/STORAGE_UNAVAILABLE={log.unavailable} "
        f"(while cut={log.unavailable_during_cut}); client retries {dict(retried)}; "
        f"provider calls={sum(load_calls.values())} message rows={len(by_body)} (incl. recovery probes) "
        f"PENDING rows never sent={len(pending_unsent)} FAILED rows={len(failed_rows)} "
        f"acknowledged webhooks={len(acknowledged)}; recovered in {recovery:.2f}s; "
        f"lost={len(lost)} unexpected answers={len(log.unexpected)}"
    )
    assert log.unavailable > 0, "the cut was not felt: the test proves nothing"
    assert not log.unexpected, "\n".join(log.unexpected[:20])
    assert not lost, "\n".join(lost[:20])
    assert not failed_rows, failed_rows[:10]
    assert recovery < 10.0


@requires_postgres
async def test_postgres_freeze_ends_rpcs_at_their_deadline_and_recovers_after_thaw(database_url: str) -> None:
    """A half-open database (no RST, no answer): RPCs end at the caller's deadline, never with a
    fake success, nothing is sent without a row, and the service recovers once bytes flow again."""
    provider = RecordingProvider()
    async with tcp_proxy(*pg_upstream()) as proxy:
        guard = await start_harness(through(proxy), provider=provider, sweep_interval=0)
        verify = verify_engine()
        try:
            await guard.register(INSTANCE, token=TOKEN)
            await guard.connect(INSTANCE, phone=PHONE)
            proxy.freeze()

            async def frozen(n: int) -> tuple[str, float]:
                started = time.monotonic()
                try:
                    reply = await guard.send.SendMessage(text_request(f"frozen {n}", key=f"frozen-{n}"), timeout=1.0)
                except grpc.aio.AioRpcError as error:
                    return error.code().name, time.monotonic() - started
                return f"OK {common_pb2.MessageState.Name(reply.state)}", time.monotonic() - started

            answers = await asyncio.gather(*(frozen(n) for n in range(6)))
            assert all(code in ("DEADLINE_EXCEEDED", "UNAVAILABLE") for code, _ in answers), answers
            assert all(elapsed < 2.0 for _, elapsed in answers), answers
            await asyncio.sleep(1.0)
            proxy.thaw()
            recovery = await first_successful_send(guard, timeout=10.0)
            await eventually(_no_inflight(guard), "no send attempt left running", timeout=5.0)
            by_body, _ = await stored_rows(verify)
        finally:
            await stop_harness(guard)
            await verify.dispose()
    frozen_rows = {b: r["state"] for b, r in by_body.items() if b.startswith("frozen ")}
    sent_bodies = {m.content.body for _i, m in provider.sends if isinstance(m.content, Text)}
    print(
        f"\n[postgres freeze] answers={Counter(c for c, _ in answers)} rows={frozen_rows} recovered in {recovery:.2f}s"
    )
    assert {b for b in sent_bodies if b.startswith("frozen ")} <= set(frozen_rows), "a provider call without a row"
    for body, state in frozen_rows.items():
        assert state in ("PENDING", "SENT", "FAILED"), (body, state)
        assert (state == "SENT") == (body in sent_bodies), (body, state)


def status_webhook(message_id: str, moment: int) -> bytes:
    return json.dumps(
        {
            "event": "webhookStatus",
            "instanceId": INSTANCE,
            "messageId": message_id,
            "status": "delivered",
            "moment": moment,
        }
    ).encode()


@requires_postgres
async def test_postgres_partition_answers_storage_unavailable_well_before_the_deadline(database_url: str) -> None:
    """The database stops answering without closing anything: a send with a 5 s deadline hears
    UNAVAILABLE/STORAGE_UNAVAILABLE after ~2 s (40 % of its deadline), a webhook post 503 after
    --db-timeout (it used to take 10 s and 15 s: only the connect timeout was set), never a fake
    success; after the partition everything works and nothing stored is lost."""
    import httpx

    provider = RecordingProvider()
    async with tcp_proxy(*pg_upstream()) as proxy:
        guard = await start_harness(
            through(proxy), provider=provider, sweep_interval=0, http_port=0, db_timeout=3.0, db_statement_timeout=8
        )
        verify = verify_engine()
        bridge = f"http://127.0.0.1:{guard.app.http_port}/webhooks/wapi"
        try:
            await guard.register(INSTANCE, token=TOKEN)
            await guard.connect(INSTANCE, phone=PHONE)
            before = await guard.send.SendMessage(text_request("before", key="before"), timeout=5.0)
            assert before.state == common_pb2.MESSAGE_STATE_SENT
            async with httpx.AsyncClient(timeout=10.0) as http:
                first = await http.post(bridge, content=status_webhook(before.provider_message_id, 1_749_132_400))
                assert first.status_code == 200, first.text
                proxy.freeze()

                async def frozen_send(n: int) -> tuple[str, str, float]:
                    started = time.monotonic()
                    try:
                        reply = await guard.send.SendMessage(
                            text_request(f"frozen {n}", key=f"frozen-{n}"), timeout=5.0
                        )
                    except grpc.aio.AioRpcError as error:
                        reason = rich_error(error).reason if error.code() is grpc.StatusCode.UNAVAILABLE else ""
                        return error.code().name, reason, time.monotonic() - started
                    return f"OK {common_pb2.MessageState.Name(reply.state)}", "", time.monotonic() - started

                async def frozen_post(n: int) -> tuple[int, float]:
                    started = time.monotonic()
                    answer = await http.post(bridge, content=status_webhook(f"3EB0FROZEN{n:06d}", 1_749_132_500 + n))
                    return answer.status_code, time.monotonic() - started

                async def frozen_read() -> tuple[str, str, float]:
                    started = time.monotonic()
                    try:
                        await guard.send.ListMessages(send_pb2.ListMessagesRequest(instance_id=INSTANCE), timeout=5.0)
                    except grpc.aio.AioRpcError as error:
                        reason = rich_error(error).reason if error.code() is grpc.StatusCode.UNAVAILABLE else ""
                        return error.code().name, reason, time.monotonic() - started
                    return "OK", "", time.monotonic() - started

                sends, posts, reads = await asyncio.gather(
                    asyncio.gather(*(frozen_send(n) for n in range(4))),
                    asyncio.gather(*(frozen_post(n) for n in range(3))),
                    asyncio.gather(*(frozen_read() for _ in range(2))),
                )
                proxy.thaw()
                print(f"\n[postgres partition] sends={sends} posts={posts} reads={reads}")
                for code, reason, elapsed in [*sends, *reads]:
                    assert (code, reason) == ("UNAVAILABLE", "STORAGE_UNAVAILABLE"), sends
                    assert 1.8 < elapsed < 2.7, sends  # 40 % of the 5 s deadline (under --db-timeout 3)
                for status, elapsed in posts:
                    assert status == 503, posts
                    assert elapsed < 3.7, posts  # --db-timeout 3: no deadline on an HTTP post

                recovery = await first_successful_send(guard, timeout=15.0)
                again = await http.post(bridge, content=status_webhook("3EB0FROZEN000000", 1_749_132_500))
                assert again.status_code == 200, again.text  # W-API's retry of a refused post is stored
            await eventually(_no_inflight(guard), "no send attempt left running", timeout=10.0)
            by_body, event_ids = await stored_rows(verify)
        finally:
            await stop_harness(guard)
            await verify.dispose()
    print(f"[postgres partition] recovered in {recovery:.2f}s")
    assert by_body["before"]["state"] in ("SENT", "DELIVERED")  # stored before the partition: kept
    assert len(event_ids) >= 3  # connection + the first status + the retried one
    sent_bodies = {m.content.body for _i, m in provider.sends if isinstance(m.content, Text)}
    assert {b for b in sent_bodies if b.startswith("frozen ")} <= {b for b in by_body if b.startswith("frozen ")}


class OutageOnSendProvider(RecordingProvider):
    """Accepts the send, and the database goes away right then: after the row was stored,
    before the answer is. `down_for` seconds later the proxy is restored (None: by the test)."""

    def __init__(self, proxy: TcpProxy, down_for: float | None) -> None:
        super().__init__()
        self.proxy = proxy
        self.down_for = down_for
        self.restorer: asyncio.Task[None] | None = None

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome:
        outcome = await super().send(credentials, message, timeout=timeout)
        await self.proxy.cut()
        if self.down_for is not None:
            self.restorer = asyncio.create_task(self._restore_later(self.down_for))
        return outcome

    async def _restore_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.proxy.restore()


@requires_postgres
async def test_provider_answer_during_a_short_outage_is_stored_once_the_database_is_back(database_url: str) -> None:
    async with tcp_proxy(*pg_upstream()) as proxy:
        provider = OutageOnSendProvider(proxy, down_for=1.0)
        guard = await start_harness(through(proxy), provider=provider, sweep_interval=0)
        try:
            await guard.register(INSTANCE, token=TOKEN)
            await guard.connect(INSTANCE, phone=PHONE)
            started = time.monotonic()
            reply = await guard.send.SendMessage(text_request("during outage"), timeout=RPC_TIMEOUT)
            elapsed = time.monotonic() - started
            assert (reply.state, reply.provider_message_id) == (
                common_pb2.MESSAGE_STATE_SENT,
                provider.issued["during outage"],
            )
            assert 1.0 <= elapsed < 6.0, f"answered after {elapsed:.2f}s"
            stored = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=reply.id))
            assert (stored.state, stored.provider_message_id) == (reply.state, reply.provider_message_id)
            assert len(provider.sends) == 1
        finally:
            await stop_harness(guard)


@requires_postgres
async def test_provider_answer_during_a_long_outage_is_never_reported_sent(database_url: str) -> None:
    """The core gives up storing the answer (bounded): the caller hears UNAVAILABLE, never SENT,
    and once the database is back the reconciler settles the row as FAILED/OUTCOME_UNKNOWN."""
    async with tcp_proxy(*pg_upstream()) as proxy:
        provider = OutageOnSendProvider(proxy, down_for=None)
        guard = await start_harness(
            through(proxy), provider=provider, sweep_interval=0.2, pending_grace=1.0, send_timeout=1.0
        )
        try:
            await guard.register(INSTANCE, token=TOKEN)
            await guard.connect(INSTANCE, phone=PHONE)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await guard.send.SendMessage(text_request("long outage", key="long-outage"), timeout=RPC_TIMEOUT)
            elapsed = time.monotonic() - started
            error = rich_error(caught.value)
            assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
            assert elapsed < 12.0
            await proxy.restore()

            async def settled() -> common_pb2.Message | None:
                try:
                    listed = await guard.send.ListMessages(
                        send_pb2.ListMessagesRequest(instance_id=INSTANCE), timeout=2.0
                    )
                except grpc.aio.AioRpcError:
                    return None  # a pooled connection from before the outage fails once
                assert len(listed.messages) == 1
                msg = listed.messages[0]
                assert msg.state in (common_pb2.MESSAGE_STATE_PENDING, common_pb2.MESSAGE_STATE_FAILED), msg
                return msg if msg.state == common_pb2.MESSAGE_STATE_FAILED else None

            msg = await eventually(settled, "the reconciler settles the PENDING row", timeout=5.0)
            assert (msg.failure_reason, msg.provider_message_id) == ("OUTCOME_UNKNOWN", "")

            # The caller retries with the same key: the stored verdict, no second provider call.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await guard.send.SendMessage(text_request("long outage", key="long-outage"), timeout=RPC_TIMEOUT)
            assert rich_error(caught.value).reason == "OUTCOME_UNKNOWN"
            assert len(provider.sends) == 1
        finally:
            await stop_harness(guard)


async def app_backends(verify: AsyncEngine, proxy: TcpProxy) -> tuple[int, list[dict[str, Any]]]:
    """(backends of this App, every 'wapi-guard' backend) on the server."""
    query = text(
        "SELECT pid, client_port, state, backend_start FROM pg_stat_activity"
        " WHERE application_name = 'wapi-guard' AND datname = current_database()"
    )
    async with verify.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(query)]
    return sum(1 for r in rows if r["client_port"] in proxy.upstream_ports), rows


@requires_postgres
@pytest.mark.parametrize("stop_while_cut", [False, True], ids=["stop-after-restore", "stop-while-down"])
async def test_no_postgres_connection_leaks_after_a_fault_run(database_url: str, stop_while_cut: bool) -> None:
    verify = verify_engine()
    try:
        async with tcp_proxy(*pg_upstream()) as proxy:
            guard = await start_harness(through(proxy), provider=RecordingProvider(), sweep_interval=0)
            stopped = False
            try:
                await guard.register(INSTANCE, token=TOKEN)
                await guard.connect(INSTANCE, phone=PHONE)
                log = await run_load(guard, proxy, workers=6, before=0.3, cut_for=0.5, after=0.5, max_rpcs=1500)
                assert log.unavailable > 0
                assert not log.unexpected, log.unexpected[:10]
                mine, _ = await app_backends(verify, proxy)
                assert mine > 0, "the App holds no connection through the proxy: the check below proves nothing"
                if stop_while_cut:
                    await proxy.cut()
                await stop_harness(guard)
                stopped = True
                await proxy.restore()
            finally:
                if not stopped:
                    await stop_harness(guard)

            async def drained() -> bool:
                mine, every = await app_backends(verify, proxy)
                return mine == 0 and not every

            try:
                await eventually(drained, "no 'wapi-guard' backend left on the server", timeout=5.0)
            except AssertionError:
                mine, every = await app_backends(verify, proxy)
                raise AssertionError(f"backends left: this App={mine}, all 'wapi-guard'={every}") from None
    finally:
        await verify.dispose()


# --- provider faults (the real WapiProvider against the simulator) ------------------------------


class CountingWapiProvider(WapiProvider):
    """The real adapter; counts send calls so a blocked send is seen not to reach it."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.send_calls = 0

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome:
        self.send_calls += 1
        return await super().send(credentials, message, timeout=timeout)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator()
    await simulator.start()
    simulator.add_instance(INSTANCE, TOKEN, behaviour="healthy", phone=PHONE)
    try:
        yield simulator
    finally:
        await simulator.stop()


@contextlib.asynccontextmanager
async def guard_on(database_url: str, base_url: str, **settings: Any) -> AsyncIterator[Harness]:
    provider = CountingWapiProvider(base_url)
    guard = await start_harness(database_url, provider=provider, sweep_interval=0, **settings)
    try:
        await guard.register(INSTANCE, token=TOKEN)
        await guard.connect(INSTANCE, phone=PHONE)  # CONNECTED by webhook: no probe needed
        assert (await health(guard)).state == common_pb2.INSTANCE_STATE_CONNECTED
        yield guard
    finally:
        await stop_harness(guard)


@contextlib.asynccontextmanager
async def provider_fault(kind: str, sim: Simulator) -> AsyncIterator[str]:
    """Yields the W-API base URL that exhibits the fault."""
    if kind in ("timeout", "gateway_error"):
        sim.set_behaviour(INSTANCE, kind)
        yield sim.base_url
    elif kind == "slow":
        async with tcp_proxy("127.0.0.1", sim.port, delay=1.5) as proxy:
            yield f"http://127.0.0.1:{proxy.port}/v1"
    elif kind == "refused":
        yield f"http://127.0.0.1:{closed_port()}/v1"
    else:  # pragma: no cover
        raise ValueError(kind)


FAULTS = {
    # kind: (send_timeout, failure reason, gRPC code)
    "timeout": (0.4, "PROVIDER_TIMEOUT", grpc.StatusCode.DEADLINE_EXCEEDED),
    "gateway_error": (2.0, "PROVIDER_UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
    "slow": (0.4, "PROVIDER_TIMEOUT", grpc.StatusCode.DEADLINE_EXCEEDED),
    "refused": (2.0, "PROVIDER_UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
}
THRESHOLD = 4  # the simulator rotates 4 gateway pages (502 html, 503 json, 504 html, 200 html)


@pytest.mark.parametrize("kind", sorted(FAULTS))
async def test_provider_fault_fails_the_message_with_its_reason_and_health_follows(
    database_url: str, sim: Simulator, kind: str
) -> None:
    send_timeout, reason, code = FAULTS[kind]
    async with (
        provider_fault(kind, sim) as base_url,
        guard_on(database_url, base_url, send_timeout=send_timeout, gateway_failure_threshold=THRESHOLD) as guard,
    ):
        provider: CountingWapiProvider = guard.provider
        for n in range(1, THRESHOLD + 1):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await guard.send.SendMessage(text_request(f"{kind} {n}", key=f"{kind}-{n}"), timeout=10.0)
            elapsed = time.monotonic() - started
            error = rich_error(caught.value)
            assert (error.code, error.reason) == (code, reason), f"send {n}: {error}"
            assert elapsed < send_timeout + 1.0, f"send {n} took {elapsed:.2f}s with send_timeout={send_timeout}"
            stored = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=error.metadata["message_id"]))
            assert (stored.state, stored.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, reason)
            assert stored.provider_message_id == ""
            h = await health(guard)
            if n < THRESHOLD:
                assert h.state == common_pb2.INSTANCE_STATE_CONNECTED, f"degraded after {n} failures"
            else:
                assert (h.state, h.reason, h.can_send) == (
                    common_pb2.INSTANCE_STATE_DEGRADED,
                    "TIMEOUT_OR_GATEWAY",
                    False,
                )
                assert h.phone_number == PHONE  # gateway trouble says nothing about the session
        assert provider.send_calls == THRESHOLD
        if kind in ("timeout", "gateway_error"):
            assert len(sim.sends(INSTANCE)) == THRESHOLD  # exactly one HTTP request per send, no retry

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await guard.send.SendMessage(text_request(f"{kind} blocked"), timeout=10.0)
        blocked = rich_error(caught.value)
        assert (blocked.code, blocked.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TIMEOUT_OR_GATEWAY")
        assert provider.send_calls == THRESHOLD  # the preflight stopped it before the provider


async def test_slow_provider_within_the_budget_is_sent_with_the_id_it_issued(database_url: str, sim: Simulator) -> None:
    async with (
        tcp_proxy("127.0.0.1", sim.port, delay=0.3) as proxy,
        guard_on(database_url, f"http://127.0.0.1:{proxy.port}/v1", send_timeout=3.0) as guard,
    ):
        reply = await guard.send.SendMessage(text_request("slow but fine"), timeout=10.0)
        assert reply.state == common_pb2.MESSAGE_STATE_SENT
        issued = [s["message_id"] for s in sim.sends(INSTANCE)]
        assert issued == [reply.provider_message_id]


@pytest.mark.parametrize("hang", ["simulator-timeout", "silent-socket"])
async def test_client_deadline_bounds_the_handler_even_with_a_30s_send_timeout(
    database_url: str, sim: Simulator, hang: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if hang == "simulator-timeout":
            sim.set_behaviour(INSTANCE, "timeout")
            base_url = sim.base_url
        else:  # accepts the connection, never answers a byte
            proxy = await stack.enter_async_context(tcp_proxy("127.0.0.1", sim.port, delay=3600.0))
            base_url = f"http://127.0.0.1:{proxy.port}/v1"
        guard = await stack.enter_async_context(guard_on(database_url, base_url, send_timeout=30.0))

        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await guard.send.SendMessage(text_request("deadline"), timeout=0.5)
        elapsed = time.monotonic() - started
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 0.5 + 0.5, f"the call took {elapsed:.2f}s with a 0.5s deadline"

        async def settled() -> common_pb2.Message | None:
            listed = await guard.send.ListMessages(send_pb2.ListMessagesRequest(instance_id=INSTANCE))
            assert len(listed.messages) == 1
            msg = listed.messages[0]
            return msg if msg.state != common_pb2.MESSAGE_STATE_PENDING else None

        msg = await eventually(settled, "the message leaves PENDING", timeout=2.0)
        assert (msg.state, msg.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, "PROVIDER_TIMEOUT")
        assert time.monotonic() - started < 2.0
        await eventually(_no_inflight(guard), "no send attempt left running", timeout=1.0)

        # The same holds for a retry.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await guard.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=msg.id), timeout=0.5)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.0

        async def retried() -> common_pb2.Message | None:
            again = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=msg.id))
            return again if again.attempts == 2 and again.state != common_pb2.MESSAGE_STATE_PENDING else None

        again = await eventually(retried, "the retried message leaves PENDING", timeout=2.0)
        assert (again.state, again.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, "PROVIDER_TIMEOUT")
        await eventually(_no_inflight(guard), "no retry attempt left running", timeout=1.0)
        assert guard.provider.send_calls == 2


def _no_inflight(guard: Harness) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not guard.app.sending.inflight

    return check
