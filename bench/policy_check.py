"""`python -m bench.policy_check`: what the send policy and the recipient checks add to each send.

Measures, per send, the preflight's protection of the number as the send path calls it: the send
policy's admission (`SendPolicies.admit`) and the recipient's checks (opt-outs, known absence;
`recipient_block`), on SQLite (a temporary file) and on PostgreSQL (its own database, created and
dropped here; skipped when no server answers). Prints p50/p99 in microseconds for:

- no policy: an instance whose number has no policy (an established number after an upgrade);
- policy, known contacts: a policy with a per-minute cap and new-recipient budgets, sends to
  recipients the number already talks to (the common case of a CRM's traffic);
- policy, new recipients: the same policy, every send to someone the number never messaged (learned
  and counted against the hour's and the day's budgets: one read and one short transaction each);
- policy + interval: the same with a minimum interval between sends (which must be decided
  across replicas on every send: one statement).

Bounded loops; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy.engine import make_url

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.optouts import OptOutRepository
from adapters.persistence.recipients import RecipientCheckRepository
from adapters.persistence.send_policies import SendPolicyRepository
from services.app.optouts import OptOuts
from services.app.recipients import Recipients
from services.app.send_policy import SendPolicies
from services.app.send_protection import recipient_block
from statemachine.optout import OptOut, OptOutSource
from statemachine.recipients import NumberCheck
from statemachine.send_policy import SendPolicy

PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BUDGETS = SendPolicy(max_per_minute=1_000_000, new_recipients_per_hour=100_000, new_recipients_per_day=500_000)
INTERVAL = SendPolicy(
    min_interval_seconds=0.000_001,
    max_per_minute=1_000_000,
    new_recipients_per_hour=100_000,
    new_recipients_per_day=500_000,
)
CONTACTS = 200


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples), statistics.quantiles(samples, n=100)[98]


async def _scenario(url: str, n: int) -> dict[str, tuple[float, float]]:
    engine = create_engine(url)
    try:
        await upgrade_to_head(engine)
        now = datetime.now(UTC)
        policy_store = SendPolicyRepository(engine)
        policies = SendPolicies(policy_store)
        opt_outs = OptOuts(OptOutRepository(engine))
        recipients = Recipients(RecipientCheckRepository(engine), None, cast(Any, None))
        # Every list has something in it, so no check is skipped for being empty.
        for instance in ("BENCH-NONE", "BENCH-BUDGETS", "BENCH-NEW", "BENCH-INTERVAL"):
            await opt_outs.store.add(OptOut(instance, "5511900000001", OptOutSource.API, "", now, "bench"))
            await recipients.cache.put(instance, NumberCheck("5511900000002", False, checked_at=now))
        await policies.set("BENCH-BUDGETS", BUDGETS, by="bench")
        await policies.set("BENCH-NEW", BUDGETS, by="bench")
        await policies.set("BENCH-INTERVAL", INTERVAL, by="bench")
        contacts = [f"55159812{i:05d}" for i in range(CONTACTS)]
        out: dict[str, tuple[float, float]] = {}
        for label, instance in (
            ("no policy", "BENCH-NONE"),
            ("policy, known contacts", "BENCH-BUDGETS"),
            ("policy, new recipients", "BENCH-NEW"),
            ("policy + interval", "BENCH-INTERVAL"),
        ):
            fresh = instance == "BENCH-NEW"
            for to in [] if fresh else contacts:  # first contact with each: they become known (not measured)
                await policies.admit(instance, to)
            samples: list[float] = []
            for i in range(n):
                to = f"55159813{i:05d}" if fresh else contacts[i % CONTACTS]
                started = time.perf_counter()
                await policies.admit(instance, to)
                await recipient_block(opt_outs, recipients, instance, to)
                samples.append((time.perf_counter() - started) * 1e6)
            out[label] = _percentiles(samples)
        await policies.aclose()
        return out
    finally:
        await engine.dispose()


async def _admin(sql: str) -> None:
    import asyncpg

    admin = make_url(PG_ADMIN)
    conn = await asyncpg.connect(host=admin.host, port=admin.port or 5432, user=admin.username, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _postgres(n: int) -> dict[str, tuple[float, float]] | None:
    name = f"wapi_guard_policy_bench_{uuid.uuid4().hex[:8]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except (OSError, Exception) as error:  # no server: say so, measure SQLite only
        print(f"PostgreSQL skipped: {type(error).__name__}: {error}")
        return None
    try:
        return await _scenario(make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), n)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _print(database: str, results: dict[str, tuple[float, float]]) -> None:
    for label, (p50, p99) in results.items():
        print(f"{database:<10} {label:<24} p50 {p50:9.1f} µs   p99 {p99:9.1f} µs")


async def _main(n: int, postgres: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _print("SQLite", await _scenario(f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", n))
    if postgres and (pg := await _postgres(n)) is not None:
        _print("PostgreSQL", pg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=3000, help="measured sends per scenario (100..100000)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    asyncio.run(_main(max(100, min(args.n, 100_000)), not args.no_postgres))


if __name__ == "__main__":
    main()
