"""`python -m bench --profile DIR`: py-spy samples of the wapi-guard server during each scenario:
one flame graph (`<db>-<scenario>.svg`, py-spy's own renderer) and the raw collapsed stacks
(`<db>-<scenario>.txt`, summarized in the bench's output) per scenario.

Why: the issue asks for the obstacles in profiles, not guesses. py-spy attaches to the server
process from outside (no change to the code under test); it needs ptrace rights (root, or
`kernel.yama.ptrace_scope=0`). Each scenario gets a raw (collapsed-stack) file and a short
summary of where the server's samples went. Run the server on the asyncio loop for readable
stacks (`WAPIGUARD_EVENT_LOOP=asyncio`): uvloop's callbacks show up as one opaque frame.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

_FRAME_FILE = re.compile(r" \((?:/[^)]*/)?([^/)]+/[^/)]+\.py)(?::\d+)?\)")
_LINE = re.compile(r":\d+\)$")
# Frames every sample of a thread passes through: left out of the inclusive list.
_PLUMBING = re.compile(
    r"^(_run_module_as_main|_run_code|<module>|main \(services/cli|run \(adapters/runtime|Runner\.run|"
    r"BaseEventLoop\.(run_until_complete|run_forever|_run_once)|Handle\._run|Thread\.(_bootstrap|_bootstrap_inner|run))"
)


class Profiler:
    """py-spy recordings of one process (a raw one and a flame graph); stop() ends them and
    returns the summary. `output` is the raw file; the SVG goes beside it."""

    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None
        self.svg: subprocess.Popen[bytes] | None = None
        # The venv's bin first: `.venv/bin/python -m bench` runs without the venv on PATH.
        exe = shutil.which(
            "py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        )
        if exe is None:
            print("bench: py-spy not found (pip install py-spy); no profile recorded")
            return

        def record(fmt: str, path: Path) -> subprocess.Popen[bytes]:
            # --subprocesses: `serve --workers N` runs its workers as children of the parent.
            command = [exe, "record", "--pid", str(pid), "--format", fmt, "--rate", str(rate)]
            command += ["--nonblocking", "--subprocesses", "--output", str(path)]
            return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        self.proc = record("raw", output)
        self.svg = record("flamegraph", output.with_suffix(".svg"))

    def stop(self) -> str:
        if self.proc is None:
            return ""
        ok = True
        for proc in (self.proc, self.svg):
            if proc is None:
                continue
            proc.send_signal(2)  # SIGINT: py-spy writes the file and exits
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                ok = False
        return summarize(self.output) if ok and self.output.exists() else ""


def summarize(path: Path, top: int = 12) -> str:
    """Share of samples per function: inclusive (on the stack, event-loop plumbing left out) and
    self (on top; `Handle._run` self is C work run from loop callbacks, i.e. gRPC's core)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_FRAME_FILE.sub(r" (\1)", _LINE.sub(")", frame)) for frame in stack.split(";")]
        for frame in set(frames):
            if not _PLUMBING.match(frame):
                inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return ""
    lines = [f"  {path.name}: {total} samples", "  inclusive:"]
    lines += [f"    {100 * n / total:5.1f}% {f}" for f, n in inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"    {100 * n / total:5.1f}% {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


# Where a sample's CPU goes, by part of the request's path: the first category (in this order)
# with a frame on the sample's stack takes the sample. "gRPC + event loop" is what is left: grpc's
# core (framing, HTTP/2, protobuf decode/encode of the call), the loop, and the servicers' glue.
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("outbound fan-out", r"\((services/app/outbound|adapters/persistence/webhook_store)\.py"),
        ("change feed (tail, LISTEN wake-up)", r"\((services/app/events|adapters/persistence/listen)\.py"),
        ("change-log rows (build, append)", r"\(adapters/persistence/changelog\.py"),
        ("tracing", r"\((opentelemetry/(trace|sdk/trace|context)|services/observability/telemetry)"),
        ("logging", r"\((logging/__init__|services/observability/logs)\.py"),
        ("metrics", r"\((opentelemetry/sdk/metrics|services/observability/metrics)"),
        ("auth", r"\((services/rpc/auth|services/app/principals)\.py"),
        ("validation", r"\((statemachine/(validation|phone)\.py|phonenumbers/)"),
        ("preflight (health cache, block rule)", r"\((services/app/health|statemachine/preflight)\.py"),
        ("webhook parse", r"\((adapters/wapi/(webhooks|contract)\.py|orjson)"),
        ("provider HTTP call", r"\((adapters/wapi/|aiohttp/|httpx/|yarl/|multidict/)"),
        ("storage (statements, driver, pool)", r"\((adapters/persistence/|sqlalchemy/|asyncpg/|aiosqlite/|sqlite3/)"),
        ("state machines, status plan", r"\(statemachine/"),
        # `abort` itself is grpc sending the status (framing), like a normal response's send.
        (
            "errors → rich status",
            r"(status_for|build_status|_localized|locale_of) \(services/rpc/errors\.py|\(grpc_status/",
        ),
        ("use case (sending/ingest), mapping", r"\((services/app/|services/rpc/mapping\.py|adapters/wapi/webhooks)"),
    )
)
OTHER = "gRPC framing, servicer glue, event loop"


def breakdown(path: Path) -> dict[str, float]:
    """Share of the samples (0..1) per category of CATEGORIES (and OTHER)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        for name, pattern in CATEGORIES:
            if pattern.search(stack):
                counts[name] += n
                break
        else:
            counts[OTHER] += n
    return {name: counts[name] / total for name in [*(c for c, _ in CATEGORIES), OTHER]} if total else {}
