"""`python -m bench.events`: the event stream and outbound webhook targets.

Prints numbers, asserts nothing: commit → event latency on one replica and across two replicas
(PostgreSQL), ingest throughput with 0 and 100 stream subscribers, and a webhook receiver that
answers 500 for a while and then 200 (every event must arrive, each verified with the
`standardwebhooks` library). Servers run in this process on loopback (port 0); the load is a
bounded number of webhook events (customer messages), each one committed change.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

import grpc
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc, instance_health_pb2, webhook_pb2
from tests.conftest import reset_postgres
from tests.integration.harness import Harness, start_harness, stop_harness


def body(tag: str, n: int) -> bytes:
    return json.dumps(
        {
            "event": "webhookReceived",
            "instanceId": "BENCH-1",
            "messageId": f"3EB0{tag}{n:06d}",
            "chat": {"id": "5511988887777"},
            "moment": 1_749_132_337 + n,
            "msgContent": {"conversation": f"bench {n}"},
        }
    ).encode()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def latency(writer: Harness, reader: Harness, count: int, label: str) -> None:
    """Sequential commits on `writer`; a subscriber on `reader` times each event's arrival."""
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    stream = events_pb2_grpc.EventServiceStub(reader.channel).Subscribe(
        events_pb2.SubscribeRequest(from_now=True, progress_interval_seconds=1)
    )
    await stream.read()
    tag = uuid.uuid4().hex[:6].upper()

    async def read() -> None:
        while len(arrived) < count:
            item: Any = await stream.read()
            if item is grpc.aio.EOF:
                return
            if item.HasField("event"):
                arrived[item.event.message_received.provider_message_id] = time.perf_counter()

    reader_task = asyncio.create_task(read())
    for n in range(count):
        await writer.webhooks.IngestEvent(webhook_pb2.IngestEventRequest(payload=body(tag, n)))
        committed[f"3EB0{tag}{n:06d}"] = time.perf_counter()
        await asyncio.sleep(0.01)
    await asyncio.wait_for(reader_task, 30)
    stream.cancel()
    lat = [arrived[k] - committed[k] for k in committed if k in arrived]
    print(
        f"{label:<44} events {len(lat):>5}/{count:<5} p50 {pct(lat, 0.5):7.2f} ms  p99 {pct(lat, 0.99):7.2f} ms"
        f"  max {max(lat) * 1000:7.2f} ms"
    )


async def subscribers_process(address: str, subscribers: int, count: int) -> None:
    """The 100 subscribers, in their own process (so their CPU is not the server's): prints
    READY once subscribed and the smallest per-subscriber count when done or after 60 s."""
    channel = grpc.aio.insecure_channel(address)
    stub = events_pb2_grpc.EventServiceStub(channel)
    streams = [stub.Subscribe(events_pb2.SubscribeRequest(from_now=True)) for _ in range(subscribers)]
    counts = [0] * subscribers
    for stream in streams:
        await stream.read()  # the first progress message
    print("READY", flush=True)

    async def drain(i: int, stream: Any) -> None:
        while counts[i] < count:
            item: Any = await stream.read()
            if item is grpc.aio.EOF:
                return
            if item.HasField("event"):
                counts[i] += 1

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(drain(i, s) for i, s in enumerate(streams))), 60)
    print(f"DONE {min(counts)}", flush=True)
    await channel.close()


async def throughput(h: Harness, subscribers: int, count: int, label: str) -> float:
    proc = None
    if subscribers:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.events",
            "--subscribers-only",
            f"127.0.0.1:{h.app.grpc_port}",
            "--subscribers",
            str(subscribers),
            "--ingests",
            str(count),
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(b"READY"), line
    tag = uuid.uuid4().hex[:6].upper()
    queue = iter(range(count))
    started = time.perf_counter()

    async def worker() -> None:
        for n in queue:
            await h.webhooks.IngestEvent(webhook_pb2.IngestEventRequest(payload=body(tag, n)))

    await asyncio.gather(*(worker() for _ in range(20)))
    elapsed = time.perf_counter() - started
    got = ""
    if proc is not None:
        assert proc.stdout is not None
        done = await asyncio.wait_for(proc.stdout.readline(), 90)
        await proc.wait()
        got = f"every subscriber got {done.decode().split()[-1]}/{count}"
    rate = count / elapsed
    print(f"{label:<44} {rate:8.0f} ingests/s  {got}")
    return rate


async def webhooks_recovering(h: Harness, count: int, failing_for: float) -> None:
    posts: list[tuple[dict[str, str], bytes]] = []
    start = time.monotonic()

    async def handle(request: web.Request) -> web.Response:
        data = await request.read()
        if time.monotonic() - start < failing_for:
            return web.Response(status=500)
        posts.append((dict(request.headers), data))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    sub = await events_pb2_grpc.WebhookSubscriptionServiceStub(h.channel).CreateWebhookSubscription(
        events_pb2.CreateWebhookSubscriptionRequest(url=url)
    )
    tag = uuid.uuid4().hex[:6].upper()
    for n in range(count):
        await h.webhooks.IngestEvent(webhook_pb2.IngestEventRequest(payload=body(tag, n)))
    deadline = time.monotonic() + failing_for + 60
    while len({hd["webhook-id"] for hd, _ in posts}) < count and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    hook = Webhook(sub.secret)
    verified = {hook.verify(b, {k.lower(): v for k, v in hd.items()})["data"]["id"] for hd, b in posts}
    took = time.monotonic() - start
    await runner.cleanup()
    print(
        f"{'webhooks: 500 for ' + str(failing_for) + ' s, then 200':<44} verified {len(verified)}/{count} events"
        f" (posts with 200: {len(posts)}) in {took:.1f} s"
    )


async def run(args: argparse.Namespace) -> None:
    settings = {"event_progress_interval": 1.0, "webhook_retry_schedule": "0.5,1,2,4,8", "log_level": "WARNING"}
    tmp = tempfile.mkdtemp(prefix="wapi-guard-bench-events-")
    urls = [("sqlite", f"sqlite+aiosqlite:///{tmp}/bench-events.db")]
    if args.pg_url:
        urls.append(("postgres", args.pg_url))
    for name, url in urls:
        if name == "postgres":
            await reset_postgres(url)
        a = await start_harness(url, **settings)
        try:
            await a.health.RegisterInstance(
                instance_health_pb2.RegisterInstanceRequest(
                    instance_id="BENCH-1",
                    name="bench",
                    token="bench-token-123456",  # noqa: S106, skip_probe=True
                )
            )
            await latency(a, a, args.events, f"commit → event, one replica ({name})")
            if name == "postgres":
                b = await start_harness(url, **settings)
                try:
                    await latency(a, b, args.events, "commit → event, across replicas (postgres)")
                finally:
                    await stop_harness(b)
            ratios = []
            for _round in range(args.rounds):
                base = await throughput(a, 0, args.ingests, f"ingest, 0 subscribers ({name})")
                loaded = await throughput(
                    a, args.subscribers, args.ingests, f"ingest, {args.subscribers} subscribers ({name})"
                )
                ratios.append(loaded / base)
            print(f"{'  ratio (subscribers / none), median':<44} {statistics.median(ratios):8.2f}")
            await webhooks_recovering(a, args.webhook_events, args.failing_for)
        finally:
            await stop_harness(a)
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-url", default="", help="PostgreSQL URL (a database of your own; it is truncated)")
    parser.add_argument("--events", type=int, default=300, help="events for the latency runs")
    parser.add_argument("--ingests", type=int, default=2000, help="ingests per throughput run")
    parser.add_argument("--webhook-events", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscribers-only", default="", help=argparse.SUPPRESS)
    parser.add_argument("--failing-for", type=float, default=3.0)
    args = parser.parse_args()
    if args.subscribers_only:
        asyncio.run(subscribers_process(args.subscribers_only, args.subscribers, args.ingests))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
