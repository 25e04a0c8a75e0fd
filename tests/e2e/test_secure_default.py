"""`wapi-guard serve` is not open to the network by default: on a non-loopback address it refuses
to start without API tokens and a webhook secret, in one line that says what is missing and which
flags or variables set it, unless --insecure (WAPIGUARD_INSECURE) is given. Loopback stays open,
with one warning line. Through the real entry point in a separate process, as an operator sees it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.rpc.exposure import is_loopback

ROOT = Path(__file__).resolve().parents[2]
TOKENS = "crm:tok-0123456789abcdef"
SECRET = "hook-secret-0123456789"


def base_args(tmp_path: Path, host: str) -> list[str]:
    return [
        "serve",
        "--host",
        host,
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--probe-interval",
        "0",
        "--reconcile-interval",
        "0",
        "--log-format",
        "json",
        "--database-url",
        f"sqlite+aiosqlite:///{tmp_path / 'guard.db'}",
    ]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAPIGUARD_", "OTEL_"))}
    return {**env, **extra}


def start(args: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """(serving line or "", stderr, exit code): stops the server with SIGTERM once it serves."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line.startswith("wapi-guard serving"):
            proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
        return line, err, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def refusal(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("wapi-guard: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def warnings_(err: str) -> list[str]:
    out = []
    for line in err.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") in ("WARNING", "warning"):
            out.append(str(record.get("msg", "")))
    return out


@pytest.mark.parametrize(
    ("flags", "env", "missing", "present"),
    [
        ([], {}, ["--api-tokens", "WAPIGUARD_API_TOKENS", "--webhook-secret", "WAPIGUARD_WEBHOOK_SECRET"], []),
        (["--api-tokens", TOKENS], {}, ["--webhook-secret", "WAPIGUARD_WEBHOOK_SECRET"], ["--api-tokens"]),
        ([], {"WAPIGUARD_WEBHOOK_SECRET": SECRET}, ["--api-tokens", "WAPIGUARD_API_TOKENS"], ["--webhook-secret"]),
    ],
)
def test_a_network_address_without_tokens_or_secret_is_refused_in_one_line(
    tmp_path: Path, flags: list[str], env: dict[str, str], missing: list[str], present: list[str]
) -> None:
    line, err, code = start([*base_args(tmp_path, "0.0.0.0"), *flags], clean_env(**env))
    assert line == ""
    assert code == 1
    text = refusal(err)
    assert "0.0.0.0" in text
    for name in missing:
        assert name in text, text
    for name in present:
        assert name not in text, text
    assert "--insecure" in text
    assert "WAPIGUARD_INSECURE" in text
    assert TOKENS.split(":")[1] not in err
    assert SECRET not in err
    assert not (tmp_path / "guard.db").exists(), "refused before anything was opened"


def test_a_network_address_with_tokens_and_secret_serves_closed(tmp_path: Path) -> None:
    args = [*base_args(tmp_path, "0.0.0.0"), "--api-tokens", TOKENS]
    line, err, code = start(args, clean_env(WAPIGUARD_WEBHOOK_SECRET=SECRET))
    assert line.startswith("wapi-guard serving gRPC on 0.0.0.0:"), err[-3000:]
    assert code == 0, err[-3000:]
    assert not [w for w in warnings_(err) if "open" in w.lower()], warnings_(err)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_insecure_serves_openly_on_a_network_address_and_says_so(tmp_path: Path, how: str) -> None:
    args = base_args(tmp_path, "0.0.0.0") + (["--insecure"] if how == "flag" else [])
    env = clean_env(**({"WAPIGUARD_INSECURE": "true"} if how == "env" else {}))
    line, err, code = start(args, env)
    assert line.startswith("wapi-guard serving gRPC on 0.0.0.0:"), err[-3000:]
    assert code == 0, err[-3000:]
    (warning,) = [w for w in warnings_(err) if "open" in w.lower()]
    assert "--api-tokens" in warning
    assert "--webhook-secret" in warning


def test_loopback_stays_open_with_one_warning_line(tmp_path: Path) -> None:
    line, err, code = start(base_args(tmp_path, "127.0.0.1"), clean_env())
    assert line.startswith("wapi-guard serving gRPC on 127.0.0.1:"), err[-3000:]
    assert code == 0, err[-3000:]
    (warning,) = [w for w in warnings_(err) if "open" in w.lower()]
    assert "loopback" in warning


def test_without_the_http_bridge_no_webhook_secret_is_needed(tmp_path: Path) -> None:
    args = [*base_args(tmp_path, "0.0.0.0"), "--http-port", "-1", "--api-tokens", TOKENS]
    line, err, _code = start(args, clean_env())
    assert line.startswith("wapi-guard serving gRPC on 0.0.0.0:"), err[-3000:]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("10.0.0.1", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
