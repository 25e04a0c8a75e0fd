"""Outbound webhooks under attack: a receiver that trickles its answer, a huge filter, a token
scoped to no instance, targets on private addresses, malformed requests. Receivers on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from services.api.wapiguard.v1 import events_pb2, instance_health_pb2, webhook_pb2
from statemachine.validation import MAX_INSTANCE_IDS
from tests.integration.harness import Harness, rich_error, start_harness, stop_harness
from tests.integration.test_outbound_webhooks import Receiver, received, subs, wait_until
from tests.ui.conftest import cli

TIMEOUT = 0.5


class Trickler:
    """Answers 200 headers at once, then one body byte every 0.2 s (for at most 8 s): records when
    each post started and ended and how many posts of one webhook-id were open at once."""

    def __init__(self) -> None:
        self.url = ""
        self.spans: list[tuple[str, float, float]] = []
        self.open: dict[str, int] = {}
        self.max_open = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/slow", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/slow"  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        hook_id = request.headers["webhook-id"]
        self.open[hook_id] = self.open.get(hook_id, 0) + 1
        self.max_open = max(self.max_open, self.open[hook_id])
        started = time.monotonic()
        response = web.StreamResponse(status=200, headers={"content-length": "40"})
        try:
            await response.prepare(request)
            for _ in range(40):
                await response.write(b"x")
                await asyncio.sleep(0.2)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            self.open[hook_id] -= 1
            self.spans.append((hook_id, started, time.monotonic()))
        return response

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def trickler() -> AsyncIterator[Trickler]:
    t = Trickler()
    await t.start()
    try:
        yield t
    finally:
        await t.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def test_a_trickling_receiver_is_cut_at_the_timeout_and_never_delays_another(
    database_url: str, trickler: Trickler, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wapi_guard.outbound")
    h = await start_harness(
        database_url, webhook_timeout=TIMEOUT, webhook_concurrency=2, webhook_retry_schedule="0.1,0.1,0.1", http_port=0
    )
    try:
        await h.register("INST-A")
        await h.register("INST-B")
        slow = await subs(h).CreateWebhookSubscription(
            events_pb2.CreateWebhookSubscriptionRequest(url=trickler.url, instance_ids=["INST-A"])
        )
        await subs(h).CreateWebhookSubscription(
            events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url, instance_ids=["INST-B"])
        )
        await received(h, 4, "INST-A")
        await wait_until(lambda: len(trickler.open) >= 1, timeout=10)
        sent = time.monotonic()
        await received(h, 1, "INST-B")
        await wait_until(lambda: len(receiver.posts) == 1, timeout=15)
        # The good receiver's event is not queued behind the slow one's attempts.
        assert receiver.posts[0][0] - sent < 3.0
        await wait_until(lambda: len(trickler.spans) >= 6, timeout=20)
        # Every attempt ended by the timeout (the receiver would have trickled for 8 s).
        assert max(end - start for _id, start, end in trickler.spans) < TIMEOUT + 2.0
        assert trickler.max_open == 1  # never two attempts of one webhook-id at once
        got = await subs(h).GetWebhookSubscription(events_pb2.GetWebhookSubscriptionRequest(id=slow.id))
        assert got.stats.timeouts >= 1
        assert got.stats.last_error.startswith("timeout after")
        lines = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
        assert lines
        assert slow.id in lines[0]
        assert all(slow.secret not in line for line in lines)
        url = f"http://127.0.0.1:{h.app.http_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            metrics = await response.text()
        assert any(
            line.startswith("wapiguard_webhooks_timeouts_total{") and f'subscription="{slow.id}"' in line
            for line in metrics.splitlines()
        ), metrics
    finally:
        await stop_harness(h)


ADMIN = "admin-token-0123456789abcdef"
SCOPED = "scoped-token-0123456789abcd"
NOTHING = "nothing-token-0123456789abc"
TOKENS = f"admin:{ADMIN},scoped:{SCOPED}@INST-A,nothing:{NOTHING}@"


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def ingest(h: Harness, instance: str, n: int) -> None:
    for i in range(n):
        body = {
            "event": "webhookReceived",
            "instanceId": instance,
            "messageId": f"3EB0SC{instance}{i:04d}",
            "chat": {"id": "5511988887777"},
            "moment": 1_749_150_000 + i,
            "msgContent": {"conversation": f"m {i}"},
        }
        await h.webhooks.IngestEvent(
            webhook_pb2.IngestEventRequest(payload=json.dumps(body).encode()), metadata=bearer(ADMIN)
        )


async def test_a_subscription_reaches_only_its_creators_scope(database_url: str, receiver: Receiver) -> None:
    h = await start_harness(database_url, api_tokens=TOKENS)
    try:
        for instance in ("INST-A", "INST-B"):
            await h.health.RegisterInstance(
                instance_health_pb2.RegisterInstanceRequest(
                    instance_id=instance, token="wapi-tok-1234567", skip_probe=True
                ),
                metadata=bearer(ADMIN),
            )
        # A token scoped to no instance cannot subscribe (an empty filter is not "every instance").
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await subs(h).CreateWebhookSubscription(
                events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url), metadata=bearer(NOTHING)
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
        # A scoped token's empty filter is its scope.
        scoped = await subs(h).CreateWebhookSubscription(
            events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url), metadata=bearer(SCOPED)
        )
        assert list(scoped.instance_ids) == ["INST-A"]
        # Stored before the rule (or a scope narrowed since): checked again at delivery.
        store = h.app.dispatcher.store  # type: ignore[union-attr]
        cursor = (await store.get_subscription(scoped.id)).cursor  # type: ignore[union-attr]
        for owner in ("nothing", "scoped", "gone"):
            await store.create_subscription(
                f"whsub_legacy_{owner}",
                url=receiver.url + f"?owner={owner}",
                secret="whsec_" + "A" * 43,
                event_types=[],
                instance_ids=[],
                owner=owner,
                description="",
                enabled=True,
                cursor=cursor,
            )
        await ingest(h, "INST-A", 2)
        await ingest(h, "INST-B", 2)
        await wait_until(lambda: len(receiver.posts) >= 4, timeout=15)
        await asyncio.sleep(1.0)
        instances = sorted(json.loads(body)["data"]["instance_id"] for _at, _h, body in receiver.posts)
        # The scoped subscription and the legacy "scoped" one: INST-A only; the others nothing.
        assert instances == ["INST-A"] * 4
    finally:
        await stop_harness(h)


async def test_subscription_requests_are_bounded_and_checked_before_storage(
    database_url: str, receiver: Receiver
) -> None:
    h = await start_harness(database_url)
    try:
        sub = await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        cases: list[tuple[Any, Any, str]] = [
            (
                subs(h).CreateWebhookSubscription,
                events_pb2.CreateWebhookSubscriptionRequest(
                    url=receiver.url, instance_ids=[f"I-{n}" for n in range(MAX_INSTANCE_IDS + 1)]
                ),
                "instance_ids",
            ),
            (
                subs(h).CreateWebhookSubscription,
                events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url, instance_ids=["INST\x00A"]),
                "instance_ids",
            ),
            (
                subs(h).CreateWebhookSubscription,
                events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url + "\x00x"),
                "url",
            ),
            (
                subs(h).UpdateWebhookSubscription,
                events_pb2.UpdateWebhookSubscriptionRequest(
                    id=sub.id, set_instance_ids=True, instance_ids=[f"I-{n}" for n in range(40_000)]
                ),
                "instance_ids",
            ),
            (
                subs(h).ListWebhookDeliveries,
                events_pb2.ListWebhookDeliveriesRequest(subscription_id=sub.id, page_token="99999999999999999999999"),
                "page_token",
            ),
            (
                subs(h).ListWebhookDeliveries,
                events_pb2.ListWebhookDeliveriesRequest(subscription_id=sub.id, page_token="²"),
                "page_token",
            ),
            (
                subs(h).ReplayWebhookDeliveries,
                events_pb2.ReplayWebhookDeliveriesRequest(subscription_id=sub.id, delivery_ids=range(1, 40_001)),
                "delivery_ids",
            ),
            (
                subs(h).GetWebhookSubscription,
                events_pb2.GetWebhookSubscriptionRequest(id="whsub_\x00"),
                "id",
            ),
        ]
        for method, request, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await method(request)
            error = rich_error(caught.value)
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT, (field, error)
            # The field itself, or one entry of it (`instance_ids[0]`).
            assert any(name == field or name.startswith(f"{field}[") for name in error.violations), (field, error)
    finally:
        await stop_harness(h)


async def test_one_failing_subscription_never_stops_the_others(
    database_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wapi_guard.outbound")
    h = await start_harness(database_url)
    try:
        await h.register("INST-A")
        store = h.app.dispatcher.store  # type: ignore[union-attr]
        head = (await h.app.dispatcher.repo.head_change_cursor()).encode()  # type: ignore[union-attr]
        common: dict[str, Any] = {
            "secret": "whsec_" + "A" * 43,
            "event_types": [],
            "description": "",
            "owner": "anonymous",
        }
        # Stored before the bound existed: 40,001 ids (more than a query may carry), and one whose
        # fan-out fails every round (an unreadable cursor). Both created first.
        await store.create_subscription(
            "whsub_0_huge",
            url=receiver.url + "?huge",
            instance_ids=["INST-A"] + [f"I-{n:05d}" for n in range(40_000)],
            enabled=True,
            cursor=head,
            **common,
        )
        await store.create_subscription(
            "whsub_1_broken", url=receiver.url + "?broken", instance_ids=[], enabled=True, cursor="junk", **common
        )
        good = await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        await received(h, 2, "INST-A")
        await wait_until(lambda: len(receiver.posts) >= 4, timeout=15)
        await asyncio.sleep(2.5)  # a few fan-out rounds
        ids = {headers["webhook-id"] for _at, headers, _body in receiver.posts}
        assert len(receiver.posts) == 4
        assert len(ids) == 2
        failures = [r.getMessage() for r in caplog.records if "fan-out failed" in r.getMessage()]
        assert len(failures) == 1  # once per interval, however many rounds failed
        assert "whsub_1_broken" in failures[0]
        assert len(failures[0]) < 1000
        broken = await store.get_subscription("whsub_1_broken")
        assert broken is not None
        assert broken.last_error.startswith("fan-out failed")
        assert good.id not in failures[0]
    finally:
        await stop_harness(h)


PRIVATE_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:5432/",
    "http://10.0.0.1/hook",
    "http://[::1]:8080/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://localhost:8080/hook",
    "http://192.168.1.10/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://metadata.google.internal/computeMetadata/v1/",
]


async def test_the_default_refuses_private_targets_and_credentials(database_url: str, receiver: Receiver) -> None:
    h = await start_harness(database_url, webhook_allow_private=False)
    try:
        for url in PRIVATE_URLS:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=url))
            error = rich_error(caught.value)
            assert error.code is grpc.StatusCode.INVALID_ARGUMENT, url
            assert "url" in error.violations, url
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await subs(h).CreateWebhookSubscription(
                events_pb2.CreateWebhookSubscriptionRequest(url="https://user:hunter2-secret@hooks.example.com/x")
            )
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "credentials" in error.violations["url"]
        assert "hunter2" not in str(caught.value.details()) + str(caught.value.trailing_metadata())
    finally:
        await stop_harness(h)


async def test_a_private_target_is_refused_again_at_delivery(database_url: str, receiver: Receiver) -> None:
    """A URL stored before the policy, or a name that resolves to a private address by the time
    of the attempt (DNS rebinding): the attempt is not made, the delivery says why."""
    h = await start_harness(database_url, webhook_allow_private=False, webhook_retry_schedule="30", http_port=0)
    try:
        await h.register("INST-A")
        store = h.app.dispatcher.store  # type: ignore[union-attr]
        head = (await h.app.dispatcher.repo.head_change_cursor()).encode()  # type: ignore[union-attr]
        await store.create_subscription(
            "whsub_private",
            url=receiver.url,
            secret="whsec_" + "A" * 43,
            event_types=[],
            instance_ids=[],
            owner="anonymous",
            description="",
            enabled=True,
            cursor=head,
        )
        await received(h, 1, "INST-A")

        async def refused() -> list[Any]:
            page = await subs(h).ListWebhookDeliveries(
                events_pb2.ListWebhookDeliveriesRequest(subscription_id="whsub_private")
            )
            return [d for d in page.deliveries if d.last_error.startswith("refused target")]

        deadline = time.monotonic() + 10
        while not await refused():
            assert time.monotonic() < deadline, "the delivery was not refused"
            await asyncio.sleep(0.05)
        assert receiver.posts == []
        got = await subs(h).GetWebhookSubscription(events_pb2.GetWebhookSubscriptionRequest(id="whsub_private"))
        assert got.stats.refused == 1
        assert "loopback" in got.stats.last_error
        # Operators see it: the CLI's list and the status page show the refusal and its reason.
        listed = await cli("subscriptions", "--json", "--server", f"127.0.0.1:{h.app.grpc_port}")
        assert listed.returncode == 0, listed.stderr
        (row,) = json.loads(listed.stdout)
        assert row["refused"] == 1
        assert row["last_error"].startswith("refused target")
        table = await cli("subscriptions", "--lang", "en", "--server", f"127.0.0.1:{h.app.grpc_port}")
        assert "REFUSED" in table.stdout.splitlines()[0]
        base = f"http://127.0.0.1:{h.app.http_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/status/api/snapshot?lang=en") as response:
                snapshot = await response.json()
            async with session.get(f"{base}/status?lang=en") as response:
                page = await response.text()
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
        (shown,) = snapshot["webhooks"]
        assert shown["refused"] == 1
        assert shown["last_error"].startswith("refused target")
        assert "Refused" in page
        assert any(
            line.startswith("wapiguard_webhooks_refused_total{") and 'subscription="whsub_private"' in line
            for line in metrics.splitlines()
        )
    finally:
        await stop_harness(h)
