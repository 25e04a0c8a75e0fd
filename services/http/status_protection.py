"""The status page's view of what protects each number: the send policy's budgets used of their
limits, the warm-up day and the opt-out count (the card's row and the JSON snapshot's object)."""

from __future__ import annotations

from typing import Any

from services.app.send_protection import Protection
from services.i18n import STATUS_PAGE_TEXTS


def text(lang: str, key: str) -> str:
    return STATUS_PAGE_TEXTS[lang][key]


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
