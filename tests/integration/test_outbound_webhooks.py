"""Outbound webhooks end to end: a real receiver on loopback verifies every post with the
`standardwebhooks` library, as a consumer would."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
from tests.conftest import POSTGRES_URL
from tests.integration.harness import Harness, rich_error, start_harness, stop_harness

FAST = "0.05,0.05,0.05"


@dataclass
class Receiver:
    """Answers with `script(n)` for the n-th post (default 200); records every post."""

    script: Callable[[int], tuple[int, dict[str, str]]] = lambda _n: (200, {})
    posts: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append((time.monotonic(), dict(request.headers), body))
        status, headers = self.script(len(self.posts))
        return web.Response(status=status, headers=headers, text="ok")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def verified(self, secret: str) -> list[tuple[str, dict[str, Any]]]:
        """(webhook-id, body) of every post whose signature verifies."""
        hook = Webhook(secret)
        out = []
        for _at, headers, body in self.posts:
            payload = hook.verify(body, {k.lower(): v for k, v in headers.items()})
            out.append((headers["webhook-id"], payload))
        return out


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def start(database_url: str, schedule: str = FAST) -> Harness:
    return await start_harness(database_url, webhook_retry_schedule=schedule, webhook_timeout=2.0)


def subs(h: Harness) -> events_pb2_grpc.WebhookSubscriptionServiceAsyncStub:
    return events_pb2_grpc.WebhookSubscriptionServiceStub(h.channel)


async def received(h: Harness, n: int, instance: str = "INST-A", first: int = 0) -> None:
    """n customer messages arrive on the instance's webhook (numbered from `first`)."""
    for i in range(first, first + n):
        await h.webhook(
            {
                "event": "webhookReceived",
                "instanceId": instance,
                "messageId": f"3EB0IN{instance}{i:04d}",
                "chat": {"id": "5511988887777"},
                "sender": {"id": "5511988887777", "pushName": "Maria"},
                "moment": 1_749_132_337 + i,
                "msgContent": {"conversation": f"mensagem {i}"},
            }
        )


async def test_receiver_failing_then_recovering_gets_every_event_verified(
    database_url: str, receiver: Receiver
) -> None:
    receiver.script = lambda n: (500, {}) if n <= 4 else (200, {})
    h = await start(database_url)
    try:
        await h.register("INST-A")
        sub = await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        assert sub.secret.startswith("whsec_")
        await received(h, 3)
        await wait_until(lambda: len(receiver.posts) >= 7)
        verified = receiver.verified(sub.secret)
        ids = [hid for hid, _ in verified]
        texts = {body["data"]["message_received"]["text"] for _, body in verified}
        assert texts == {"mensagem 0", "mensagem 1", "mensagem 2"}
        # Every event delivered (200) exactly once, retries carry the same webhook-id.
        ok = [receiver.posts[i][1]["webhook-id"] for i in range(4, len(receiver.posts))]
        assert sorted(set(ok)) == sorted(set(ids))
        assert all(body["type"] == "message.received" for _, body in verified)
        got = await subs(h).GetWebhookSubscription(events_pb2.GetWebhookSubscriptionRequest(id=sub.id))
        assert got.secret == ""  # shown once, at creation
        assert got.stats.failed_attempts == 4
        assert got.stats.last_error == "HTTP 500"
        deliveries = await subs(h).ListWebhookDeliveries(
            events_pb2.ListWebhookDeliveriesRequest(subscription_id=sub.id)
        )
        assert {d.state for d in deliveries.deliveries} == {events_pb2.DELIVERY_STATE_SUCCEEDED}
        assert {d.webhook_id for d in deliveries.deliveries} == set(ids)
    finally:
        await stop_harness(h)


async def test_a_wrong_secret_does_not_verify(database_url: str, receiver: Receiver) -> None:
    h = await start(database_url)
    try:
        await h.register("INST-A")
        sub = await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        await received(h, 1)
        await wait_until(lambda: len(receiver.posts) == 1)
        other = await subs(h).CreateWebhookSubscription(
            events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url, disabled=True)
        )
        assert other.secret != sub.secret
        with pytest.raises(Exception, match="signature"):
            receiver.verified(other.secret)
    finally:
        await stop_harness(h)


async def test_410_disables_the_subscription(database_url: str, receiver: Receiver) -> None:
    receiver.script = lambda _n: (410, {})
    h = await start(database_url)
    try:
        await h.register("INST-A")
        sub = await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        await received(h, 2)
        await wait_until(lambda: len(receiver.posts) >= 1)
        await asyncio.sleep(0.5)
        got = await subs(h).GetWebhookSubscription(events_pb2.GetWebhookSubscriptionRequest(id=sub.id))
        assert not got.enabled
        assert got.disabled_reason == "ENDPOINT_GONE"
        posts = len(receiver.posts)
        await received(h, 1, first=2)
        await asyncio.sleep(0.5)
        assert len(receiver.posts) == posts  # nothing more is sent to a gone endpoint
        # Enabled again (the receiver is back): the kept deliveries go out.
        receiver.script = lambda _n: (200, {})
        await subs(h).UpdateWebhookSubscription(events_pb2.UpdateWebhookSubscriptionRequest(id=sub.id, enabled=True))
        await wait_until(lambda: len({hd["webhook-id"] for _t, hd, _b in receiver.posts[posts:]}) == 3)
    finally:
        await stop_harness(h)


async def test_exhausted_delivery_is_kept_and_replayed_with_its_webhook_id(
    database_url: str, receiver: Receiver
) -> None:
    receiver.script = lambda _n: (503, {})
    h = await start(database_url, schedule="0.05")
    try:
        await h.register("INST-A")
        sub = await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        await received(h, 1)
        await wait_until(lambda: len(receiver.posts) == 2)  # first attempt + the one retry

        async def exhausted() -> list[Any]:
            page = await subs(h).ListWebhookDeliveries(
                events_pb2.ListWebhookDeliveriesRequest(
                    subscription_id=sub.id, states=[events_pb2.DELIVERY_STATE_EXHAUSTED]
                )
            )
            return list(page.deliveries)

        for _ in range(100):
            if await exhausted():
                break
            await asyncio.sleep(0.05)
        (dead,) = await exhausted()
        assert dead.attempts == 2
        assert dead.last_status_code == 503
        await asyncio.sleep(0.3)
        assert len(receiver.posts) == 2
        receiver.script = lambda _n: (200, {})
        replay = await subs(h).ReplayWebhookDeliveries(
            events_pb2.ReplayWebhookDeliveriesRequest(subscription_id=sub.id)
        )
        assert replay.replayed == 1
        await wait_until(lambda: len(receiver.posts) == 3)
        ids = [hid for hid, _ in receiver.verified(sub.secret)]
        assert ids == [dead.webhook_id] * 3
    finally:
        await stop_harness(h)


async def test_retry_after_is_honoured(database_url: str, receiver: Receiver) -> None:
    receiver.script = lambda n: (429, {"Retry-After": "1"}) if n == 1 else (200, {})
    h = await start(database_url)
    try:
        await h.register("INST-A")
        await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        await received(h, 1)
        await wait_until(lambda: len(receiver.posts) == 2)
        gap = receiver.posts[1][0] - receiver.posts[0][0]
        assert gap >= 0.95  # the schedule alone would retry after ~0.05 s
    finally:
        await stop_harness(h)


async def test_filters_and_bad_input(database_url: str, receiver: Receiver) -> None:
    h = await start(database_url)
    try:
        await h.register("INST-A")
        await h.register("INST-B")
        sub = await subs(h).CreateWebhookSubscription(
            events_pb2.CreateWebhookSubscriptionRequest(
                url=receiver.url, instance_ids=["INST-B"], types=[events_pb2.EVENT_TYPE_MESSAGE_RECEIVED]
            )
        )
        await received(h, 2, "INST-A")
        await h.connect("INST-B")  # instance.health_changed: filtered out by type
        await received(h, 1, "INST-B")
        await wait_until(lambda: len(receiver.posts) >= 1)
        await asyncio.sleep(0.4)
        verified = receiver.verified(sub.secret)
        assert [body["data"]["instance_id"] for _, body in verified] == ["INST-B"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url="ftp://x"))
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert "url" in error.violations
    finally:
        await stop_harness(h)


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="two replicas need PostgreSQL")
async def test_two_replicas_never_deliver_an_event_twice(database_url: str, receiver: Receiver) -> None:
    a = await start(database_url)
    b = await start(database_url)
    try:
        await a.register("INST-A")
        sub = await subs(a).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        total = 60
        await asyncio.gather(received(a, total // 2, "INST-A"), received_on(b, total // 2))
        await wait_until(lambda: len(receiver.posts) >= total, timeout=30)
        await asyncio.sleep(1.0)
        ids = [hid for hid, _ in receiver.verified(sub.secret)]
        assert len(ids) == total
        assert len(set(ids)) == total  # every event once: no replica delivered one the other did
    finally:
        await stop_harness(b)
        await stop_harness(a)


async def received_on(h: Harness, n: int) -> None:
    for i in range(n):
        body = {
            "event": "webhookReceived",
            "instanceId": "INST-A",
            "messageId": f"3EB0REPLB{i:04d}",
            "chat": {"id": "5511988887777"},
            "moment": 1_749_140_000 + i,
            "msgContent": {"conversation": json.dumps(i)},
        }
        await h.webhook(body)


async def test_status_page_shows_lag_failures_and_last_error(database_url: str, receiver: Receiver) -> None:
    import aiohttp

    receiver.script = lambda _n: (500, {})
    h = await start_harness(database_url, webhook_retry_schedule="30", http_port=0)
    try:
        await h.register("INST-A")
        sub = await subs(h).CreateWebhookSubscription(events_pb2.CreateWebhookSubscriptionRequest(url=receiver.url))
        await received(h, 1)
        await wait_until(lambda: len(receiver.posts) == 1)
        await asyncio.sleep(0.3)
        base = f"http://127.0.0.1:{h.app.http_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/status/api/snapshot?lang=en") as response:
                snapshot = await response.json()
            async with session.get(f"{base}/status?lang=en") as response:
                page = await response.text()
        (row,) = snapshot["webhooks"]
        assert row["id"] == sub.id
        assert row["pending"] == 1
        assert row["consecutive_failures"] == 1
        assert row["last_error"] == "HTTP 500"
        assert row["lag_seconds"] > 0
        assert "Outbound webhooks" in page
        assert receiver.url in page
        assert sub.secret not in page
        assert sub.secret not in json.dumps(snapshot)
    finally:
        await stop_harness(h)
