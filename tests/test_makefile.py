"""The README's two commands on a fresh clone: `make demo` installs the runtime only, says what it
is doing while the user waits, and `make test` still gets the dev tools. Read with `make -n` (dry run)
against a venv path that does not exist: exactly what a first run would execute."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def first_run(target: str, tmp_path: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # Run as a top-level make even when the suite itself runs under `make test` (CI): a sub-make
    # prints "Entering/Leaving directory" lines around its output.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={tmp_path / 'fresh-venv'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def test_demo_installs_the_runtime_only_and_shows_progress(tmp_path: Path) -> None:
    lines = first_run("demo", tmp_path)
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert installs, lines
    assert not any("[dev]" in line for line in installs), installs
    assert not any("--quiet" in line or " -q " in line for line in installs), installs
    announced = next(i for i, line in enumerate(lines) if line.startswith("echo"))
    assert announced < lines.index(installs[0])
    assert lines[-1].endswith("wapi-guard demo")


def test_test_still_installs_the_dev_tools(tmp_path: Path) -> None:
    lines = first_run("test", tmp_path)
    assert any("pip install" in line and "'.[dev]'" in line for line in lines), lines
    assert lines[-1].endswith("pytest -q")
