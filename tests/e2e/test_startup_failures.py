"""`wapi-guard serve` / `migrate` that cannot start say what failed and where, in a separate process.

The database here is a listening socket that never answers (the kernel completes the TCP
handshake from the backlog; nothing ever reads or writes), or a port nobody listens on.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-db-pass-do-not-print"


@pytest.fixture
def silent_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again on exit: nobody listens there


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAPIGUARD_", "OTEL_"))}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, time.monotonic() - started


def url(port: int) -> str:
    return f"postgresql+asyncpg://guard:{PASSWORD}@127.0.0.1:{port}/wapiguard"


SERVE = ("serve", "--grpc-port", "0", "--http-port", "-1", "--probe-interval", "0", "--db-connect-timeout", "1")


def stderr_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("wapi-guard: ")]
    assert lines, done.stderr[-3000:]
    return lines[-1]


def test_serve_against_a_silent_database_says_where_and_what(silent_port: int) -> None:
    done, took = run_cli(*SERVE, "--database-url", url(silent_port))
    assert done.returncode != 0
    line = stderr_line(done)
    assert line == f"wapi-guard: database at 127.0.0.1:{silent_port}/wapiguard did not answer within 1 s (migrations)"
    assert PASSWORD not in done.stderr + done.stdout
    assert took < 30


def test_serve_without_migrations_names_the_first_step_that_waited(silent_port: int) -> None:
    done, _took = run_cli(*SERVE, "--no-migrate", "--database-url", url(silent_port))
    assert done.returncode != 0
    line = stderr_line(done)
    assert line.startswith(f"wapi-guard: database at 127.0.0.1:{silent_port}/wapiguard did not answer within 1 s (")
    assert PASSWORD not in done.stderr + done.stdout


def test_migrate_against_a_closed_port_says_refused(closed_port: int) -> None:
    done, _took = run_cli("migrate", "--db-connect-timeout", "1", "--database-url", url(closed_port))
    assert done.returncode != 0
    line = stderr_line(done)
    assert line.startswith(f"wapi-guard: database at 127.0.0.1:{closed_port}/wapiguard ")
    assert "(migrations)" in line
    assert PASSWORD not in done.stderr + done.stdout
