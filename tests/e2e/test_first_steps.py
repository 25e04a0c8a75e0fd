"""What a new user meets first, through the real `wapi-guard` entry point: `--version`, a top-level
help that lists every command, and `serve` printing the status page URL, with `/` leading there."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from services.cli.main import build_parser
from services.cli.operator import OPERATOR_COMMANDS

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("WAPIGUARD_", "OTEL_"))}


def wapi_guard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_and_a_help_that_names_every_command() -> None:
    version, helped = wapi_guard("--version"), wapi_guard("--help")
    assert version.returncode == 0
    assert re.fullmatch(r"wapi-guard \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    assert helped.returncode == 0
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = set(sub.choices)
    assert commands >= OPERATOR_COMMANDS | {"serve", "migrate", "simulator", "demo"}
    description = helped.stdout.split("positional arguments:")[0]
    assert [c for c in sorted(commands) if not re.search(rf"\b{re.escape(c)}\b", description)] == []


def test_serve_prints_the_status_page_and_root_leads_there(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [
            sys.executable, "-m", "services.cli", "serve", "--host", "127.0.0.1", "--grpc-port", "0",
            "--http-port", "0", "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'guard.db'}",
            "--probe-interval", "0", "--log-format", "text",
        ],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    killer = threading.Timer(60, server.kill)  # a start that hangs must not hang the suite
    killer.start()
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(r"status page (http://127\.0\.0\.1:\d+/status)\b", line)
        assert match, line + (server.stderr.read() if server.poll() is not None and server.stderr else "")
        page_url = match.group(1)
        root = page_url.removesuffix("/status") + "/"
        first = httpx.get(root, timeout=10)
        assert first.status_code == 302
        assert first.headers["location"] == "/status"
        followed = httpx.get(root, timeout=10, follow_redirects=True)
        assert followed.status_code == 200
        assert str(followed.url) == page_url
        assert "wapi-guard" in followed.text
    finally:
        killer.cancel()
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
