"""The status page's view of what protects each number: the send policy's budgets used of their
limits, the warm-up day and the opt-out count (the card's row and the JSON snapshot's object), the
held messages (from the hold's table) and the send policy's form (status_policy.py stores it)."""

from __future__ import annotations

from html import escape
from typing import Any

from services.app.held_counts import NONE_HELD, Held
from services.app.send_protection import Protection
from services.i18n import STATUS_ACTION_TEXTS, STATUS_PAGE_TEXTS, lookup, reason_label
from statemachine.send_policy import SendPolicy

SECONDS = ("min_interval_seconds", "jitter_seconds")
COUNTS = ("max_per_minute", "new_recipients_per_hour", "new_recipients_per_day", "warmup_start_per_day", "warmup_days")
CLOCKS = ("quiet_start", "quiet_end")


def text(lang: str, key: str) -> str:
    return STATUS_PAGE_TEXTS[lang][key]


def _a(lang: str, key: str) -> str:
    return lookup(STATUS_ACTION_TEXTS, lang, key)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def protection_json(p: Protection | None) -> dict[str, Any] | None:
    if p is None:
        return None
    b = p.budgets
    return {
        "policy_active": b.active,
        "sends_this_minute": b.sends_this_minute,
        "max_per_minute": b.max_per_minute,
        "sends_left_this_minute": b.sends_left,
        "new_recipients_this_hour": b.new_this_hour,
        "new_recipients_per_hour": b.new_per_hour,
        "new_recipients_left_this_hour": b.new_left_this_hour,
        "new_recipients_today": b.new_today,
        "new_recipients_today_budget": b.today_budget,
        "new_recipients_left_today": b.new_left_today,
        "warmup_day": b.warmup_day,
        "warmup_days": b.warmup_days,
        "opt_outs": p.opt_outs,
        "optout_list": p.optout_list,
    }


def protection_text(p: Protection, lang: str) -> str:
    """One line: the budgets used of their limits, the warm-up day, the opt-outs."""
    b = p.budgets
    parts = [] if b.active else [text(lang, "no_policy")]
    for key, used, limit in (
        ("budget_minute", b.sends_this_minute, b.max_per_minute),
        ("budget_hour", b.new_this_hour, b.new_per_hour),
        ("budget_day", b.new_today, b.today_budget),
    ):
        if limit:
            parts.append(text(lang, key).format(used=used, limit=limit))
    if b.warmup_days:
        parts.append(text(lang, "budget_warmup").format(day=b.warmup_day, days=b.warmup_days))
    parts.append(text(lang, "optouts_count").format(n=p.opt_outs))
    return " · ".join(parts)


def held_json(held: dict[str, Held] | None, instance_id: str, lang: str) -> dict[str, Any] | None:
    """The instance's held messages (None: the hold's counts are not wired)."""
    if held is None:
        return None
    h = held.get(instance_id, NONE_HELD)
    return {
        "count": h.count,
        "top_reason": h.top_reason or None,
        "top_reason_text": reason_label(h.top_reason, lang) if h.top_reason else None,
        "reasons": [{"reason": r, "count": n} for r, n in h.reasons],
    }


def held_row(held: dict[str, Held] | None, instance_id: str, lang: str, esc: Any) -> str:
    """The card's row: how many messages wait, and the reason most of them wait for."""
    if held is None:
        return ""
    h = held.get(instance_id, NONE_HELD)
    line = str(h.count)
    if h.top_reason:
        line = text(lang, "held_line").format(n=h.count, reason=reason_label(h.top_reason, lang))
    cls = ' class="warn"' if h.count else ""
    return (
        f'<dt>{esc(text(lang, "held"))}</dt><dd data-role="held" data-count="{h.count}" '
        f'data-reason="{esc(h.top_reason)}"{cls}>{esc(line)}</dd>'
    )


# --- the send policy's form (posted to status_policy.py) -------------------------------------------


def policy_value(policy: SendPolicy, name: str) -> str:
    value = getattr(policy, name)
    if name in CLOCKS:
        return value.strftime("%H:%M") if value is not None else ""
    return f"{value:g}" if value else ""


def policy_form(instance_id: str, shield: Protection, csrf: str, lang: str) -> str:
    """The card's form, filled with the instance's policy now (closed until the operator opens it)."""
    policy, optout_list = shield.policy, shield.optout_list
    inputs = []
    for name in (*SECONDS, *COUNTS):
        step = "0.1" if name in SECONDS else "1"
        inputs.append(
            f'<label>{_e(_a(lang, "p_" + name))}<input name="{name}" type="number" min="0" step="{step}" '
            f'inputmode="decimal" value="{_e(policy_value(policy, name))}" placeholder="0"></label>'
        )
    for name in CLOCKS:
        inputs.append(
            f'<label>{_e(_a(lang, "p_" + name))}<input name="{name}" type="time" '
            f'value="{_e(policy_value(policy, name))}"></label>'
        )
    inputs.append(
        f'<label>{_e(_a(lang, "p_time_zone"))}<input name="time_zone" value="{_e(policy.time_zone)}" '
        'placeholder="America/Sao_Paulo"></label>'
    )
    inputs.append(f'<label>{_e(_a(lang, "p_optout_list"))}<input name="optout_list" value="{_e(optout_list)}"></label>')
    checked = " checked" if policy.release_requires_confirmation else ""
    inputs.append(
        f'<label class="check"><input name="release_requires_confirmation" type="checkbox" value="1"{checked}>'
        f"{_e(_a(lang, 'p_release_requires_confirmation'))}</label>"
    )
    return (
        f'<details class="policy-form" data-role="policy-form"><summary>{_e(_a(lang, "policy"))}</summary>'
        f'<form method="post" action="/status/instances/{_e(instance_id)}/send-policy" data-action="send-policy">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}"><input type="hidden" name="lang" value="{lang}">'
        f'<p class="muted">{_e(_a(lang, "policy_hint"))}</p><div class="fields">{"".join(inputs)}</div>'
        f'<button type="submit" name="save" value="1">{_e(_a(lang, "policy_save"))}</button> '
        f'<button type="submit" name="clear" value="1" formnovalidate>{_e(_a(lang, "policy_clear"))}</button>'
        "</form></details>"
    )
