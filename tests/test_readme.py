"""The README is the user's manual: its configuration table must match the real settings."""

from __future__ import annotations

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
