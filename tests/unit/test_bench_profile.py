"""The benchmark's profile summary: shares of py-spy samples per function."""

from __future__ import annotations

from pathlib import Path

from bench.profile import summarize


def test_summary_counts_inclusive_and_self_shares_without_loop_plumbing(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        "Handle._run (asyncio/events.py:80);Gateway.send (/x/services/core.py:390);"
        "Repository.insert_message (/x/adapters/persistence/repository.py:533) 3\n"
        "Handle._run (asyncio/events.py:80);Gateway.send (/x/services/core.py:391) 1\n"
        "not a sample line\n"
    )
    text = summarize(raw)
    assert "p.txt: 4 samples" in text
    inclusive, own = text.split("  self:")
    assert "100.0% Gateway.send (services/core.py)" in inclusive  # both lines of the function merged
    assert " 75.0% Repository.insert_message (persistence/repository.py)" in inclusive
    assert "Handle._run" not in inclusive
    assert " 75.0% Repository.insert_message" in own
    assert " 25.0% Gateway.send" in own


def test_an_empty_recording_has_no_summary(tmp_path: Path) -> None:
    raw = tmp_path / "empty.txt"
    raw.write_text("")
    assert summarize(raw) == ""


def test_breakdown_gives_each_sample_to_the_first_matching_part(tmp_path: Path) -> None:
    from bench.profile import OTHER, breakdown

    raw = tmp_path / "p.txt"
    raw.write_text(
        "Runner.run (asyncio/runners.py:1);Sending.send (services/app/sending.py:1);"
        "append_rows (adapters/persistence/changelog.py:85);execute (sqlalchemy/engine/base.py:1) 2\n"
        "Runner.run (asyncio/runners.py:1);Sending.send (services/app/sending.py:1) 1\n"
        "Runner.run (asyncio/runners.py:1) 1\n"
    )
    shares = breakdown(raw)
    assert shares["change-log rows (build, append)"] == 0.5  # before storage in the order
    assert shares["use case (sending/ingest), mapping"] == 0.25
    assert shares[OTHER] == 0.25
    assert abs(sum(shares.values()) - 1) < 1e-9
