"""`python -m bench.guard`: the CI step that keeps the hot paths' cost (well under 2 minutes).

Runs the three hot paths on PostgreSQL against the no-op gRPC server, interleaved (no-op round,
scenario round, five times each) and compares each one's ratio to the no-op with the figure
recorded for this kind of machine in `bench/figures.json`. The ratio compared is the cost one:
the no-op's server CPU per request over the scenario's, both from the servers' own counters over
the same interleaved rounds (a doubled cost per request halves it). The throughput ratio is
printed beside it but not judged: on two shared cores it also moves with the load generator and
with whatever else runs (±50 % between runs here, where the CPU ratio stays within ±20 %). A ratio
more than `tolerance` (35 %) below its figure fails the step; a scenario that falls below is
measured once more and fails only if it is below again (a neighbour's burst of load does not fail
CI; a real regression is below both times). Ratios only, never absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.__main__ import Noop, bench_database, drop_postgres, reset_postgres, start_simulator
from bench.dataset import PG_URL

FIGURES = Path(__file__).resolve().parent / "figures.json"
SHORT = {
    "SendMessage blocked (SESSION_INCOMPLETE)": "blocked",
    "SendMessage healthy (via simulator)": "healthy",
    "IngestEvent status (dedupe + transition)": "status",
}


def verdict(measured: dict[str, float], recorded: dict[str, float], tolerance: float) -> list[str]:
    """The scenarios whose ratio fell more than `tolerance` below the recorded figure."""
    return [name for name, figure in recorded.items() if measured.get(name, 0.0) < figure * (1 - tolerance)]


async def measure(args: argparse.Namespace, database: str) -> dict[str, float]:
    sim = start_simulator()
    noop = Noop(args)
    tmp = tempfile.mkdtemp(prefix="wapi-guard-guard-")
    try:
        if database == "postgres":
            await reset_postgres()
            url = PG_URL
        else:
            url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        out = await bench_database(database, url, sim.first_line, args, noop)
    finally:
        await noop.aclose()
        sim.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if database == "postgres":
            with contextlib.suppress(Exception):  # a failed drop leaves it for the next run to reset
                await drop_postgres()
    ratios: dict[str, float] = {}
    for r in out["results"]:
        ratios[SHORT[r.scenario]] = round(r.baseline_cpu_ms / r.cpu_ms, 3) if r.cpu_ms else 0.0
        print(
            f"  {SHORT[r.scenario]:<8} CPU ratio {ratios[SHORT[r.scenario]]:.2f} (server CPU {r.cpu_ms:.3f} ms/req, "
            f"no-op {r.baseline_cpu_ms:.3f}); throughput ratio {r.ratio:.2f} ({r.rps:.0f} req/s, "
            f"no-op {r.baseline_rps:.0f})",
            flush=True,
        )
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guard", description=__doc__)
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--server-root", type=Path, help="measure the server of this checkout instead")
    options = parser.parse_args()
    figures: dict[str, Any] = json.loads(options.figures.read_text())
    recorded: dict[str, float] = figures["ratios"]
    tolerance = float(figures["tolerance"])
    database = str(figures.get("database", "postgres"))
    args = argparse.Namespace(
        requests=int(figures.get("requests", 2500)),
        rounds=int(figures.get("rounds", 5)),
        max_seconds=float(figures.get("max_seconds", 25)),
        concurrency=50,
        channels=2,
        profile=None,
        server_root=options.server_root.resolve() if options.server_root else None,
    )
    print(
        f"bench guard: {database}, {os.cpu_count()} cores, {args.rounds} interleaved rounds; fails below "
        f"{1 - tolerance:.0%} of the figures recorded for {figures['machine']!r}: "
        + ", ".join(f"{k} {v:.2f}" for k, v in recorded.items()),
        flush=True,
    )
    measured = asyncio.run(measure(args, database))
    low = verdict(measured, recorded, tolerance)
    if low:
        print(f"below the line: {', '.join(low)}; measuring again", flush=True)
        again = asyncio.run(measure(args, database))
        low = [name for name in low if name in verdict(again, recorded, tolerance)]
    if low:
        for name in low:
            print(
                f"bench guard: FAIL {name}: CPU ratio to the no-op below {1 - tolerance:.0%} of {recorded[name]:.2f} "
                f"(the recorded figure, {options.figures.name}) in two runs",
                file=sys.stderr,
            )
        return 1
    print("bench guard: every hot path within its figure", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
