"""`wapi-guard serve --workers 2` through the real entry point: both workers take connections on
the one port and answer; SIGTERM to the parent ends every worker cleanly. SQLite is refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from services.api.wapiguard.v1 import instance_health_pb2, instance_health_pb2_grpc
from tests.conftest import POSTGRES_URL, reset_postgres

ROOT = Path(__file__).resolve().parents[2]
SERVING = re.compile(
    r"serving gRPC on 127\.0\.0\.1:(\d+), webhook bridge on http://127\.0\.0\.1:(\d+) .*pids ([\d ]+)\)"
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("WAPIGUARD_", "OTEL_"))}


def _command(database_url: str, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--database-url",
        database_url,
        "--probe-interval",
        "0",
        "--log-level",
        "WARNING",
        "--log-format",
        "text",
        *flags,
    ]


def _established(pid: int, port: int) -> int:
    """TCP connections accepted on `port` that process `pid` holds open (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int, list[int]]]:
    if not POSTGRES_URL:
        pytest.skip("--workers serves PostgreSQL only (set WAPIGUARD_TEST_DATABASE_URL)")
    import asyncio

    asyncio.run(reset_postgres(POSTGRES_URL))
    proc = subprocess.Popen(
        _command(POSTGRES_URL, "--workers", "2"),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = SERVING.search(line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        pids = [int(p) for p in match.group(3).split()]
        yield proc, int(match.group(1)), int(match.group(2)), pids
    finally:
        if proc.poll() is None:
            proc.kill()  # the workers get SIGTERM from the kernel (parent-death signal)
        proc.wait(30)


def test_two_workers_share_the_ports_answer_and_stop_cleanly_on_sigterm(
    workers: tuple[subprocess.Popen[str], int, int, list[int]],
) -> None:
    proc, grpc_port, http_port, pids = workers
    assert len(pids) == 2
    assert proc.pid not in pids

    async def calls() -> dict[int, int]:
        # Separate connections (distinct channel arguments): the kernel spreads them over the workers.
        channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.channel_id", i)]) for i in range(24)
        ]
        try:
            for i, channel in enumerate(channels):
                stub = instance_health_pb2_grpc.InstanceHealthServiceStub(channel)
                request = instance_health_pb2.RegisterInstanceRequest(instance_id=f"W{i}", name=f"w{i}", token=f"t{i}")
                await stub.RegisterInstance(request, timeout=10)
                listed = await stub.ListInstances(instance_health_pb2.ListInstancesRequest(), timeout=10)
                assert f"W{i}" in {item.instance_id for item in listed.instances}  # one shared database
            return {pid: _established(pid, grpc_port) for pid in pids}
        finally:
            for channel in channels:
                await channel.close()

    import asyncio

    held = asyncio.run(calls())
    assert sum(held.values()) == 24, held
    assert all(n > 0 for n in held.values()), f"a worker took no connection: {held}"
    # The HTTP port is shared the same way: every request is answered.
    for _ in range(10):
        with httpx.Client(timeout=5) as client:  # a new connection each time
            assert client.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    for pid in pids:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the parent"
    assert proc.stderr is not None
    errors = proc.stderr.read()
    assert "Traceback" not in errors, errors


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    done = subprocess.run(
        _command(f"sqlite+aiosqlite:///{tmp_path / 'guard.db'}", "--workers", "2"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "serving" not in done.stdout
    assert "--workers needs PostgreSQL" in done.stderr, done.stderr
    assert not (tmp_path / "guard.db").exists()  # refused before anything was created
