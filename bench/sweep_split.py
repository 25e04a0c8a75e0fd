"""Where one stuck sweep spends its time: `python -m bench.sweep_split URL [--rounds N]`.

Against a database seeded by `python -m bench --dataset quick --keep-databases` (or month), runs
the steps of `Jobs.sweep_once` one by one and prints each step's milliseconds, then restores what
the sweep changed (the marked messages become unstuck again, stalled instances get their state
back), so the same backlog can be measured again. Never point it at a database that matters.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg

from bench.dataset import asyncpg_dsn


async def _split(url: str, stuck_after: float, batch: int, backlog: bool) -> dict[str, Any]:
    from adapters.persistence.db import create_engine
    from adapters.persistence.store import Repository
    from services.app.clock import utcnow
    from services.app.gateway_config import GatewayConfig
    from services.app.health import Instances
    from services.app.jobs import Jobs, stall_stuck_runs
    from services.observability.telemetry import Telemetry

    quiet = logging.getLogger("wapi_guard")
    quiet.propagate = False  # alert lines are part of a sweep's cost in production, not here
    quiet.addHandler(logging.NullHandler())
    engine = create_engine(url)
    repo = Repository(engine)
    raw = await asyncpg.connect(asyncpg_dsn(url))
    saved = await raw.fetch("SELECT id, state, reason, version, state_changed_at, stall_ended_at FROM instances")
    out: dict[str, Any] = {}
    try:
        config = GatewayConfig(stuck_after=stuck_after, sweep_interval=0)
        if batch > 0:
            config = replace(config, sweep_batch=batch)
        telemetry = Telemetry({})
        instances = Instances(repo, None, config, telemetry)  # type: ignore[arg-type]
        jobs = Jobs(repo, config, telemetry, instances)
        steps: dict[str, float] = {}

        async def timed(name: str, call: Any) -> Any:
            started = time.perf_counter()
            value = await call
            steps[name] = round((time.perf_counter() - started) * 1000, 1)
            return value

        swept = await timed("sweep_once (warm-up)", jobs.sweep_once())
        await _restore(raw, saved, [m.id for m in swept])
        started = time.perf_counter()
        swept = await timed("sweep_once (whole)", jobs.sweep_once())
        whole = (time.perf_counter() - started) * 1000
        marked_ids = [m.id for m in swept]
        # Undo, then the same sweep step by step.
        await _restore(raw, saved, marked_ids)
        cutoff = utcnow() - timedelta(seconds=stuck_after)
        await timed("apply_parked", repo.apply_parked())
        stuck = await timed("mark_stuck", repo.mark_stuck(cutoff, limit=config.sweep_batch))
        ids = sorted({m.instance_id for m in stuck})
        changes = await timed("stall_stuck_runs", stall_stuck_runs(repo, ids, config.stall_threshold))
        candidates, stalled = ids, len(changes)
        await timed("refresh_gauges", instances.refresh_gauges())
        await timed("reconcile_pending", repo.reconcile_pending(utcnow() - timedelta(seconds=60)))
        out = {
            "whole_ms": round(whole, 1),
            "marked": len(marked_ids),
            "steps_ms": steps,
            "instances checked": len(candidates),
            "stalled": stalled,
        }
        await _restore(raw, saved, [m.id for m in stuck])
        if backlog:
            # The whole backlog the way sweep_backlog runs it: each sweep timed, then undone.
            times: list[float] = []
            marked: list[str] = []
            started = time.perf_counter()
            for n in range(max(1, config.sweep_continuations)):
                one = time.perf_counter()
                swept_now = await jobs.sweep_once(continuation=n > 0)
                times.append((time.perf_counter() - one) * 1000)
                marked += [m.id for m in swept_now]
                if len(swept_now) < config.sweep_batch:
                    break
            total = time.perf_counter() - started
            out["backlog"] = {
                "sweeps": len(times),
                "marked": len(marked),
                "seconds": round(total, 2),
                "per_second": round(len(marked) / total) if total else 0,
                "sweep_ms_median": round(sorted(times)[len(times) // 2], 1),
                "sweep_ms_max": round(max(times), 1),
            }
            await _restore(raw, saved, marked)
    finally:
        await raw.close()
        await repo.aclose()
        await engine.dispose()
        quiet.propagate = True
    return out


async def _restore(raw: Any, saved: list[Any], marked: list[str]) -> None:
    await raw.execute("UPDATE messages SET stuck_at = NULL WHERE id = ANY($1::text[])", marked)
    await raw.executemany(
        "UPDATE instances SET state = $2, reason = $3, version = $4, state_changed_at = $5, stall_ended_at = $6 "
        "WHERE id = $1 AND (state, reason) IS DISTINCT FROM ($2, $3)",
        [tuple(r) for r in saved],
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep_split", description=__doc__)
    parser.add_argument("url", help="postgresql+asyncpg URL of a seeded bench database")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stuck-after", type=float, default=300.0)
    parser.add_argument("--backlog", action="store_true", help="also sweep the whole backlog, back to back")
    parser.add_argument("--batch", type=int, default=0, help="messages per sweep (default: the service's)")
    args = parser.parse_args()
    for _ in range(max(1, min(args.rounds, 20))):
        print(asyncio.run(_split(args.url, args.stuck_after, args.batch, args.backlog)))


if __name__ == "__main__":
    main()
