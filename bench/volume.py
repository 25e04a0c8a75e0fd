"""`python -m bench --dataset month|quick`: the service on an empty database and on one holding a
month of history, side by side in one run (Postgres, the benchmark's own databases).

Both databases are created fresh (`<bench db>_empty`, `<bench db>_<dataset>`) and dropped at the
end unless `--keep-databases`. The seeded one is filled by SQL (bench/dataset.py). Reported per
database: the hot paths against the no-op baseline (the usual rounds), GetInstanceHealth of the
instance with the most stuck messages and ListInstances latency, one stuck sweep with the seeded
backlog and one with nothing new, WAL written per status event, and table + index sizes.
WAL is the server-wide LSN difference (on a shared server other work is counted too: an upper
bound) and, where `pg_waldump` can read the server's WAL (the benchmark on the database host, as a
superuser), the records that change this database's pages, split by relation, with their full-page
images.
"""

from __future__ import annotations

import collections
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from bench.dataset import PG_URL, SIZES, asyncpg_dsn, seed

__all__ = ["SIZES", "WalWindow", "run", "summary", "wal_lsn"]


def _pg_url() -> str:
    return PG_URL


async def wal_lsn(url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"))
    finally:
        await conn.close()


_LENGTHS = re.compile(r"len \(rec/tot\):\s*(\d+)/\s*(\d+)")
_FIRST_BLOCK = re.compile(r"blkref #0: rel \d+/(\d+)/(\d+)")


class WalWindow:
    """The WAL written between `start()` and `stop()`: server-wide, and this database's own
    records by relation (pg_waldump over the same LSN range) when the WAL can be read here."""

    def __init__(self, url: str) -> None:
        self.dsn = asyncpg_dsn(url)
        self._start = ""
        self._start_bytes = 0
        self.checkpointed = False

    async def start(self) -> None:
        """A checkpoint first (where allowed): the first change of each page after it writes the
        whole page, so the window measures the worst case a running server sees, not a lucky one."""
        conn = await asyncpg.connect(self.dsn)
        try:
            try:
                await conn.execute("CHECKPOINT")
                self.checkpointed = True
            except asyncpg.PostgresError:
                self.checkpointed = False  # needs a superuser or pg_checkpoint
            row = await conn.fetchrow(
                "SELECT pg_current_wal_lsn()::text AS lsn, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS n"
            )
            self._start, self._start_bytes = row["lsn"], int(row["n"])
        finally:
            await conn.close()

    async def stop(self, events: int) -> dict[str, Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            row = await conn.fetchrow(
                "SELECT pg_current_wal_flush_lsn()::text AS lsn, "
                "pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint AS n, "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) AS db"
            )
            try:
                wal_dir = Path(str(await conn.fetchval("SHOW data_directory"))) / "pg_wal"
            except asyncpg.PostgresError:
                wal_dir = None
            names = {int(r[0]): str(r[1]) for r in await conn.fetch("SELECT relfilenode, relname FROM pg_class")}
        finally:
            await conn.close()
        out: dict[str, Any] = {
            "server_bytes_per_event": round((int(row["n"]) - self._start_bytes) / max(1, events)),
            "after_checkpoint": self.checkpointed,
        }
        split = _waldump(wal_dir, self._start, row["lsn"], int(row["db"]), names) if wal_dir else None
        if split is not None:
            total, fpi, by_relation = split
            out["db_bytes_per_event"] = round(total / max(1, events))
            out["db_fpi_bytes_per_event"] = round(fpi / max(1, events))
            out["by_relation"] = {
                name: round(size / max(1, events)) for name, size in by_relation.most_common(8) if size >= events
            }
        return out


def _pg_tool(name: str) -> str | None:
    """A PostgreSQL tool from PATH, or from the directory `pg_config --bindir` names."""
    found = shutil.which(name)
    config = shutil.which("pg_config")
    if found is None and config is not None:
        try:
            bindir = subprocess.run([config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        candidate = Path(bindir.stdout.strip()) / name
        found = str(candidate) if candidate.is_file() else None
    return found


def _waldump(
    wal_dir: Path, start: str, end: str, database: int, names: dict[int, str]
) -> tuple[int, int, collections.Counter[str]] | None:
    """(bytes, full-page-image bytes, bytes by relation) of this database's records, or None."""
    binary = _pg_tool("pg_waldump")
    if binary is None or not wal_dir.is_dir():
        return None
    try:
        dump = subprocess.run(
            [binary, "-p", str(wal_dir), "-s", start, "-e", end],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    total = fpi = 0
    by_relation: collections.Counter[str] = collections.Counter()
    for line in dump.stdout.splitlines():
        lengths = _LENGTHS.search(line)
        if lengths is None:
            continue
        rec, tot = int(lengths.group(1)), int(lengths.group(2))
        block = _FIRST_BLOCK.search(line)
        if block is None or int(block.group(1)) != database:
            continue  # another database's page, or a record of no page (commits: a few bytes each)
        name = names.get(int(block.group(2)), block.group(2))
        by_relation[name] += tot
        total += tot
        fpi += tot - rec
    return (total, fpi, by_relation) if total else None


async def _admin(url: str, sql: str) -> None:
    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username, password=parsed.password, database="postgres"
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fresh(url: str) -> None:
    from adapters.persistence.db import create_engine
    from adapters.persistence.migrate import upgrade_to_head

    name = make_url(url).database
    await _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(url, f'CREATE DATABASE "{name}"')
    engine = create_engine(url)
    try:
        await upgrade_to_head(engine)
    finally:
        await engine.dispose()


async def _busiest(url: str) -> str | None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        value = await conn.fetchval(
            "SELECT instance_id FROM open_messages WHERE state = 'SENT' AND stuck_at IS NOT NULL "
            "GROUP BY instance_id ORDER BY count(*) DESC LIMIT 1"
        )
        return str(value) if value is not None else None
    finally:
        await conn.close()


async def _sweeps(url: str) -> dict[str, Any]:
    """One sweep with whatever is due (the seeded backlog: SENT in the last 10 minutes, half of it
    past the 300 s window), a second one, and one with nothing new."""
    from adapters.persistence.db import create_engine
    from adapters.persistence.store import Repository
    from services.app.gateway_config import GatewayConfig
    from services.app.health import Instances
    from services.app.jobs import Jobs
    from services.observability.telemetry import Telemetry

    quiet = logging.getLogger("wapi_guard")
    quiet.propagate = False  # 500 alert lines per sweep are part of its cost, not of the report
    quiet.addHandler(logging.NullHandler())
    engine = create_engine(url)
    repo = Repository(engine)
    out: dict[str, Any] = {}
    try:
        for label, stuck_after in (("backlog", 300.0), ("backlog, next", 300.0), ("nothing new", 10.0**7)):
            config = GatewayConfig(stuck_after=stuck_after, sweep_interval=0)
            telemetry = Telemetry({})
            jobs = Jobs(repo, config, telemetry, Instances(repo, None, config, telemetry))  # type: ignore[arg-type]
            started = time.perf_counter()
            marked = await jobs.sweep_once()
            out[label] = {"ms": round((time.perf_counter() - started) * 1000, 1), "marked": len(marked)}
    finally:
        await repo.aclose()
        await engine.dispose()
        quiet.propagate = True
    return out


async def _sizes(url: str) -> dict[str, dict[str, int]]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("VACUUM ANALYZE")
        rows = await conn.fetch(
            """SELECT c.relname AS name, pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
                      pg_total_relation_size(c.oid) AS total, greatest(c.reltuples, 0)::bigint AS rows
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC"""
        )
        return {r["name"]: {k: int(r[k]) for k in ("heap", "indexes", "total", "rows")} for r in rows}
    finally:
        await conn.close()


async def run(
    args: Any,
    sim_url: str,
    noop: Any,
    bench_database: Callable[..., Awaitable[dict[str, Any]]],
    extra: dict[str, Any],
) -> list[Any]:
    size = SIZES[args.dataset]
    base = make_url(_pg_url())
    urls = {
        "empty": base.set(database=f"{base.database}_empty").render_as_string(hide_password=False),
        args.dataset: base.set(database=f"{base.database}_{args.dataset}").render_as_string(hide_password=False),
    }
    results: list[Any] = []
    try:
        for url in urls.values():
            await _fresh(url)
        print(f"seeding {size.label} …", flush=True)
        extra["seed_seconds"] = round(await seed(asyncpg_dsn(urls[args.dataset]), size, progress=True), 1)
        extra["dataset"] = size.label
        for label, url in urls.items():
            busiest = await _busiest(url)
            out = await bench_database(label, url, sim_url, args, noop, health_instance=busiest or "BENCH-HEALTHY")
            results += out.pop("results")
            out["sweeps"] = await _sweeps(url)
            out["sizes"] = await _sizes(url)
            out["health_instance"] = busiest or "BENCH-HEALTHY"
            extra[label] = out
    finally:
        if not args.keep_databases:
            for url in urls.values():
                await _admin(url, f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    return results


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def summary(extra: dict[str, Any]) -> str:
    labels = [k for k in extra if isinstance(extra[k], dict) and "sizes" in extra[k]]
    lines = [f"dataset: {extra.get('dataset', '?')}, seeded in {extra.get('seed_seconds', '?')} s", ""]
    head = f"| {'figure':<44} | " + " | ".join(f"{label:>16}" for label in labels) + " |"
    lines += [head, "|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|"]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"| {name:<44} | " + " | ".join(f"{v:>16}" for v in values) + " |")

    get = [extra[label] for label in labels]
    row(
        "GetInstanceHealth p50 / p99 ms",
        [f"{e['get_instance_health_ms'][0]} / {e['get_instance_health_ms'][1]}" for e in get],
    )
    row("ListInstances p50 / p99 ms", [f"{e['list_instances_ms'][0]} / {e['list_instances_ms'][1]}" for e in get])
    for sweep in ("backlog", "backlog, next", "nothing new"):
        row(f"sweep ({sweep}) ms, marked", [f"{e['sweeps'][sweep]['ms']}, {e['sweeps'][sweep]['marked']}" for e in get])
    wal = [e.get("wal", {}) for e in get]
    after = " (from a checkpoint)" if all(w.get("after_checkpoint") for w in wal) else ""
    row(f"WAL per status event{after}, bytes", [str(e.get("wal_bytes_per_status_event", "-")) for e in get])
    if any("db_bytes_per_event" in w for w in wal):
        row(
            "  this database's pages, of which page images",
            [f"{w.get('db_bytes_per_event', '-')}, {w.get('db_fpi_bytes_per_event', '-')}" for w in wal],
        )
    for table in ("messages", "events", "open_messages", "chat_statuses", "instance_transitions", "change_log"):
        row(
            f"{table}: rows, heap + indexes",
            [
                f"{e['sizes'].get(table, {}).get('rows', 0):,}, "
                f"{_mb(e['sizes'].get(table, {}).get('heap', 0))} + {_mb(e['sizes'].get(table, {}).get('indexes', 0))}"
                for e in get
            ],
        )
    for w, label in zip(wal, labels, strict=True):
        if w.get("by_relation"):
            parts = ", ".join(f"{name} {size}" for name, size in w["by_relation"].items())
            lines.append(f"\n{label}: WAL bytes per status event by relation: {parts}")
    for e, label in zip(get, labels, strict=True):
        sizes = e["sizes"]
        msgs = sizes.get("messages", {}).get("rows", 0)
        evts = sizes.get("events", {}).get("rows", 0)
        if msgs > 100_000:
            per_message = (sizes["messages"]["total"] + sizes.get("open_messages", {}).get("total", 0)) / msgs
            per_event = sizes["events"]["total"] / max(1, evts)
            lines.append(f"\n{label}: {per_message:,.0f} bytes per message, {per_event:,.0f} bytes per status event")
    return "\n".join(lines)
