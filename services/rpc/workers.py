"""`serve --workers N`: N server processes on one machine, sharing the gRPC and HTTP ports.

One process serves on one core (the GIL). The parent here applies the migrations once, picks
the ports (a free one for port 0, held with SO_REUSEPORT until the workers have bound theirs),
starts N `serve` processes with `--reuse-port` (the kernel spreads new connections over them)
and waits. Each worker is a replica as several machines would run them: its own database pool,
its own change feed and health cache, and the jobs that are already coordinated through the
database (outbound webhook claims, the learned stall test, parked statuses). The periodic jobs
that would only repeat each other's work on one machine (background probes, which call the
provider; the stuck sweep; retention; the webhook-log reconcile) run on worker 0 only.

SIGTERM or SIGINT to the parent is passed to every worker, each shuts down gracefully (probes
fail, in-flight RPCs finish within --shutdown-grace) and the parent exits once all have; a worker
that dies makes the parent stop the others and exit non-zero (a supervisor restarts the lot).
SQLite is refused: one file has one writer, and its group commit batches within one process.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from sqlalchemy.engine import make_url

from adapters.runtime import run
from services.config import Settings

# Worker 0's periodic jobs; the other workers get these flags (the last flag given wins).
SINGLE_WORKER_JOBS = ("--probe-interval", "--sweep-interval", "--retention-interval", "--reconcile-interval")
START_TIMEOUT = 120.0


class WorkersRefused(ValueError):
    """A configuration `--workers` cannot serve (answered before anything starts)."""


def check(settings: Settings) -> None:
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        raise WorkersRefused(
            "--workers needs PostgreSQL: an SQLite file has one writer at a time and its group commit "
            "batches within one process, so more processes would only wait on each other's locks "
            "(run one process, or point --database-url at PostgreSQL)"
        )


def _end_with_parent() -> None:
    """In the worker, before exec (Linux): SIGTERM when the parent dies, even by SIGKILL, so no
    worker keeps serving the port without its supervisor."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _hold_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on `port` (a free one for 0): the port stays
    ours until the workers have bound it too; the kernel never hands a connection to it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise OSError(f"cannot bind {host}:{port}") from None
    return sock


def worker_argv(argv: Sequence[str], index: int, grpc_port: int, http_port: int) -> list[str]:
    """The `serve` command line of worker `index`: the parent's, then what the worker must use."""
    args = [*argv, "--workers", "1", "--reuse-port", "--no-migrate"]
    args += ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    if index:
        for flag in SINGLE_WORKER_JOBS:
            args += [flag, "0"]
    return args


def serve_workers(
    settings: Settings, argv: Sequence[str], *, migrate: Callable[[Settings], Coroutine[Any, Any, None]]
) -> int:
    """Runs `settings.workers` workers until SIGTERM/SIGINT; `argv` is the parent's `serve` line;
    `migrate` is the composition root's (services/migration.py), run once here when asked."""
    check(settings)
    if settings.migrate_on_start:
        run(migrate(settings), event_loop=settings.event_loop)
    held = [_hold_port(settings.host, settings.grpc_port)]
    grpc_port = held[0].getsockname()[1]
    http_port = settings.http_port
    if http_port >= 0:
        held.append(_hold_port(settings.host, http_port))
        http_port = held[-1].getsockname()[1]
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen[str]] = []
    try:
        for index in range(settings.workers):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.cli", "serve", *worker_argv(argv, index, grpc_port, http_port)],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    preexec_fn=_end_with_parent,
                )
            )
        if not _wait_ready(procs, stop):
            return _stop_all(procs, stop["signal"] or signal.SIGTERM, failed=not stop["signal"])
        for sock in held:
            sock.close()
        held.clear()
        bridge = f", webhook bridge on http://{settings.host}:{http_port}" if http_port >= 0 else ""
        print(
            f"wapi-guard serving gRPC on {settings.host}:{grpc_port}{bridge} with {len(procs)} workers "
            f"(pids {' '.join(str(p.pid) for p in procs)})",
            flush=True,
        )
        while not stop["signal"]:
            if any(p.poll() is not None for p in procs):
                print("wapi-guard: a worker exited; stopping the others", file=sys.stderr, flush=True)
                return _stop_all(procs, signal.SIGTERM, failed=True)
            time.sleep(0.2)
        return _stop_all(procs, stop["signal"], failed=False)
    finally:
        for sock in held:
            sock.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_ready(procs: list[subprocess.Popen[str]], stop: dict[str, int]) -> bool:
    """Each worker prints its serving line once it serves; False if one fails or a signal comes."""
    waiting = {p.stdout: p for p in procs if p.stdout is not None}
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as selector:
        for stream in waiting:
            selector.register(stream, selectors.EVENT_READ)
        while waiting and not stop["signal"] and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                line = key.fileobj.readline()  # type: ignore[union-attr]
                selector.unregister(key.fileobj)
                del waiting[key.fileobj]  # type: ignore[arg-type]
                if "serving" not in line:
                    return False
    return not waiting and not stop["signal"]


def _stop_all(procs: list[subprocess.Popen[str]], signum: int, *, failed: bool) -> int:
    """Passes the signal on and waits for every worker's graceful shutdown (bounded)."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)
    deadline = time.monotonic() + 60.0
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.1, deadline - time.monotonic()))
        if p.poll() is None:
            p.kill()
            p.wait()
            failed = True
        elif p.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
            failed = True
    return 1 if failed else 0
