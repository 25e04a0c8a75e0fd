"""The send side's pure rules: the send policy (pacing, per-minute cap, new-recipient budgets, warm-up,
quiet hours) and the opt-out keyword match."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from statemachine.domain import Reason
from statemachine.optout import DEFAULT_KEYWORDS, is_opt_out, keyword_set
from statemachine.send_policy import (
    PolicyCounters,
    SendPolicy,
    consume,
    daily_new_budget,
    decide,
    validate_policy,
)

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def _run(policy: SendPolicy, sends: int, *, new: bool, step: timedelta, anchor: datetime | None = None) -> list[str]:
    """Tries `sends` sends `step` apart; the reasons (or "ok") in order."""
    counters = PolicyCounters()
    out: list[str] = []
    for i in range(sends):
        now = T0 + step * i
        verdict = decide(policy, counters, now, new_recipient=new, warmup_anchor=anchor)
        if verdict.allowed:
            counters = consume(policy, counters, now, new_recipient=new, jitter_fraction=0.5)
            out.append("ok")
        else:
            assert verdict.retry_after > 0
            out.append(verdict.reason.value if verdict.reason else "")
    return out


def test_no_policy_passes_everything_unchanged() -> None:
    assert _run(SendPolicy(), 500, new=True, step=timedelta(0)) == ["ok"] * 500
    assert not SendPolicy(time_zone="America/Sao_Paulo").active


def test_min_interval_with_jitter_says_when() -> None:
    policy = SendPolicy(min_interval_seconds=2, jitter_seconds=2)
    counters = consume(policy, PolicyCounters(), T0, new_recipient=False, jitter_fraction=0.5)
    verdict = decide(policy, counters, T0 + timedelta(seconds=1), new_recipient=False)
    assert verdict.reason is Reason.SEND_INTERVAL
    assert verdict.retry_after == 2.0  # 2 s floor + 0.5 × 2 s jitter − 1 s elapsed
    assert decide(policy, counters, T0 + timedelta(seconds=3), new_recipient=False).allowed


def test_cap_per_minute_resets_with_the_next_minute() -> None:
    policy = SendPolicy(max_per_minute=3)
    counters = PolicyCounters()
    for _ in range(3):
        counters = consume(policy, counters, T0, new_recipient=False, jitter_fraction=0)
    verdict = decide(policy, counters, T0 + timedelta(seconds=20), new_recipient=False)
    assert (verdict.reason, verdict.retry_after, verdict.limit) == (Reason.SEND_RATE_PER_MINUTE, 40.0, 3)
    assert decide(policy, counters, T0 + timedelta(seconds=60), new_recipient=False).allowed


def test_new_recipient_budgets_spare_known_recipients() -> None:
    policy = SendPolicy(new_recipients_per_hour=5, new_recipients_per_day=8)
    assert _run(policy, 7, new=True, step=timedelta(seconds=1)) == ["ok"] * 5 + ["NEW_RECIPIENTS_HOURLY"] * 2
    assert _run(policy, 50, new=False, step=timedelta(seconds=1)) == ["ok"] * 50
    hourly = _run(policy, 10, new=True, step=timedelta(minutes=20))
    assert hourly.count("ok") == 8
    assert hourly[-1] == "NEW_RECIPIENTS_DAILY"


def test_warm_up_ramp_climbs_from_start_to_target() -> None:
    policy = SendPolicy(new_recipients_per_day=100, warmup_start_per_day=20, warmup_days=4)
    budgets = [daily_new_budget(policy, T0 + timedelta(days=d), T0) for d in range(6)]
    assert budgets == [20, 40, 60, 80, 100, 100]
    assert daily_new_budget(policy, T0, None) == 100  # no anchor: an established number
    day0 = _run(policy, 30, new=True, step=timedelta(seconds=1), anchor=T0)
    assert day0.count("ok") == 20
    assert day0[-1] == "NEW_RECIPIENTS_DAILY"


def test_quiet_hours_in_the_instance_time_zone_across_midnight() -> None:
    policy = SendPolicy(quiet_start=time(21, 0), quiet_end=time(8, 0), time_zone="America/Sao_Paulo")
    # 12:00 UTC is 09:00 in São Paulo (UTC−3): allowed; 01:00 UTC is 22:00 there: quiet until 08:00.
    assert decide(policy, PolicyCounters(), T0, new_recipient=True).allowed
    verdict = decide(policy, PolicyCounters(), T0.replace(hour=1), new_recipient=True)
    assert verdict.reason is Reason.QUIET_HOURS
    assert verdict.retry_after == 10 * 3600


def test_validation_names_the_bad_fields() -> None:
    bad = SendPolicy(min_interval_seconds=-1, warmup_days=3, quiet_start=time(1), time_zone="Mars/Base")
    fields = {field for field, _ in validate_policy(bad)}
    assert fields == {"min_interval_seconds", "warmup_days", "quiet_hours", "time_zone"}
    assert validate_policy(SendPolicy(new_recipients_per_day=50, warmup_start_per_day=10, warmup_days=7)) == []


def test_opt_out_keywords_match_the_whole_message_without_case_accents_or_punctuation() -> None:
    keywords = keyword_set(DEFAULT_KEYWORDS)
    for text in ("SAIR", "sair", "Sáir!", "  PARAR. ", "stop", "Cancelar!!", "“sair”"):
        assert is_opt_out(text, keywords), text
    for other in ("quero sair daqui", "não pare", "", None, "sairr", "STOP STOP"):
        assert not is_opt_out(other, keywords), other
    assert is_opt_out("Descadastrar", keyword_set(["descadastrar", " "]))
