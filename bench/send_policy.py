"""`python -m bench.send_policy [--database-url URL]`: what the send policy adds to the preflight.

Prints microseconds per call for: the pure rule (decide + consume), the preflight's check for an
instance with no policy (an in-memory set lookup), and the store's `admit` (one transaction that
decides and counts) on the given database (embedded SQLite in a temporary file by default).
Bounded loops; no network except the database given.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adapters.persistence.db import async_url, create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.send_policies import SendPolicyRepository
from services.app.send_policy import SendPolicies
from statemachine.send_policy import PolicyCounters, SendPolicy, consume, decide

POLICY = SendPolicy(
    min_interval_seconds=0.0,
    max_per_minute=1_000_000,
    new_recipients_per_hour=1_000_000,
    new_recipients_per_day=1_000_000,
    warmup_start_per_day=1_000,
    warmup_days=10,
)


def pure(n: int) -> float:
    counters = PolicyCounters()
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    anchor = now - timedelta(days=3)
    step = timedelta(milliseconds=7)
    started = time.perf_counter()
    for i in range(n):
        at = now + step * i
        new = i % 3 == 0
        verdict = decide(POLICY, counters, at, new_recipient=new, warmup_anchor=anchor)
        if verdict.allowed:
            counters = consume(POLICY, counters, at, new_recipient=new, jitter_fraction=0.5)
    return (time.perf_counter() - started) / n * 1e6


async def stored(url: str, n: int) -> tuple[float, float, float]:
    engine = create_engine(url)
    try:
        await upgrade_to_head(engine)
        store = SendPolicyRepository(engine)
        policies = SendPolicies(store, refresh=3600)
        await store.set_policy("BENCH-POLICY", POLICY, warmup_anchor=None, by="bench", now=datetime.now(UTC))
        await policies.admit("BENCH-NONE", "5515981121710")  # loads the set of active instances
        started = time.perf_counter()
        for i in range(n):
            await policies.admit("BENCH-NONE", f"55159811{i:05d}")
        unpoliced = (time.perf_counter() - started) / n * 1e6
        samples: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            await policies.admit("BENCH-POLICY", f"55159812{i % 500:05d}")
            samples.append((time.perf_counter() - t0) * 1e6)
        return unpoliced, statistics.median(samples), statistics.quantiles(samples, n=100)[98]
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="")
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    n = max(100, min(args.n, 100_000))
    print(f"pure rule (decide + consume):          {pure(n * 10):8.2f} µs/send")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        unpoliced, p50, p99 = asyncio.run(stored(async_url(url), n))
    print(f"preflight check, instance w/o policy:  {unpoliced:8.2f} µs/send")
    print(f"store admit (1 transaction), policy:   {p50:8.2f} µs p50, {p99:8.2f} µs p99  ({url.split(':')[0]})")


if __name__ == "__main__":
    main()
