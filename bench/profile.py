"""`python -m bench --profile DIR`: py-spy samples of the wapi-guard server during each scenario.

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
    """One py-spy recording of one process; stop() ends it and returns the summary."""

    def __init__(self, pid: int, output: Path, rate: int = 200) -> None:
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None
        # The venv's bin first: `.venv/bin/python -m bench` runs without the venv on PATH.
        exe = shutil.which(
            "py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        )
        if exe is None:
            print("bench: py-spy not found (pip install py-spy); no profile recorded")
            return
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--nonblocking",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(2)  # SIGINT: py-spy writes the file and exits
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return ""
        return summarize(self.output) if self.output.exists() else ""


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
