"""`python -m bench` (or `make bench`): prints requests/s, p50/p99 and the ratio to a no-op gRPC
baseline, for each hot path, on SQLite and on PostgreSQL, in one run with one load generator.

Every server runs in its own process; the load generator is this process. Each scenario runs in
rounds, each right after a fresh no-op run of the same RPC; its ratio is the median of the rounds'
ratios. Loopback only; every scenario is bounded by a request count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx

from bench import dataset, volume
from bench.dataset import PG_URL
from bench.profile import Profiler
from services.api.wapiguard.v1 import (
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
BLOCKED, HEALTHY = "BENCH-INCOMPLETE", "BENCH-HEALTHY"
PORT_RE = re.compile(r"on (\S+):(\d+)")


@dataclass
class Result:
    scenario: str
    database: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    ratio: float = 0.0
    baseline_rps: float = 0.0  # the no-op run of the same RPC measured just before this one
    # Server CPU (user + system, from the server processes' own counters) per request, in ms,
    # and the same for the no-op server over the same rounds.
    cpu_ms: float = 0.0
    baseline_cpu_ms: float = 0.0


class Process:
    """A child process whose first stdout line names its address."""

    def __init__(self, args: list[str], cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline().strip()
        if not self.first_line:
            raise RuntimeError(f"{args[:3]} did not start")

    def grpc_target(self) -> str:
        match = PORT_RE.search(self.first_line)
        assert match, self.first_line
        return f"{match.group(1)}:{match.group(2)}"

    def pids(self) -> list[int]:
        """The process and its children (`serve --workers N` forks its workers)."""
        return [self.proc.pid, *_children(self.proc.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its live children, from /proc (their own counters)."""
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        with suppress(Exception):
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError):
            for child in task.read_text().split():
                out += [int(child), *_children(int(child))]
    return out


@dataclass
class Run:
    """One bounded burst of calls: what came back and how long each took."""

    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = 0.0  # the server's CPU over the run (set by `measured`)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def load(
    channels: list[grpc.aio.Channel],
    call: Callable[[grpc.aio.Channel, int], Awaitable[Any]],
    *,
    requests: int,
    concurrency: int,
    max_seconds: float,
    ok_codes: tuple[grpc.StatusCode, ...] = (),
    start: int = 0,
) -> Run:
    """`requests` calls numbered from `start` (ids and idempotency keys never repeat across runs)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(start, start + requests))
    deadline = time.monotonic() + max_seconds

    async def worker(w: int) -> None:
        nonlocal errors
        channel = channels[w % len(channels)]
        for i in counter:
            if time.monotonic() > deadline:
                return
            started = time.perf_counter()
            try:
                await call(channel, i)
            except grpc.aio.AioRpcError as error:
                if error.code() not in ok_codes:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return Run(len(latencies), errors, time.perf_counter() - started, latencies)


async def measured(server: Process, run: Awaitable[Run]) -> Run:
    """`run`, with the server's CPU time over it."""
    before = server.cpu_seconds()
    result = await run
    result.cpu_seconds = server.cpu_seconds() - before
    return result


def cpu_ms(runs: list[Run]) -> float:
    done = sum(run.requests for run in runs)
    return round(1000 * sum(run.cpu_seconds for run in runs) / done, 3) if done else 0.0


def summarize(name: str, database: str, runs: list[Run]) -> Result:
    latencies = sorted(x for run in runs for x in run.latencies)
    done = len(latencies)
    seconds = sum(run.seconds for run in runs)
    return Result(
        name,
        database,
        done,
        sum(run.errors for run in runs),
        round(seconds, 2),
        round(done / seconds, 1),
        round(statistics.median(latencies) * 1000, 2),
        round(latencies[max(0, int(done * 0.99) - 1)] * 1000, 2),
        cpu_ms=cpu_ms(runs),
    )


def channels_for(target: str, n: int) -> list[grpc.aio.Channel]:
    # Distinct channel args: separate HTTP/2 connections rather than one shared subchannel.
    return [grpc.aio.insecure_channel(target, options=[("grpc.channel_id", i)]) for i in range(n)]


async def warm(channels: list[grpc.aio.Channel], call: Callable[[grpc.aio.Channel, int], Awaitable[Any]]) -> None:
    for i in range(200):
        with suppress(grpc.aio.AioRpcError):
            await call(channels[i % len(channels)], -i - 1)


class Noop:
    """The no-op server, kept up for the whole run: each round of a scenario follows a fresh
    baseline of the same RPC, so a ratio compares two neighbouring measurements (this kind of
    machine drifts by ±10% and more within minutes)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = Process(["-m", "bench.noop_server"])
        self.channels = channels_for(self.server.grpc_target(), args.channels)
        request = send_pb2.SendMessageRequest(
            instance_id=BLOCKED, to="5515981121710", text=send_pb2.TextContent(body=dataset.MESSAGE_TEXT)
        )
        # The same sizes as the scenarios' requests.
        event = webhook_pb2.IngestEventRequest(payload=dataset.status_body(HEALTHY, "3EB0NOOP", "read", 1_750_000_000))

        async def send(channel: grpc.aio.Channel, i: int) -> Any:
            return await send_pb2_grpc.SendServiceStub(channel).SendMessage(request, timeout=10)

        async def ingest(channel: grpc.aio.Channel, i: int) -> Any:
            return await webhook_pb2_grpc.WebhookServiceStub(channel).IngestEvent(event, timeout=10)

        self.calls = {"SendMessage": send, "IngestEvent": ingest}

    async def measure(self, rpc: str, requests: int, max_seconds: float) -> Run:
        await warm(self.channels, self.calls[rpc])
        return await measured(
            self.server,
            load(
                self.channels,
                self.calls[rpc],
                requests=requests,
                concurrency=self.args.concurrency,
                max_seconds=max_seconds,
            ),
        )

    async def headline(self, rpc: str) -> Result:
        result = summarize(f"noop {rpc}", "-", [await self.measure(rpc, self.args.requests, self.args.max_seconds)])
        result.ratio = 1.0
        result.baseline_rps = result.rps
        result.baseline_cpu_ms = result.cpu_ms
        return result

    async def aclose(self) -> None:
        for c in self.channels:
            await c.close()
        self.server.stop()


async def reset_postgres() -> None:
    """A database of the benchmark's own (created if missing), emptied: tests never share it."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from tests.conftest import reset_postgres as reset

    url = make_url(PG_URL)
    admin = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database="postgres"
    )
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{url.database}"')
    finally:
        await admin.close()
    await reset(PG_URL)


def start_simulator() -> Process:
    """The W-API simulator every hot-path run sends through: one incomplete session, one healthy."""
    return Process(
        [
            "-m",
            "services.cli",
            "simulator",
            "--port",
            "0",
            "--instance",
            f"{BLOCKED}:tok-{BLOCKED}:session_incomplete",
            "--instance",
            f"{HEALTHY}:tok-{HEALTHY}:healthy",
        ]
    )


async def drop_postgres() -> None:
    """The benchmark's own database goes when the run ends (it is re-created by the next run)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    admin = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database="postgres"
    )
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')
    finally:
        await admin.close()


async def against(
    noop: Noop,
    server: Process,
    rpc: str,
    name: str,
    database: str,
    channels: list[grpc.aio.Channel],
    call: Callable[[grpc.aio.Channel, int], Awaitable[Any]],
    requests: int,
    ok_codes: tuple[grpc.StatusCode, ...] = (),
) -> Result:
    """Rounds of (no-op baseline of the same RPC, then the scenario); the ratio is the median of
    the rounds' ratios, each between two neighbouring measurements."""
    args = noop.args
    rounds = max(1, args.rounds)
    per_round = max(1, requests // rounds)
    seconds = args.max_seconds / rounds
    runs: list[Run] = []
    bases: list[Run] = []
    ratios: list[float] = []
    for k in range(rounds):
        base = await noop.measure(rpc, per_round, seconds)
        run = await measured(
            server,
            load(
                channels,
                call,
                requests=per_round,
                concurrency=args.concurrency,
                max_seconds=seconds,
                ok_codes=ok_codes,
                start=k * per_round,
            ),
        )
        runs.append(run)
        bases.append(base)
        ratios.append(run.rps / base.rps if base.rps else 0.0)
    result = summarize(name, database, runs)
    result.baseline_rps = round(statistics.median(base.rps for base in bases), 1)
    result.baseline_cpu_ms = cpu_ms(bases)
    result.ratio = round(statistics.median(ratios), 2)
    return result


async def latency_ms(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """p50 / p99 of `n` sequential calls (latency, not throughput)."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return round(samples[len(samples) // 2], 2), round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2)


async def bench_database(
    database: str,
    url: str,
    sim_url: str,
    args: argparse.Namespace,
    noop: Noop,
    *,
    health_instance: str | None = None,
) -> dict[str, Any]:
    """The hot paths on one database. With `health_instance` (the volume runs, Postgres): also
    GetInstanceHealth / ListInstances latency and the WAL written per status event."""
    server = Process(
        [
            "-m",
            "services.cli",
            "serve",
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--database-url",
            url,
            "--wapi-base-url",
            sim_url,
            "--probe-interval",
            "0",
            "--sweep-interval",
            "0",
            "--log-level",
            "ERROR",
            *(["--workers", str(args.workers)] if getattr(args, "workers", 1) > 1 else []),
        ],
        # Another checkout's code (`-m` puts the working directory first on the path): the commit
        # before, measured in the same run against the same no-op.
        cwd=args.server_root or ROOT,
    )
    out: dict[str, Any] = {"results": []}
    try:
        target = server.grpc_target()
        channels = channels_for(target, args.channels)
        health = instance_health_pb2_grpc.InstanceHealthServiceStub(channels[0])
        for instance_id in (BLOCKED, HEALTHY):
            await health.RegisterInstance(
                instance_health_pb2.RegisterInstanceRequest(
                    instance_id=instance_id, name=instance_id, token=f"tok-{instance_id}"
                ),
                timeout=10,
            )
        async with httpx.AsyncClient() as client:
            sim_before = len((await client.get(sim_url.removesuffix("/v1") + "/_sim/requests")).json())
        run = uuid.uuid4().hex[:8]

        def send_request(instance_id: str, i: int) -> send_pb2.SendMessageRequest:
            return send_pb2.SendMessageRequest(
                instance_id=instance_id,
                to="5515981121710",
                idempotency_key=f"{run}-{instance_id}-{i}",
                text=send_pb2.TextContent(body=dataset.MESSAGE_TEXT),
            )

        async def blocked(channel: grpc.aio.Channel, i: int) -> Any:
            return await send_pb2_grpc.SendServiceStub(channel).SendMessage(send_request(BLOCKED, i), timeout=10)

        sent_ids: list[str] = []

        async def healthy(channel: grpc.aio.Channel, i: int) -> Any:
            msg = await send_pb2_grpc.SendServiceStub(channel).SendMessage(send_request(HEALTHY, i), timeout=10)
            if i >= 0:
                sent_ids.append(msg.provider_message_id)
            return msg

        async def scenario(
            name: str,
            rpc: str,
            call: Callable[[grpc.aio.Channel, int], Awaitable[Any]],
            requests: int,
            ok_codes: tuple[grpc.StatusCode, ...] = (),
        ) -> None:
            """Warm, a fresh no-op baseline of the same RPC, then the measured run."""
            await warm(channels, call)
            profiler = None
            if args.profile:
                slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
                profiler = Profiler(server.proc.pid, Path(args.profile) / f"{database}-{slug}.txt")
            out["results"].append(await against(noop, server, rpc, name, database, channels, call, requests, ok_codes))
            if profiler is not None:
                out.setdefault("profiles", []).append(await asyncio.to_thread(profiler.stop))

        rss_start = server.rss_mb()
        await scenario(
            "SendMessage blocked (SESSION_INCOMPLETE)",
            "SendMessage",
            blocked,
            args.requests,
            ok_codes=(grpc.StatusCode.FAILED_PRECONDITION,),
        )
        async with httpx.AsyncClient() as client:
            sim_after = len((await client.get(sim_url.removesuffix("/v1") + "/_sim/requests")).json())
        out["preflight_provider_round_trips"] = sim_after - sim_before
        await scenario("SendMessage healthy (via simulator)", "SendMessage", healthy, args.requests)

        statuses = [(mid, word) for word in ("delivered", "read") for mid in sent_ids]

        async def ingest(channel: grpc.aio.Channel, i: int) -> Any:
            mid, word = statuses[i % len(statuses)] if i >= 0 else (f"warm-{i}", "read")
            body = dataset.status_body(HEALTHY, mid, word, 1_750_000_000)
            return await webhook_pb2_grpc.WebhookServiceStub(channel).IngestEvent(
                webhook_pb2.IngestEventRequest(payload=body), timeout=10
            )

        wal = volume.WalWindow(url) if health_instance else None
        if wal is not None:
            await wal.start()
        await scenario(
            "IngestEvent status (dedupe + transition)", "IngestEvent", ingest, min(args.requests, len(statuses))
        )
        if wal is not None:
            out["wal"] = await wal.stop(out["results"][-1].requests)
            out["wal_bytes_per_status_event"] = out["wal"]["server_bytes_per_event"]
        if health_instance:
            stub = instance_health_pb2_grpc.InstanceHealthServiceStub(channels[0])
            get = instance_health_pb2.GetInstanceHealthRequest(instance_id=health_instance)
            out["get_instance_health_ms"] = await latency_ms(lambda: stub.GetInstanceHealth(get, timeout=10), 200)
            every = instance_health_pb2.ListInstancesRequest()
            out["list_instances_ms"] = await latency_ms(lambda: stub.ListInstances(every, timeout=30), 30)
        out["server_rss_mb"] = (round(rss_start, 1), round(server.rss_mb(), 1))
        for c in channels:
            await c.close()
    finally:
        server.stop()
    return out


def transition_cost() -> dict[str, float]:
    from statemachine.domain import InstanceState, MessageState
    from statemachine.instance_machine import InstanceTrigger, decide_instance
    from statemachine.message_machine import decide_status

    n = 100_000
    started = time.perf_counter()
    for _ in range(n):
        decide_status(MessageState.SENT, MessageState.DELIVERED)
    message_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for _ in range(n):
        decide_instance(
            InstanceState.CONNECTED, "PHONE_CONFIRMED", "5511999990000", InstanceTrigger.REPORT_GATEWAY_FAILURE
        )
    instance_us = (time.perf_counter() - started) / n * 1e6
    return {"message_transition_us": round(message_us, 2), "instance_transition_us": round(instance_us, 2)}


def rss_growth_100k() -> dict[str, float]:
    """100k messages through the message machine, records kept alive: the machine adds nothing per message."""
    from datetime import UTC, datetime

    from statemachine.domain import MessageKind, MessageRecord, MessageState, StateChange
    from statemachine.message_machine import decide_status

    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    now = datetime.now(UTC)
    kept = []
    for i in range(100_000):
        msg = MessageRecord(
            str(i),
            "I",
            "5515981121710",
            MessageKind.TEXT,
            MessageState.SENT,
            "",
            "",
            f"P{i}",
            1,
            f"k{i}",
            "h",
            {},
            now,
            now,
            now,
            None,
            [],
            1,
        )
        for status in (MessageState.DELIVERED, MessageState.READ):
            d = decide_status(msg.state, status)
            msg.history.append(StateChange(d.from_state, d.to_state, "WEBHOOK_STATUS", "webhook", now, d.applied))
            msg.state = d.to_state
        kept.append(msg.id)  # ids only: the records themselves are what a request would drop
    gc.collect()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "growth_mb": round(after - before, 1)}


def table(results: list[Result]) -> str:
    header = (
        f"| {'scenario':<42} | {'db':<8} | {'req':>6} | {'err':>4} | {'req/s':>7} | {'p50 ms':>7} "
        f"| {'p99 ms':>7} | {'noop req/s':>10} | {'ratio':>5} | {'CPU ms/req':>10} | {'noop CPU':>8} |"
    )
    rule = "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"
    rows = [
        f"| {r.scenario:<42} | {r.database:<8} | {r.requests:>6} | {r.errors:>4} | {r.rps:>7.0f} | {r.p50_ms:>7.2f} "
        f"| {r.p99_ms:>7.2f} | {r.baseline_rps:>10.0f} | {r.ratio:>5.2f} | {r.cpu_ms:>10.3f} "
        f"| {r.baseline_cpu_ms:>8.3f} |"
        for r in results
    ]
    return "\n".join([header, rule, *rows])


async def main_async(args: argparse.Namespace) -> int:
    sim = start_simulator()
    results: list[Result] = []
    extra: dict[str, Any] = {}
    noop = Noop(args)
    temporary: list[str] = []
    try:
        results += [await noop.headline("SendMessage"), await noop.headline("IngestEvent")]
        if args.dataset:
            results += await volume.run(args, sim.first_line, noop, bench_database, extra)
            return _report(args, results, extra)
        databases = []
        if args.db in ("sqlite", "both"):
            tmp = tempfile.mkdtemp(prefix="wapi-guard-bench-")
            temporary.append(tmp)
            databases.append(("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db"))
        if args.db in ("postgres", "both"):
            await reset_postgres()
            databases.append(("postgres", PG_URL))
        for name, url in databases:
            out = await bench_database(name, url, sim.first_line, args, noop)
            results += out["results"]
            extra[name] = {k: v for k, v in out.items() if k != "results"}
        if args.scaling > 1 and args.db in ("postgres", "both"):
            # The same scenarios against `serve --workers N`, right after the one-process run.
            await reset_postgres()
            # More connections than workers, or the kernel may hand them all to one worker.
            channels = max(args.channels, 4 * args.scaling)
            scaled = argparse.Namespace(**{**vars(args), "workers": args.scaling, "channels": channels})
            out = await bench_database(f"pg x{args.scaling}", PG_URL, sim.first_line, scaled, noop)
            results += out["results"]
    finally:
        await noop.aclose()
        sim.stop()
        for tmp in temporary:
            shutil.rmtree(tmp, ignore_errors=True)
        if not args.dataset and args.db in ("postgres", "both"):
            with suppress(Exception):  # the server is down by now; a failed drop leaves it for the next run
                await drop_postgres()
    return _report(args, results, extra)


def _report(args: argparse.Namespace, results: list[Result], extra: dict[str, Any]) -> int:
    if args.dataset:
        print(f"\nwapi-guard volume benchmark — {os.cpu_count()} cores, dataset {args.dataset}\n")
        print(table(results))
        print()
        print(volume.summary(extra))
        if args.json:
            Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results], **extra}, indent=2))
        return 0
    extra["state_machine"] = transition_cost()
    extra["memory_100k_messages"] = rss_growth_100k()
    print(
        f"\nwapi-guard benchmark — {os.cpu_count()} cores, concurrency {args.concurrency} over "
        f"{args.channels} channel(s), up to {args.requests} requests or {args.max_seconds:.0f} s per scenario\n"
    )
    print(table(results))
    print()
    for name in ("sqlite", "postgres"):
        if name in extra:
            e = extra[name]
            print(
                f"{name}: provider round-trips inside the preflight (blocked sends): "
                f"{e['preflight_provider_round_trips']}; "
                f"server RSS {e['server_rss_mb'][0]} → {e['server_rss_mb'][1]} MB"
            )
    sm = extra["state_machine"]
    print(
        f"state machine: {sm['message_transition_us']} µs per message transition, "
        f"{sm['instance_transition_us']} µs per instance transition"
    )
    mem = extra["memory_100k_messages"]
    print(
        f"100k messages through the machine: RSS {mem['rss_before_mb']} → {mem['rss_after_mb']} MB "
        f"(+{mem['growth_mb']} MB)"
    )
    for name in ("sqlite", "postgres"):
        for summary in extra.get(name, {}).get("profiles", []):
            if summary:
                print(f"\nserver profile ({name}):\n{summary}")
    if args.json:
        report = json.dumps({"results": [asdict(r) for r in results], **extra}, indent=2)
        Path(args.json).write_text(report)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--requests", type=int, default=10000, help="requests per scenario (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time limit per scenario")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=3, help="baseline/scenario pairs per scenario (ratio = median of the rounds)"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--dataset",
        choices=sorted(volume.SIZES),
        help="volume run on Postgres: the hot paths, health/list latency, a sweep, WAL per status event and "
        "table sizes on an empty database and on a seeded one (month: 2M messages over 30 days; quick: 200k)",
    )
    parser.add_argument(
        "--keep-databases", action="store_true", help="with --dataset: keep the two bench databases afterwards"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve --workers N (PostgreSQL; give --channels ≥ 4·N so the kernel spreads connections)",
    )
    parser.add_argument(
        "--scaling",
        type=int,
        default=0,
        metavar="N",
        help="also run the PostgreSQL scenarios against serve --workers N (worker scaling, in the same run)",
    )
    parser.add_argument(
        "--server-root",
        metavar="DIR",
        help="run the wapi-guard server from this checkout (e.g. a `git worktree` of the commit before), "
        "with this environment's packages",
    )
    parser.add_argument("--profile", metavar="DIR", help="record py-spy samples of the server per scenario into DIR")
    args = parser.parse_args()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.server_root:
        args.server_root = Path(args.server_root).resolve()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
