"""The README's configuration table lists exactly the `serve` flags, their variables and defaults."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from services.app.gateway_config import GatewayConfig
from services.app.outbound import OutboundConfig
from services.app.recovery import RecoveryConfig
from services.bootstrap import outbound_config, recovery_config
from services.cli.main import build_parser, settings_from
from services.config import Settings
from services.core_wiring import gateway_config

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(--[a-z0-9-]+)` \| `(WAPIGUARD_[A-Z0-9_]+)` \| ([^|]+) \|", re.MULTILINE)


def serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["serve"]
    return parser


def serve_flags() -> dict[str, tuple[str, Any]]:
    """flag → (environment variable, default), from the real parser and settings."""
    out: dict[str, tuple[str, Any]] = {}
    for action in serve_parser()._actions:
        if action.dest not in Settings.model_fields:
            continue
        for flag in action.option_strings:
            out[flag] = (f"WAPIGUARD_{action.dest.upper()}", Settings.model_fields[action.dest].default)
    return out


def readme_rows() -> dict[str, tuple[str, str]]:
    return {flag: (env, default.strip()) for flag, env, default in ROW.findall(README.read_text(encoding="utf-8"))}


def test_every_setting_is_a_serve_flag() -> None:
    dests = {a.dest for a in serve_parser()._actions}
    assert set(Settings.model_fields) <= dests


def test_readme_lists_exactly_the_serve_flags_and_their_variables() -> None:
    flags = serve_flags()
    rows = readme_rows()
    assert sorted(rows) == sorted(flags)
    for flag, (env, _default) in flags.items():
        assert rows[flag][0] == env, flag


def _matches(cell: str, default: Any) -> bool:
    if default is None:
        return cell.startswith("unset")
    value = cell.split("`")[1] if "`" in cell else cell
    if isinstance(default, bool):
        return value == ("true" if default else "false")
    if isinstance(default, int | float):
        return float(value) == float(default)
    return bool(value == str(default))


@pytest.mark.parametrize("flag", sorted(serve_flags()))
def test_readme_defaults_are_the_real_defaults(flag: str) -> None:
    _env, default = serve_flags()[flag]
    assert _matches(readme_rows()[flag][1], default), flag


@pytest.mark.parametrize("flag", sorted(serve_flags()))
def test_every_documented_flag_is_accepted(flag: str) -> None:
    args = build_parser().parse_args(["serve", flag] + ([] if _is_switch(flag) else [_sample(flag)]))
    settings_from(args)


def test_closed_health_closes_health() -> None:
    assert settings_from(build_parser().parse_args(["serve", "--closed-health"])).auth_open_health is False
    assert settings_from(build_parser().parse_args(["serve"])).auth_open_health is True


def _is_switch(flag: str) -> bool:
    action = next(a for a in serve_parser()._actions if flag in a.option_strings)
    return action.nargs == 0


# Unset flags whose value is validated get a well-formed sample.
_SAMPLES = {"--public-url": "https://guard.example.com"}


def _sample(flag: str) -> str:
    _env, default = serve_flags()[flag]
    return _SAMPLES.get(flag, "x") if default is None else str(default)


def test_use_case_configs_default_to_the_settings_defaults() -> None:
    """The use cases' own config defaults (tests, benchmarks) are the ones `serve` starts with."""
    defaults = Settings.model_construct()  # declared defaults, no environment
    assert gateway_config(defaults) == GatewayConfig()
    assert recovery_config(defaults) == RecoveryConfig()
    assert outbound_config(defaults) == OutboundConfig()


def test_default_database_is_the_engine_default() -> None:
    from adapters.persistence.db import DEFAULT_URL

    assert Settings.model_fields["database_url"].default == DEFAULT_URL
