"""The README is the user's manual: its configuration table must match the real settings."""

from __future__ import annotations

import re
from pathlib import Path

from services.cli.main import SERVE_FLAGS
from services.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_with_its_environment_variable() -> None:
    missing = [name for name in Settings.model_fields if f"`WAPIGUARD_{name.upper()}`" not in README]
    assert missing == []


def test_every_serve_flag_is_documented() -> None:
    assert [flag for flag in SERVE_FLAGS if f"`{flag}`" not in README] == []


def test_the_two_commands_are_the_makefile_targets() -> None:
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "make demo" in README
    assert "make test" in README
    assert "\ndemo:" in makefile
    assert "\ntest:" in makefile


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def test_the_readme_opens_with_a_quick_start_that_parses() -> None:
    import shlex

    from adapters.simulator.cli import build_parser as simulator_parser
    from services.cli.main import build_parser

    headings = [line for line in README.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Quick start"
    quick = _section("Quick start")
    assert len(quick.splitlines()) <= 45  # one screen
    assert "make demo" in quick
    assert "http://127.0.0.1:8080/status" in quick
    commands = [
        line.split("#")[0] for line in quick.replace("\\\n", " ").splitlines() if ".venv/bin/wapi-guard " in line
    ]
    assert {shlex.split(c.split(".venv/bin/wapi-guard ", 1)[1])[0] for c in commands} >= {
        "simulator",
        "serve",
        "instances",
        "send",
        "messages",
    }
    for command in commands:
        args = shlex.split(command.split(".venv/bin/wapi-guard ", 1)[1])
        if args[0] == "simulator":
            simulator_parser().parse_args(args[1:])
        else:
            build_parser().parse_args(args)  # a wrong flag exits here (SystemExit)


def test_the_statistics_and_benchmarks_live_in_docs() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    for name in ("stall-detection.md", "benchmarks.md"):
        assert f"](docs/{name})" in README
        assert (docs / name).stat().st_size > 4000
    assert "| scenario " not in README  # the benchmark tables moved
    assert "Latest month run" not in README
    # Every number the README sends to or pairs is canonical (country code 55); the national form
    # appears only where the README explains what input is accepted.
    sends = [line for line in README.splitlines() if re.search(r"--to |--phone |\"to\"|phone_number", line)]
    assert sends
    assert [line for line in sends if re.search(r"(?<![\d])15981121710", line)] == []
