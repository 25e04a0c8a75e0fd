"""`python -m bench.stream_sends`: what unfiltered event streams cost the send path.

Prints send latency (p50, p90) with 0 and with N (default 100) concurrent unfiltered `Subscribe`
streams, in the same run, alternating, for a few rounds, and the ratio of the p50s (target: at
most 1.25). The server runs in this process (SQLite by default, or `--pg-url`); the streams are
read in a subprocess, so their client-side decoding does not share the server's CPU. The senders
keep a fixed number of sends in flight. Loopback only; every phase is bounded by a send count
and a time limit. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

import grpc

from adapters.runtime import run as run_loop
from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc, send_pb2
from tests.conftest import reset_postgres
from tests.integration.harness import Harness, start_harness, stop_harness


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def streams_process(address: str, count: int, seconds: float, batch: int) -> None:
    """`count` unfiltered streams read until the parent closes stdin (or `seconds` pass)."""
    channel = grpc.aio.insecure_channel(address)
    stub = events_pb2_grpc.EventServiceStub(channel)
    request = events_pb2.SubscribeRequest(from_now=True, max_events_per_response=batch)
    streams = [stub.Subscribe(request) for _ in range(count)]
    for stream in streams:
        await stream.read()  # the first progress message: subscribed
    print("READY", flush=True)
    events = [0] * count

    async def drain(i: int, stream: Any) -> None:
        while True:
            item: Any = await stream.read()
            if item is grpc.aio.EOF:
                return
            if item.HasField("event"):
                events[i] += 1
            elif item.HasField("events"):
                events[i] += len(item.events.events)

    async def until_stdin_closes() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)

    readers = [asyncio.create_task(drain(i, s)) for i, s in enumerate(streams)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(until_stdin_closes(), seconds)
    print(f"DONE {min(events)} {max(events)}", flush=True)
    for task in readers:
        task.cancel()
    await channel.close()


async def sends(h: Harness, count: int, in_flight: int) -> list[float]:
    tag = uuid.uuid4().hex[:8]
    todo = iter(range(count))
    latencies: list[float] = []

    async def worker() -> None:
        for n in todo:
            started = time.perf_counter()
            await h.send.SendMessage(
                send_pb2.SendMessageRequest(
                    instance_id="BENCH-S",
                    to="5515981121710",
                    idempotency_key=f"{tag}-{n}",
                    text=send_pb2.TextContent(body=f"bench {n}"),
                ),
                timeout=30,
            )
            latencies.append(time.perf_counter() - started)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(in_flight))), 300)
    return latencies


async def phase(h: Harness, streams: int, args: argparse.Namespace) -> tuple[float, float, str]:
    proc = None
    if streams:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.stream_sends",
            "--streams-only",
            f"127.0.0.1:{h.app.grpc_port}",
            "--streams",
            str(streams),
            "--batch",
            str(args.batch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line.startswith(b"READY"), line
    lat = await sends(h, args.sends, args.in_flight)
    note = ""
    if proc is not None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        await asyncio.sleep(1.0)  # the streams drain what the sends wrote
        proc.stdin.close()
        done = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
        await asyncio.wait_for(proc.wait(), 30)
        note = f"events per stream {done[1]}..{done[2]} (expected {2 * args.sends})"
    return pct(lat, 0.5), pct(lat, 0.9), note


async def run(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="wapi-guard-bench-streams-")
    urls = [("sqlite", f"sqlite+aiosqlite:///{tmp}/bench-streams.db")] if not args.pg_only else []
    if args.pg_url:
        urls.append(("postgres", args.pg_url))
    for name, url in urls:
        if name == "postgres":
            await reset_postgres(url)
        h = await start_harness(url, log_level="WARNING", event_progress_interval=5.0)
        try:
            await h.register("BENCH-S")
            await h.connect("BENCH-S")
            await sends(h, 200, args.in_flight)  # warm-up
            ratios = []
            for number in range(args.rounds):
                p50_0, p90_0, _ = await phase(h, 0, args)
                p50_n, p90_n, note = await phase(h, args.streams, args)
                ratios.append(p50_n / p50_0)
                print(
                    f"{name} round {number + 1}: send p50/p90 {p50_0:6.2f}/{p90_0:6.2f} ms with 0 streams, "
                    f"{p50_n:6.2f}/{p90_n:6.2f} ms with {args.streams}  ratio {p50_n / p50_0:5.2f}  {note}",
                    flush=True,
                )
            label = f"{args.streams} streams, {args.batch} events/message"
            print(f"{name}: median p50 ratio ({label} / none) {statistics.median(ratios):.2f}")
        finally:
            await stop_harness(h)
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-url", default="", help="PostgreSQL URL (a database of your own; it is truncated)")
    parser.add_argument("--pg-only", action="store_true", help="skip the SQLite run")
    parser.add_argument("--sends", type=int, default=1000, help="sends per phase")
    parser.add_argument("--in-flight", type=int, default=8, help="sends in flight")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=1, help="the streams' max_events_per_response (1: one event per message)"
    )
    parser.add_argument("--event-loop", default="uvloop", help="uvloop (as `serve` runs) or asyncio")
    parser.add_argument("--streams-only", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.streams_only:
        run_loop(streams_process(args.streams_only, args.streams, 600, args.batch), event_loop="uvloop")
    else:
        run_loop(run(args), event_loop=args.event_loop)


if __name__ == "__main__":
    main()
