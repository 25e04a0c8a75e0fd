"""The status page's views: the snapshot as JSON (the API) and as HTML (the page, its live
sections and the action forms on each card). All text is rendered and escaped here, once, in the
operator's words (services/i18n holds the vocabulary); the browser only swaps fragments and ticks
relative times.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

from services.app.subscriptions import display_url
from services.http.status_protection import held_json, held_row, policy_form, protection_json, protection_text
from services.http.status_snapshot import REFRESH_SECONDS, ChangeRow, Snapshot, is_stuck, summary
from services.i18n import (
    MESSAGE_TONES,
    STATUS_ACTION_TEXTS,
    STATUS_PAGE_TEXTS,
    ago,
    duration,
    iso,
    lookup,
    mask_recipient,
    message_label,
    provider_label,
    reason_label,
    source_label,
    state_view,
    time_units,
)
from statemachine.domain import InstanceRecord, MessageRecord
from statemachine.ports import SubscriptionRecord, SubscriptionStats


def text(lang: str, key: str) -> str:
    """A text of the status page in `lang`."""
    return STATUS_PAGE_TEXTS[lang][key]


def action_text(lang: str, key: str, /, **values: str) -> str:
    """A text of the status page's actions in `lang` (formatted with `values`)."""
    return lookup(STATUS_ACTION_TEXTS, lang, key, **values)


def esc(value: object) -> str:
    """HTML-escaped, quotes included (safe in an attribute)."""
    return escape(str(value), quote=True)


_t = text
_a = action_text
_e = esc


def snapshot_json(snap: Snapshot, lang: str) -> dict[str, Any]:
    """The snapshot API: machine codes plus the operator's labels in `lang`. Recipients masked."""
    return {
        "generated_at": iso(snap.generated_at),
        "lang": lang,
        "summary": summary(snap),
        "instances": [_instance_json(snap, r, lang) for r in snap.instances],
        "messages": [_message_json(snap, m, lang) for m in snap.messages],
        "changes": [_change_json(snap, row, lang) for row in snap.changes],
        "webhooks": [_webhook_json(sub, stats, snap.generated_at) for sub, stats in snap.webhooks],
        "event_streams": (
            None
            if snap.event_streams is None
            else {"open": snap.event_streams[0], "cut_off_too_slow": snap.event_streams[1]}
        ),
    }


def _instance_json(snap: Snapshot, r: InstanceRecord, lang: str) -> dict[str, Any]:
    health = snap.view(r, lang)
    view = state_view(r.state.value, health.reason, lang)
    return {
        "instance_id": r.instance_id,
        "name": r.name,
        "phone_number": r.phone_number or None,
        "plan": r.plan.value,
        "provider": r.provider,
        "provider_label": provider_label(r.provider),
        "state": r.state.value,
        "reason": health.reason,
        "label": view.label,
        "tone": view.tone,
        "reason_text": reason_label(health.reason, lang),
        "can_send": health.can_send,
        "delivery_confirmable": health.delivery_confirmable,
        "webhooks": health.webhooks,
        "next_step": health.next_step,
        "state_changed_at": iso(r.state_changed_at),
        "checked_at": iso(r.checked_at),
        "last_event_at": iso(r.last_event_at),
        "stuck_messages": r.stuck_messages,
        "protection": protection_json(snap.protection.get(r.instance_id)),
        "held": held_json(snap.held, r.instance_id, lang),
    }


def _message_json(snap: Snapshot, m: MessageRecord, lang: str) -> dict[str, Any]:
    stuck = is_stuck(m)
    reason = m.failure_reason or ("STUCK" if stuck else "")
    now = snap.generated_at
    return {
        "id": m.id,
        "instance_id": m.instance_id,
        "instance_name": snap.names.get(m.instance_id, m.instance_id),
        "to": mask_recipient(m.to),
        "kind": m.kind.value,
        "state": m.state.value,
        "stuck": stuck,
        "label": message_label(m.state.value, stuck, lang),
        "reason": m.failure_reason,
        "reason_text": reason_label(reason, lang),
        "attempts": m.attempts,
        "created_at": iso(m.created_at),
        "sent_at": iso(m.sent_at),
        "age_seconds": max(0, int((now - m.created_at).total_seconds())),
    }


def _change_json(snap: Snapshot, row: ChangeRow, lang: str) -> dict[str, Any]:
    c = row.change
    to_view = state_view(c.to_state, c.reason, lang)
    from_view = state_view(c.from_state, row.from_reason, lang) if c.from_state else None
    return {
        "instance_id": row.instance_id,
        "instance_name": snap.names.get(row.instance_id, row.instance_id),
        "from_state": c.from_state or None,
        "from_label": from_view.label if from_view else None,
        "to_state": c.to_state,
        "to_label": to_view.label,
        "tone": to_view.tone,
        "reason": c.reason,
        "reason_text": reason_label(c.reason, lang),
        "source": c.source,
        "source_label": source_label(c.source, lang),
        "at": iso(c.at),
    }


def _webhook_json(sub: SubscriptionRecord, stats: SubscriptionStats | None, now: datetime) -> dict[str, Any]:
    return {
        "id": sub.id,
        "url": display_url(sub.url),
        "enabled": sub.enabled,
        "disabled_reason": sub.disabled_reason or None,
        "pending": stats.pending if stats else 0,
        "exhausted": stats.exhausted if stats else 0,
        "lag_seconds": _lag(stats, now),
        "consecutive_failures": sub.consecutive_failures,
        "timeouts": sub.timeouts,
        "refused": sub.refused,
        "last_error": sub.last_error or None,
        "last_failure_at": iso(sub.last_failure_at) if sub.last_failure_at else None,
    }


def _lag(stats: SubscriptionStats | None, now: datetime) -> float:
    if stats is None or stats.oldest_pending_at is None:
        return 0.0
    return round(max(0.0, (now - stats.oldest_pending_at).total_seconds()), 3)


def render_event_streams(snap: Snapshot, lang: str) -> str:
    if snap.event_streams is None:
        return ""
    opened, cut = snap.event_streams
    text = _t(lang, "event_streams").format(open=opened, cut=cut)
    return f'<p id="event-streams" class="{"warn" if cut else "muted"}">{_e(text)}</p>'


def render_webhooks(snap: Snapshot, lang: str) -> str:
    if not snap.webhooks:
        return f'<p class="empty">{_e(_t(lang, "no_webhooks"))}</p>' + render_event_streams(snap, lang)
    keys = ("w_url", "w_enabled", "w_pending", "w_lag", "w_failures", "w_timeouts", "w_refused", "w_last_error")
    head = "".join(f"<th>{_e(_t(lang, k))}</th>" for k in keys)
    label = _labels(lang, keys)
    rows = []
    for sub, stats in snap.webhooks:
        enabled = _t(lang, "w_yes") if sub.enabled else f"{_t(lang, 'w_no')} ({sub.disabled_reason})"
        tone = "green" if sub.enabled and not sub.consecutive_failures else ("red" if not sub.enabled else "yellow")
        rows.append(
            f'<tr data-subscription-id="{_e(sub.id)}">'
            f"<td{label['w_url']}>{_e(display_url(sub.url))}</td><td{label['w_enabled']}>{_badge(enabled, tone)}</td>"
            f"<td{label['w_pending']}>{stats.pending if stats else 0}</td>"
            f"<td{label['w_lag']}>{_e(duration(_lag(stats, snap.generated_at), lang))}</td>"
            f"<td{label['w_failures']}>{sub.consecutive_failures}</td>"
            f"<td{label['w_timeouts']}>{sub.timeouts}</td><td{label['w_refused']}>{sub.refused}</td>"
            f"<td{label['w_last_error']}>{_e(sub.last_error or '—')}</td></tr>"
        )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return table + render_event_streams(snap, lang)


# --- HTML ------------------------------------------------------------------------------------


def _time(at: datetime | None, now: datetime, lang: str, mode: str = "ago") -> str:
    if at is None:
        return "—"
    text = ago(at, now, lang) if mode == "ago" else duration((now - at).total_seconds(), lang)
    stamp = iso(at) or ""
    return f'<time datetime="{stamp}" data-rel="{mode}" title="{stamp}">{_e(text)}</time>'


def _labels(lang: str, keys: Sequence[str]) -> dict[str, str]:
    """` data-label="…"` per column: on a narrow screen each cell shows its column's name (status.css)."""
    return {k: f' data-label="{_e(_t(lang, k))}"' for k in keys}


def _badge(label: str, tone: str) -> str:
    return f'<span class="badge tone-{tone}" data-role="label">{_e(label)}</span>'


def render_summary(snap: Snapshot, lang: str) -> str:
    s = summary(snap)
    items = [
        ("instances", s["instances"], "s_instances", ""),
        ("online", s["online"], "s_online", "tone-green" if s["online"] else ""),
        ("attention", s["attention"], "s_attention", "tone-red" if s["attention"] else ""),
        ("stuck", s["stuck"], "s_stuck", "tone-red" if s["stuck"] else ""),
        ("failed", s["failed"], "s_failed", "tone-yellow" if s["failed"] else ""),
        ("held", s["held"], "s_held", "tone-yellow" if s["held"] else ""),
    ]
    return "".join(
        f'<span class="chip {cls}" data-count="{key}">{_e(_t(lang, label))}: <strong>{n}</strong></span>'
        for key, n, label, cls in items
    )


def render_instances(snap: Snapshot, lang: str) -> str:
    if not snap.instances:
        return f'<p class="empty">{_e(_t(lang, "no_instances"))}</p>'
    now = snap.generated_at
    cards = []
    for r in snap.instances:
        health = snap.view(r, lang)
        view = state_view(r.state.value, health.reason, lang)
        sends = _t(lang, "sends_ok" if health.can_send else "sends_blocked")
        if health.can_send and not health.delivery_confirmable:
            sends = _t(lang, "sends_unconfirmed")
        stuck_cls = ' class="alert"' if r.stuck_messages else ""
        shield = snap.protection.get(r.instance_id)
        protection = (
            f'<dt>{_e(_t(lang, "protection"))}</dt><dd data-role="protection">{_e(protection_text(shield, lang))}</dd>'
            if shield is not None
            else ""
        )
        step = ""
        if health.reason == "WEBHOOKS_UNCONFIGURED":
            step = (
                f'<p class="next-step" data-role="next-step"><strong>{_e(_t(lang, "next_step"))}:</strong> '
                f"{_e(health.next_step)}</p>"
            )
        cards.append(
            f'<article class="card tone-{view.tone}" data-instance-id="{_e(r.instance_id)}" '
            f'data-state="{_e(r.state.value)}" data-reason="{_e(health.reason)}" data-label-key="{view.key}" '
            f'data-webhooks="{_e(health.webhooks)}" data-provider="{_e(r.provider)}">'
            f'<header><h3 class="name">{_e(r.name)}</h3>{_badge(view.label, view.tone)}</header>'
            f'<p class="reason" data-role="reason">{_e(reason_label(health.reason, lang))}</p>{step}'
            "<dl>"
            f'<dt>{_e(_t(lang, "id"))}</dt><dd class="mono">{_e(r.instance_id)}</dd>'
            f'<dt>{_e(_t(lang, "provider"))}</dt><dd data-role="provider">{_e(provider_label(r.provider))}</dd>'
            f'<dt>{_e(_t(lang, "phone"))}</dt><dd class="mono" data-role="phone">{_e(r.phone_number or "—")}</dd>'
            f'<dt>{_e(_t(lang, "sends"))}</dt><dd data-role="sends">{_e(sends)}</dd>'
            f"<dt>{_e(_t(lang, 'changed'))}</dt><dd>{_time(r.state_changed_at, now, lang)}</dd>"
            f"<dt>{_e(_t(lang, 'checked'))}</dt><dd>{_time(r.checked_at, now, lang)}</dd>"
            f'<dt>{_e(_t(lang, "stuck"))}</dt><dd data-role="stuck"{stuck_cls}>{r.stuck_messages}</dd>'
            f"{protection}{held_row(snap.held, r.instance_id, lang, _e)}"
            "</dl>"
            f"{instance_actions(r.instance_id, r.state.value, snap.csrf, lang, r.reason) if snap.csrf else ''}"
            f"{policy_form(r.instance_id, shield, snap.csrf, lang) if shield and snap.policy_form else ''}"
            "</article>"
        )
    return "".join(cards)


def render_messages(snap: Snapshot, lang: str) -> str:
    if not snap.messages:
        return f'<p class="empty">{_e(_t(lang, "no_messages"))}</p>'
    now = snap.generated_at
    keys = ("instance", "to", "state", "reason", "age", "attempts")
    head = "".join(f"<th>{_e(_t(lang, k))}</th>" for k in keys)
    head += "<th></th>"
    label = _labels(lang, keys)
    rows = []
    for m in snap.messages:
        stuck = is_stuck(m)
        reason = m.failure_reason or ("STUCK" if stuck else "")
        tone = MESSAGE_TONES.get("STUCK" if stuck else m.state.value, "slate")
        name = snap.names.get(m.instance_id, m.instance_id)
        actions = message_actions(m.id, snap.csrf, lang) if snap.csrf and m.state.value == "FAILED" else ""
        rows.append(
            f'<tr data-message-id="{_e(m.id)}" data-instance-id="{_e(m.instance_id)}" '
            f'data-state="{_e(m.state.value)}" data-stuck="{"true" if stuck else "false"}">'
            f'<td{label["instance"]}>{_e(name)}<br><span class="mono small">{_e(m.instance_id)}</span></td>'
            f'<td class="mono" data-role="to"{label["to"]}>{_e(mask_recipient(m.to))}</td>'
            f"<td{label['state']}>{_badge(message_label(m.state.value, stuck, lang), tone)}</td>"
            f'<td title="{_e(reason)}"{label["reason"]}>{_e(reason_label(reason, lang))}</td>'
            f"<td{label['age']}>{_time(m.created_at, now, lang, 'age')}</td>"
            f'<td class="num"{label["attempts"]}>{m.attempts}</td>'
            f'<td class="{"actions-cell" if actions else "empty-cell"}">{actions}</td></tr>'
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_changes(snap: Snapshot, lang: str) -> str:
    if not snap.changes:
        return f'<p class="empty">{_e(_t(lang, "no_changes"))}</p>'
    now = snap.generated_at
    keys = ("when", "instance", "from", "to_state", "reason", "source")
    head = "".join(f"<th>{_e(_t(lang, k))}</th>" for k in keys)
    label = _labels(lang, keys)
    rows = []
    for row in snap.changes:
        c = row.change
        to_view = state_view(c.to_state, c.reason, lang)
        from_cell = "—"
        if c.from_state:
            from_view = state_view(c.from_state, row.from_reason, lang)
            from_cell = f'<span class="muted tone-text-{from_view.tone}">{_e(from_view.label)}</span>'
        rows.append(
            f'<tr data-instance-id="{_e(row.instance_id)}" data-to-state="{_e(c.to_state)}">'
            f"<td{label['when']}>{_time(c.at, now, lang)}</td>"
            f"<td{label['instance']}>{_e(snap.names.get(row.instance_id, row.instance_id))}</td>"
            f"<td{label['from']}>{from_cell}</td><td{label['to_state']}>{_badge(to_view.label, to_view.tone)}</td>"
            f'<td title="{_e(c.reason)}"{label["reason"]}>{_e(reason_label(c.reason, lang))}</td>'
            f"<td{label['source']}>{_e(source_label(c.source, lang))}</td></tr>"
        )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_sections(snap: Snapshot, lang: str) -> dict[str, str]:
    return {
        "summary": render_summary(snap, lang),
        "instances": render_instances(snap, lang),
        "messages": render_messages(snap, lang),
        "changes": render_changes(snap, lang),
        "webhooks": render_webhooks(snap, lang),
    }


def _client_texts(lang: str) -> str:
    texts = {k: _t(lang, k) for k in STATUS_PAGE_TEXTS[lang] if k.startswith("live_") or k == "updated"}
    texts.update({f"unit_{k}": v for k, v in time_units(lang).items()})
    # Inside <script type="application/json">: "<" must not be able to close the element.
    return json.dumps(texts, ensure_ascii=False).replace("<", "\\u003c")


def render_page(snap: Snapshot, lang: str) -> str:
    sections = render_sections(snap, lang)
    other = "en" if lang == "pt-BR" else "pt-BR"
    generated = iso(snap.generated_at) or ""
    return f"""<!doctype html>
<html lang="{lang}" data-lang="{lang}" data-events="/status/api/events?lang={lang}" \
data-refresh="{int(REFRESH_SECONDS * 1000)}" data-generated="{generated}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_e(_t(lang, "title"))}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/status/static/status.css">
<script src="/status/static/status.js" defer></script>
</head>
<body>
<header class="top">
  <h1>wapi-guard</h1>
  <span id="live" class="live" data-live="connecting" role="status" aria-live="polite">\
{_e(_t(lang, "live_connecting"))}</span>
  <span id="updated" class="muted">{_e(_t(lang, "updated"))} \
<time datetime="{generated}" data-rel="ago">{_e(ago(snap.generated_at, snap.generated_at, lang))}</time></span>
  <a class="lang" href="/status?lang={other}" hreflang="{other}">{_e(_t(lang, "other_lang"))}</a>
</header>
<noscript><p class="banner">{_e(_t(lang, "noscript"))}</p></noscript>
<p id="banner" class="banner" hidden></p>
<main>
<section id="summary" class="summary" aria-label="summary">{sections["summary"]}</section>
<section aria-labelledby="h-instances"><h2 id="h-instances">{_e(_t(lang, "instances"))}</h2>
<div id="instances" class="cards">{sections["instances"]}</div></section>
<section aria-labelledby="h-messages"><h2 id="h-messages">{_e(_t(lang, "messages"))}</h2>
<div id="messages" class="table-wrap">{sections["messages"]}</div></section>
<section aria-labelledby="h-changes"><h2 id="h-changes">{_e(_t(lang, "changes"))}</h2>
<div id="changes" class="table-wrap">{sections["changes"]}</div></section>
<section aria-labelledby="h-webhooks"><h2 id="h-webhooks">{_e(_t(lang, "webhooks"))}</h2>
<div id="webhooks" class="table-wrap">{sections["webhooks"]}</div></section>
</main>
<script type="application/json" id="i18n">{_client_texts(lang)}</script>
</body>
</html>
"""


# --- action forms (posted to status_actions.py) ----------------------------------------------------


def instance_actions(instance_id: str, state: str, csrf: str, lang: str, reason: str = "") -> str:
    """The forms of one instance card (clearing a stall only on a stalled instance)."""
    base = f"/status/instances/{_e(instance_id)}"
    hidden = f'<input type="hidden" name="csrf" value="{_e(csrf)}"><input type="hidden" name="lang" value="{lang}">'
    forms = []
    if state != "CONNECTED":
        forms.append(
            f'<form method="post" action="{base}/qr" data-action="qr">{hidden}'
            f'<button type="submit">{_e(_a(lang, "qr"))}</button></form>'
        )
        forms.append(
            f'<form method="post" action="{base}/pairing-code" data-action="pairing-code">{hidden}'
            f'<input name="phone" inputmode="tel" required aria-label="{_e(_a(lang, "pair"))}" '
            f'placeholder="{_e(_a(lang, "phone_placeholder"))}">'
            f'<button type="submit">{_e(_a(lang, "pair"))}</button></form>'
        )
    if state == "DEGRADED" and reason == "DELIVERY_STALLED":
        forms.append(
            f'<form method="post" action="{base}/clear-stall" data-action="clear-stall">{hidden}'
            f'<button type="submit">{_e(_a(lang, "clear_stall"))}</button></form>'
        )
    forms.append(
        f'<form method="post" action="{base}/restart" data-action="restart">{hidden}'
        f'<button type="submit">{_e(_a(lang, "restart"))}</button></form>'
    )
    return f'<div class="actions">{"".join(forms)}</div>'


def message_actions(message_id: str, csrf: str, lang: str) -> str:
    return (
        f'<form method="post" action="/status/messages/{_e(message_id)}/retry" data-action="retry">'
        f'<input type="hidden" name="csrf" value="{_e(csrf)}"><input type="hidden" name="lang" value="{lang}">'
        f'<button type="submit">{_e(_a(lang, "retry"))}</button></form>'
    )
