"""The CI bench guard's rule: a ratio more than the tolerance below its recorded figure fails."""

from __future__ import annotations

import json

from bench.guard import FIGURES, SHORT, verdict

RECORDED = {"blocked": 0.5, "status": 0.5, "healthy": 0.2}


def test_run_to_run_noise_passes() -> None:
    for factor in (0.8, 1.0, 1.2):  # ±20 %: this machine's noise
        assert verdict({k: v * factor for k, v in RECORDED.items()}, RECORDED, 0.35) == []


def test_a_doubled_cost_fails_even_on_a_lucky_run() -> None:
    for factor in (0.5, 0.5 * 1.2):  # half the ratio, measured 20 % high
        assert verdict({**RECORDED, "status": RECORDED["status"] * factor}, RECORDED, 0.35) == ["status"]


def test_a_scenario_that_did_not_run_fails() -> None:
    assert verdict({"blocked": 0.5, "status": 0.5}, RECORDED, 0.35) == ["healthy"]


def test_the_recorded_figures_name_every_hot_path_and_are_ratios() -> None:
    figures = json.loads(FIGURES.read_text())
    assert set(figures["ratios"]) == set(SHORT.values())
    assert all(0 < v <= 1.5 for v in figures["ratios"].values())
    assert 0 < figures["tolerance"] < 1
