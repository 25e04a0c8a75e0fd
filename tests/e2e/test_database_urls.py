"""`wapi-guard serve --database-url …` with the spellings people type: the common ones start on the
async drivers the project ships, anything else is one line naming the accepted forms (no traceback,
never the password). Through the real entry point in a separate process, as an operator sees it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from adapters.persistence.db import DatabaseUrlError, async_url
from services.bootstrap import listen_dsn

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-db-pass-do-not-print"
POSTGRES_URL = os.environ.get("WAPIGUARD_TEST_DATABASE_URL", "")
SERVE = ("serve", "--grpc-port", "0", "--http-port", "-1", "--probe-interval", "0", "--db-connect-timeout", "1")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("WAPIGUARD_", "OTEL_"))}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def serves(*args: str) -> tuple[bool, str]:
    """Starts `serve`, waits for its serving line (True) or its exit (False), then stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *SERVE, "--log-format", "text", *args],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the serving line, or "" when it exits first
        ok = line.startswith("wapi-guard serving gRPC on ")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        return ok, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def silent_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("wapi-guard: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("postgresql://u:p@db:5432/w", "postgresql+asyncpg://u:p@db:5432/w"),
        ("postgres://u:p@db/w", "postgresql+asyncpg://u:p@db/w"),
        ("postgresql+psycopg://u@db/w", "postgresql+asyncpg://u@db/w"),
        ("postgresql+psycopg2://u@db/w", "postgresql+asyncpg://u@db/w"),
        ("postgresql+asyncpg://u@db/w", "postgresql+asyncpg://u@db/w"),
        ("postgres://u@db/w?sslmode=require", "postgresql+asyncpg://u@db/w?ssl=require"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        (" sqlite:////abs/x.db ", "sqlite+aiosqlite:////abs/x.db"),
    ],
)
def test_common_spellings_become_the_shipped_async_drivers(typed: str, expected: str) -> None:
    assert make_url(async_url(typed)).render_as_string(hide_password=False) == expected


def test_the_listen_connection_keeps_the_ssl_mode() -> None:
    """LISTEN connects with a plain asyncpg DSN, where the mode is `sslmode` (an unknown `ssl`
    query parameter would be sent to the server as a setting and refused)."""
    url = async_url("postgres://u@db/w?sslmode=verify-full")
    assert listen_dsn(url) == "postgresql://u@db/w?sslmode=verify-full"
    assert listen_dsn(async_url("sqlite:///x.db")) is None


@pytest.mark.parametrize(
    "typed",
    [
        f"mysql://root:{PASSWORD}@db/w",
        f"postgresql+foo://u:{PASSWORD}@db/w",
        f"oracle+cx_oracle://u:{PASSWORD}@db/w",
        "not a url",
        "",
        f"://u:{PASSWORD}@db",
    ],
)
def test_an_unusable_url_is_one_line_naming_the_accepted_forms(typed: str) -> None:
    with pytest.raises(DatabaseUrlError) as refused:
        async_url(typed)
    text = str(refused.value)
    assert "\n" not in text
    assert PASSWORD not in text
    assert "postgresql+asyncpg://" in text
    assert "sqlite+aiosqlite://" in text


def test_serve_on_plain_sqlite_url_starts(tmp_path: Path) -> None:
    ok, err = serves("--database-url", f"sqlite:///{tmp_path / 'x.db'}")
    assert ok, err[-3000:]
    assert "Traceback" not in err
    assert (tmp_path / "x.db").is_file()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_serve_on_a_sync_postgres_url_uses_asyncpg(silent_port: int, scheme: str) -> None:
    """The database never answers: the line is asyncpg's timeout, not a missing psycopg module."""
    done = run_cli(*SERVE, "--database-url", f"{scheme}://guard:{PASSWORD}@127.0.0.1:{silent_port}/wapiguard")
    assert done.returncode == 1
    line = one_line(done)
    assert line == f"wapi-guard: database at 127.0.0.1:{silent_port}/wapiguard did not answer within 1 s (migrations)"
    assert PASSWORD not in done.stderr + done.stdout


@pytest.mark.skipif(not POSTGRES_URL, reason="needs WAPIGUARD_TEST_DATABASE_URL (PostgreSQL)")
def test_serve_on_a_real_postgres_with_the_postgres_scheme_starts() -> None:
    plain = make_url(POSTGRES_URL).set(drivername="postgres").render_as_string(hide_password=False)
    ok, err = serves("--database-url", plain)
    assert ok, err[-3000:]


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize("url", [f"mysql://root:{PASSWORD}@127.0.0.1/w", "nonsense"])
def test_serve_and_migrate_refuse_an_unusable_url_in_one_line(command: str, url: str) -> None:
    args = SERVE if command == "serve" else ("migrate", "--db-connect-timeout", "1")
    started = time.monotonic()
    done = run_cli(*args, "--database-url", url)
    assert done.returncode == 1
    line = one_line(done)
    assert "postgresql+asyncpg://" in line, line
    assert "sqlite+aiosqlite://" in line, line
    assert PASSWORD not in done.stderr + done.stdout
    assert time.monotonic() - started < 30
