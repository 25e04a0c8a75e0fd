"""The end-to-end stack: the W-API simulator + a real wapi-guard App (gRPC + HTTP bridge) on loopback.

Nothing is mocked: the App uses the real WapiProvider against the simulator's HTTP API, and the
simulator posts its webhooks to the App's real HTTP bridge. Tests drive everything through the
public gRPC API, the way an internal service would.

`Stack.submit()` is the one way tests send: besides calling SendMessage it keeps the ledger of
*false SENTs* — a send reported as accepted while the caller had been told (GetInstanceHealth)
that the instance cannot send, or with a provider id the simulator never issued. `Stack.audit()`
then compares what every stored message tells the caller with what the recipient would see.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from sqlalchemy import Table, select

from adapters.persistence.bounded import BoundedStore
from adapters.persistence.schema import events
from adapters.persistence.store import Repository
from adapters.simulator import Simulator
from services.api.wapiguard.v1 import (
    common_pb2,
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
    webhook_pb2_grpc,
)
from services.bootstrap import App
from tests import polling
from tests.integration.harness import RichError, rich_error, wire_webhooks

T = TypeVar("T")

RECIPIENT = "5515981121710"
PHONE = "5511987654321"
WAIT = 5.0  # upper bound of every poll in this folder

PENDING = common_pb2.MESSAGE_STATE_PENDING
SENT = common_pb2.MESSAGE_STATE_SENT
DELIVERED = common_pb2.MESSAGE_STATE_DELIVERED
READ = common_pb2.MESSAGE_STATE_READ
PLAYED = common_pb2.MESSAGE_STATE_PLAYED
FAILED = common_pb2.MESSAGE_STATE_FAILED

CONNECTED = common_pb2.INSTANCE_STATE_CONNECTED
SESSION_INCOMPLETE = common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE
DEGRADED = common_pb2.INSTANCE_STATE_DEGRADED
DISCONNECTED = common_pb2.INSTANCE_STATE_DISCONNECTED

STATE_NAME: dict[int, str] = {int(v): k.removeprefix("MESSAGE_STATE_") for k, v in common_pb2.MessageState.items()}
ACCEPTED_STATES = frozenset({SENT, DELIVERED, READ, PLAYED})


def applied_path(msg: common_pb2.Message) -> list[str]:
    """The states the message really went through, e.g. ['PENDING', 'SENT', 'DELIVERED', 'READ']."""
    return [STATE_NAME[h.to_state] for h in msg.history if h.applied]


def text_request(
    instance_id: str, body: str = "Olá! Seu pedido foi confirmado.", key: str = "", to: str = RECIPIENT
) -> send_pb2.SendMessageRequest:
    return send_pb2.SendMessageRequest(
        instance_id=instance_id, to=to, idempotency_key=key, text=send_pb2.TextContent(body=body)
    )


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = WAIT) -> T:
    return await polling.eventually(check, what, timeout)


def unbounded(store: Any) -> Repository:
    """The repository behind the use cases' request-bounded store (adapters/persistence/bounded.py)."""
    repo = store.inner if isinstance(store, BoundedStore) else store
    assert isinstance(repo, Repository)
    return repo


@dataclass
class Rejection:
    """A refused SendMessage, decoded the way a client would."""

    error: grpc.aio.AioRpcError
    rich: RichError
    stored: common_pb2.Message | None

    @property
    def code(self) -> grpc.StatusCode:
        return self.rich.code

    @property
    def reason(self) -> str:
        return self.rich.reason

    def wire_text(self) -> str:
        """Everything the caller receives with the error, as text (for secret-leak checks)."""
        trailers = [f"{k}={v!r}" for k, v in (self.error.trailing_metadata() or ()) if isinstance(v, (str, bytes))]
        return " ".join(
            [
                str(self.error.details()),
                str(self.error.debug_error_string()),
                *trailers,
                repr(self.rich),
                str(self.stored) if self.stored is not None else "",
            ]
        )


@dataclass
class Stack:
    app: App
    sim: Simulator
    secret: str
    channel: grpc.aio.Channel
    send: send_pb2_grpc.SendServiceAsyncStub = field(init=False)
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub = field(init=False)
    webhooks: webhook_pb2_grpc.WebhookServiceAsyncStub = field(init=False)
    tokens: dict[str, str] = field(default_factory=dict)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    false_sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.send = send_pb2_grpc.SendServiceStub(self.channel)
        self.health = instance_health_pb2_grpc.InstanceHealthServiceStub(self.channel)
        self.webhooks = webhook_pb2_grpc.WebhookServiceStub(self.channel)

    # --- addresses ---------------------------------------------------------------------------

    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.app.http_port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.bridge_url}/webhooks/wapi/{self.secret}"

    # --- instances ---------------------------------------------------------------------------

    async def add_instance(
        self,
        instance_id: str,
        behaviour: str = "healthy",
        *,
        phone: str = PHONE,
        plan: str = "PRO",
        registered_token: str | None = None,
        probe: bool = True,
        wired: bool = True,
    ) -> common_pb2.InstanceHealth:
        """Creates the instance at the simulator and registers it through RegisterInstance.

        `wired`: the simulator posts this instance's webhooks to the bridge (`set_webhook_url`), so
        the instance is recorded as `webhooks configure` leaves it (CONFIGURED) and the answer is its
        health after that: a healthy instance is plainly healthy. False: as registered, webhooks
        UNCONFIGURED (no --public-url)."""
        token = f"tok-{secrets.token_hex(16)}"
        self.tokens[instance_id] = token
        self.sim.add_instance(instance_id, token, behaviour=behaviour, phone=phone, plan=plan)
        answer = await self.health.RegisterInstance(
            instance_health_pb2.RegisterInstanceRequest(
                instance_id=instance_id,
                name=f"Loja {instance_id}",
                token=token if registered_token is None else registered_token,
                plan=common_pb2.PLAN_LITE if plan == "LITE" else common_pb2.PLAN_PRO,
                skip_probe=not probe,
            )
        )
        if not wired or answer.webhooks_state == "CONFIGURED":
            return answer
        await wire_webhooks(self.app, instance_id)
        return await self.get_health(instance_id)

    async def get_health(self, instance_id: str, *, refresh: bool = False) -> common_pb2.InstanceHealth:
        return await self.health.GetInstanceHealth(
            instance_health_pb2.GetInstanceHealthRequest(instance_id=instance_id, refresh=refresh)
        )

    async def wait_health(
        self, instance_id: str, check: Callable[[common_pb2.InstanceHealth], bool], what: str
    ) -> common_pb2.InstanceHealth:
        async def probe() -> common_pb2.InstanceHealth | None:
            h = await self.get_health(instance_id)
            return h if check(h) else None

        return await eventually(probe, f"{instance_id}: {what}")

    # --- messages ----------------------------------------------------------------------------

    def issued_ids(self, instance_id: str | None = None) -> set[str]:
        """Message ids the simulator really handed out (it accepted those sends)."""
        ids = [instance_id] if instance_id else self.sim.instance_ids()
        return {str(s["message_id"]) for i in ids for s in self.sim.sends(i) if s.get("message_id")}

    async def submit(self, request: send_pb2.SendMessageRequest) -> common_pb2.Message:
        """SendMessage as a caller would, keeping the false-SENT ledger."""
        try:
            could_send = (await self.get_health(request.instance_id)).can_send
        except grpc.aio.AioRpcError:
            could_send = False
        reply = await self.send.SendMessage(request)
        if reply.state in ACCEPTED_STATES:
            if not could_send:
                self.false_sent.append(f"{reply.id}: SENT although health said the instance cannot send")
            if reply.provider_message_id not in self.issued_ids(request.instance_id):
                self.false_sent.append(f"{reply.id}: provider id {reply.provider_message_id!r} never issued")
        return reply

    async def refused(self, request: send_pb2.SendMessageRequest) -> Rejection:
        """A send that must be refused; returns the decoded error and the stored message."""
        try:
            reply = await self.submit(request)
        except grpc.aio.AioRpcError as error:
            rich = rich_error(error)
            stored = None
            if rich.metadata.get("message_id"):
                stored = await self.message(rich.metadata["message_id"])
            return Rejection(error, rich, stored)
        raise AssertionError(f"send was not refused: {STATE_NAME[reply.state]} {reply.provider_message_id}")

    async def message(self, message_id: str) -> common_pb2.Message:
        return await self.send.GetMessage(send_pb2.GetMessageRequest(message_id=message_id))

    async def wait_state(self, message_id: str, state: int) -> common_pb2.Message:
        last: list[common_pb2.Message] = []

        async def check() -> common_pb2.Message | None:
            msg = await self.message(message_id)
            last[:] = [msg]
            return msg if msg.state == state else None

        try:
            return await eventually(check, f"message {message_id} {STATE_NAME[state]}")
        except AssertionError:
            got = STATE_NAME[last[0].state] if last else "?"
            raise AssertionError(f"message {message_id} still {got}, wanted {STATE_NAME[state]}") from None

    async def all_messages(self) -> list[common_pb2.Message]:
        """Every message of the instances this stack registered (the Postgres test database is shared)."""
        out: list[common_pb2.Message] = []
        for instance_id in self.tokens:
            token = ""
            while True:
                page = await self.send.ListMessages(
                    send_pb2.ListMessagesRequest(instance_id=instance_id, page_size=500, page_token=token)
                )
                out += page.messages
                token = page.next_page_token
                if not token:
                    break
        return out

    # --- database ----------------------------------------------------------------------------

    async def rows(self, table: Table, *where: Any) -> list[dict[str, Any]]:
        repo = unbounded(self.app.store)
        async with repo.engine.connect() as conn:
            result = await conn.execute(select(table).where(*where))
            return [dict(r._mapping) for r in result]

    async def stored_events(self, *where: Any) -> list[dict[str, Any]]:
        """Raw events stored since this stack started that match `where`."""
        return await self.rows(events, events.c.received_at >= self.started_at, *where)

    # --- truth -------------------------------------------------------------------------------

    def posted_statuses(self) -> dict[str, set[str]]:
        """provider message id -> status words the bridge accepted (2xx) for it."""
        out: dict[str, set[str]] = {}
        for post in self.sim.webhook_posts:
            body, status = post.get("body") or {}, post.get("status")
            if isinstance(status, int) and 200 <= status < 300 and body.get("messageId") and body.get("status"):
                out.setdefault(str(body["messageId"]), set()).add(str(body["status"]))
        return out

    async def webhooks_settled(self) -> None:
        async def settled() -> bool:
            return all(p.get("status") is not None or p.get("error") for p in self.sim.webhook_posts)

        await eventually(settled, "every webhook post answered")

    async def audit(self) -> None:
        """What each stored message tells the caller matches what the simulator did for the recipient."""
        problems = list(self.false_sent)
        messages = await self.all_messages()
        # Every receipt the messages reflect was posted before they were read; wait for the
        # simulator to record the bridge's answer to each post it started.
        await self.webhooks_settled()
        issued = self.issued_ids()
        posted = self.posted_statuses()
        for m in messages:
            pid = m.provider_message_id
            name = f"{m.id} ({STATE_NAME[m.state]})"
            if m.state == PENDING:
                problems.append(f"{name}: left PENDING")
            if m.state in ACCEPTED_STATES and pid not in issued:
                problems.append(f"{name}: accepted with provider id {pid!r} the provider never issued")
            if m.state == FAILED and pid:
                problems.append(f"{name}: FAILED but carries provider id {pid!r}")
            seen = posted.get(pid, set())
            if m.state in (DELIVERED, READ, PLAYED) and not seen & {"delivered", "read", "played"}:
                problems.append(f"{name}: no delivery signal from the provider")
            if m.state == READ and not seen & {"read", "played"}:
                problems.append(f"{name}: no read signal from the provider")
        reported = {m.provider_message_id for m in messages if m.state in ACCEPTED_STATES}
        problems += [f"provider accepted {pid} but the caller was never told so" for pid in issued - reported]
        assert not problems, "\n".join(problems)

    async def close(self) -> None:
        await self.channel.close()
        await self.app.stop(grace=0.5)
        await self.sim.stop()
