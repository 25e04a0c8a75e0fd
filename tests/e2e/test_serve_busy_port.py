"""`wapi-guard serve` on a port another process holds: the error once, a clean non-zero exit.

Through the real entry point in a separate process: what an operator sees on the terminal.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield int(holder.getsockname()[1])


def serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAPIGUARD_", "OTEL_"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path / 'guard.db'}",
            "--probe-interval",
            "0",
            "--log-format",
            "text",
            *flags,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("which", ["--http-port", "--grpc-port"])
def test_a_busy_port_is_reported_once_and_serve_exits_cleanly(tmp_path: Path, busy_port: int, which: str) -> None:
    other = "--grpc-port" if which == "--http-port" else "--http-port"
    done = serve(tmp_path, which, str(busy_port), other, "0")
    assert done.returncode == 1, done.stderr
    assert "wapiguard serving" not in done.stdout.replace("-", "")
    lines = [line for line in done.stderr.splitlines() if line.startswith("wapi-guard: ")]
    assert len(lines) == 1, done.stderr
    assert str(busy_port) in lines[0]
    assert "Traceback" not in done.stderr, done.stderr
    assert "Event loop is closed" not in done.stderr, done.stderr
