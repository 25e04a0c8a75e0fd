"""`python -m bench.hold_release [--messages N] [--interval S]`: a held backlog released at the pace.

On PostgreSQL (a database of its own, created and dropped by the run; WAPIGUARD_BENCH_PG_URL names
the server), with the W-API simulator and two `wapi-guard serve` replicas as child processes on
loopback: N sends with a hold to an instance whose session is incomplete are stored HELD; the
session comes back (the simulator's behaviour, then a probe); both replicas' dispatchers release
the backlog at the instance's send policy (`min_interval_seconds` = --interval); one replica is
killed with SIGKILL halfway. Prints the release rate against the configured pace, the provider
sends per message from the simulator's own record (each must be exactly one; none twice), what
ended FAILED (the killed replica's claims in flight: OUTCOME_UNKNOWN) and the time to drain.
Numbers, not a timed test. Every child is killed at the end; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Any

import asyncpg
import grpc
import httpx
from google.protobuf.duration_pb2 import Duration
from sqlalchemy.engine import make_url

from bench.__main__ import Process
from bench.dataset import PG_URL
from services.api.wapiguard.v1 import (
    common_pb2,
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
    send_policy_pb2,
    send_policy_pb2_grpc,
)

INSTANCE = "BENCH-HOLD-RELEASE"
TOKEN = "tok-bench-hold-release"  # noqa: S105 - the simulator's made-up token
DRAIN_LIMIT = 900.0  # seconds: the run gives up (and says so) past this


def database_url() -> str:
    url = make_url(PG_URL)
    return url.set(database=f"{url.database}_holds").render_as_string(hide_password=False)


async def admin(sql: str) -> None:
    url = make_url(PG_URL)
    conn = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database="postgres"
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def query(sql: str) -> list[Any]:
    url = make_url(database_url())
    conn = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def replica(url: str, simulator: str) -> Process:
    return Process(
        [
            *("-m", "services.cli", "serve", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "-1"),
            *("--database-url", url, "--wapi-base-url", simulator, "--probe-interval", "0"),
            *("--sweep-interval", "1", "--pending-grace", "2", "--hold-interval", "0.2", "--log-format", "json"),
            # No webhook bridge here, so no delivery receipts: stall detection would rightly stop the
            # instance after a while (DELIVERY_STALLED). Off for this run; it measures the release.
            *("--detect-interval", "0", "--stuck-after", "86400"),
        ]
    )


async def hold_backlog(targets: list[str], count: int) -> float:
    """`count` sends with a one-hour hold, spread over both replicas, 32 at a time."""
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [send_pb2_grpc.SendServiceStub(c) for c in channels]
    gate = asyncio.Semaphore(32)
    started = time.perf_counter()

    async def one(i: int) -> None:
        request = send_pb2.SendMessageRequest(
            instance_id=INSTANCE,
            to=f"551598{i:07d}",
            idempotency_key=f"hold-{i}",
            text=send_pb2.TextContent(body=f"Mensagem {i}"),
            hold_for=Duration(seconds=3600),
        )
        async with gate:
            answer = await stubs[i % 2].SendMessage(request, timeout=30)
        assert answer.state == common_pb2.MESSAGE_STATE_HELD, answer

    await asyncio.gather(*(one(i) for i in range(count)))
    for channel in channels:
        await channel.close()
    return time.perf_counter() - started


async def counts() -> dict[str, int]:
    rows = await query("SELECT state, count(*) AS n FROM messages GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


async def run(count: int, interval: float) -> dict[str, Any]:
    url = database_url()
    name = make_url(url).database
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin(f'CREATE DATABASE "{name}"')
    sim = Process(
        ["-m", "services.cli", "simulator", "--port", "0", "--instance", f"{INSTANCE}:{TOKEN}:session_incomplete"]
    )
    base = sim.first_line.split()[0]
    control = base.removesuffix("/v1") + "/_sim"
    a = replica(url, base)  # migrates the database first
    b = replica(url, base)
    try:
        channel = grpc.aio.insecure_channel(a.grpc_target())
        health = instance_health_pb2_grpc.InstanceHealthServiceStub(channel)
        await health.RegisterInstance(
            instance_health_pb2.RegisterInstanceRequest(instance_id=INSTANCE, name="bench", token=TOKEN), timeout=30
        )
        await send_policy_pb2_grpc.SendPolicyServiceStub(channel).SetSendPolicy(
            send_policy_pb2.SetSendPolicyRequest(
                instance_id=INSTANCE, policy=send_policy_pb2.SendPolicy(min_interval_seconds=interval)
            ),
            timeout=30,
        )
        hold_seconds = await hold_backlog([a.grpc_target(), b.grpc_target()], count)
        async with httpx.AsyncClient(timeout=30) as http:
            await http.post(f"{control}/instances/{INSTANCE}/behaviour", json={"behaviour": "healthy"})
            recovered = time.perf_counter()
            state = await health.GetInstanceHealth(
                instance_health_pb2.GetInstanceHealthRequest(instance_id=INSTANCE, refresh=True), timeout=30
            )
            assert state.state == common_pb2.INSTANCE_STATE_CONNECTED, state
            killed_at = None
            while time.perf_counter() - recovered < DRAIN_LIMIT:
                now = await counts()
                if killed_at is None and now.get("HELD", 0) <= count // 2:
                    os.kill(a.proc.pid, signal.SIGKILL)
                    killed_at = time.perf_counter() - recovered
                if not now.get("HELD") and not now.get("PENDING"):
                    break
                await asyncio.sleep(0.5)
            drained = time.perf_counter() - recovered
            sends = (await http.get(f"{control}/instances/{INSTANCE}/sends")).json()["sends"]
        await channel.close()
        return await summarize(count, interval, sends, hold_seconds, killed_at, drained)
    finally:
        for process in (a, b, sim):
            process.stop()
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def summarize(
    count: int, interval: float, sends: list[Any], hold_seconds: float, killed_at: float | None, drained: float
) -> dict[str, Any]:
    """The run's numbers: the simulator's record of sends against the messages' stored outcomes."""
    per_message = Counter(str(s["body"]["phone"]) for s in sends)
    final = await counts()
    reasons = await query("SELECT failure_reason, count(*) AS n FROM messages WHERE state = 'FAILED' GROUP BY 1")
    span = await query(
        "SELECT extract(epoch FROM max(sent_at) - min(sent_at)) AS s, count(*) AS n FROM messages "
        "WHERE sent_at IS NOT NULL"
    )
    sent, seconds = int(span[0]["n"]), float(span[0]["s"] or 0.0)
    return {
        "messages": count,
        "configured_pace_per_s": round(1 / interval, 1),
        "release_rate_per_s": round((sent - 1) / seconds, 1) if seconds else None,
        "hold_backlog_seconds": round(hold_seconds, 1),
        "replica_killed_after_s": round(killed_at, 1) if killed_at is not None else None,
        "time_to_drain_s": round(drained, 1),
        "provider_sends": len(sends),
        "messages_sent_once": sum(1 for n in per_message.values() if n == 1),
        "messages_sent_twice_or_more": sum(1 for n in per_message.values() if n > 1),
        "final_states": final,
        "failed_reasons": {r["failure_reason"]: int(r["n"]) for r in reasons},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=0.01, help="min_interval_seconds of the policy")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.interval)), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
