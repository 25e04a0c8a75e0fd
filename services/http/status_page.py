"""Status page served by the webhook bridge's HTTP server (per-instance actions: status_actions.py).

    GET /status                  the page (server-rendered; works without JavaScript)
    GET /status/api/snapshot     the same data as JSON (labels in the page's language)
    GET /status/api/events       Server-Sent Events: `snapshot` (changed sections, as HTML fragments
                                 rendered here), `ping` (nothing changed) and `unavailable` events
    GET /status/static/<file>    the page's CSS and JavaScript (public: they hold no data)

Live updates: each event stream subscribes to `Gateway.subscribe(include_current=True)` (instance
changes from any replica) and re-reads the snapshot on every change and every REFRESH_SECONDS (stuck
and failed messages have no change feed). All text is rendered and escaped here, once, in the
operator's words (services/i18n.py holds the shared vocabulary); the browser only swaps
fragments and ticks relative times.

Auth: when `api_tokens` is set, every route but the static files needs a token — HTTP Basic (any
user name, the password is an API token: a browser prompts for it) or `Authorization: Bearer`. A
scoped token sees only its instances. Instance W-API tokens are never read here: every query goes
through Gateway.list_instances / list_messages / the transition log, none of which selects them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from importlib import resources
from typing import Any, cast

from aiohttp import web

from services.app.errors import classify
from services.app.gateway import Gateway
from services.app.gateway_config import GatewayConfig
from services.app.health import HealthView, health_view
from services.app.principals import ANONYMOUS, Principal, match_token, parse_tokens
from services.app.recovery import Recovery
from services.app.subscriptions import display_url, visible
from services.config import Settings
from services.http.status_actions import Csrf, StatusActions, add_action_routes, instance_actions, message_actions
from services.i18n import (
    MESSAGE_TONES,
    STATUS_PAGE_TEXTS,
    ago,
    duration,
    iso,
    mask_recipient,
    message_label,
    reason_label,
    resolve_lang,
    source_label,
    state_view,
    time_units,
)
from statemachine.domain import InstanceRecord, MessageRecord, MessageState, StateChange
from statemachine.ports import SubscriptionRecord, SubscriptionStats, SubscriptionStore

log = logging.getLogger("wapi_guard.status_page")

REFRESH_SECONDS = 2.0  # snapshot re-read (messages) and heartbeat of every event stream
DEBOUNCE_SECONDS = 0.05  # a burst of instance changes becomes one snapshot
MAX_STREAMS = 32  # concurrent event streams per process
STUCK_SHOWN = 100
FAILED_SHOWN = 50
CHANGES_SHOWN = 20
CHANGE_WINDOW = 200  # newest transitions read to find the latest CHANGES_SHOWN visible ones
REALM = 'Basic realm="wapi-guard", charset="UTF-8"'
STATIC_FILES = {"status.css": "text/css", "status.js": "text/javascript"}
SECTIONS = ("summary", "instances", "messages", "changes")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _t(lang: str, key: str) -> str:
    return STATUS_PAGE_TEXTS[lang][key]


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeRow:
    instance_id: str
    change: StateChange
    from_reason: str | None  # the reason of the state it left, when known


@dataclass(slots=True)
class Snapshot:
    generated_at: datetime
    instances: list[InstanceRecord]
    messages: list[MessageRecord]
    changes: list[ChangeRow]
    names: dict[str, str] = field(default_factory=dict)
    webhooks: list[tuple[SubscriptionRecord, SubscriptionStats | None]] = field(default_factory=list)
    # The viewer's CSRF token when the page offers actions (QR, pairing code, restart, retry).
    csrf: str = ""
    # This process's event streams: (open now, closed as too slow since start); None: unknown.
    event_streams: tuple[int, int] | None = None
    # The verdict on each instance (webhooks included): Instances.view of the gateway that read it.
    view: Callable[[InstanceRecord, str], HealthView] = field(
        default=lambda record, lang: health_view(record, lang, GatewayConfig())
    )


async def _webhooks(
    subscriptions: SubscriptionStore | None, principal: Principal
) -> list[tuple[SubscriptionRecord, SubscriptionStats | None]]:
    """Subscriptions a viewer may see (a scoped token: its own), with lag and failures."""
    if subscriptions is None:
        return []
    subs = [s for s in await subscriptions.list_subscriptions() if visible(principal, s)]
    stats = await subscriptions.stats([s.id for s in subs])
    return [(s, stats.get(s.id)) for s in subs]


async def build_snapshot(
    gateway: Gateway, principal: Principal = ANONYMOUS, subscriptions: SubscriptionStore | None = None
) -> Snapshot:
    """What one viewer may see, read fresh. Never selects an instance token."""
    scope = principal.instances
    records = await gateway.list_instances()
    if scope is not None:
        records = [r for r in records if r.instance_id in scope]
    ids = None if scope is None else [r.instance_id for r in records]
    messages = await _messages(gateway, ids)
    changes = await _changes(gateway, ids)
    names = {r.instance_id: r.name for r in records}
    view = gateway.instances.view
    records = attention_first(records, view)
    return Snapshot(
        datetime.now(UTC),
        records,
        messages,
        changes,
        names,
        await _webhooks(subscriptions, principal),
        view=view,
    )


# Most urgent tone first: stalled, session incomplete, degraded, disconnected, unknown, online.
_TONE_RANK = {"red": 0, "orange": 1, "yellow": 2, "grey": 3, "slate": 4, "green": 5}


def needs_attention(record: InstanceRecord, health: HealthView) -> bool:
    """Not connected, stuck messages, or deliveries that cannot be confirmed (webhooks)."""
    return record.state.value != "CONNECTED" or record.stuck_messages > 0 or not health.delivery_confirmable


def attention_first(
    records: Sequence[InstanceRecord], view: Callable[[InstanceRecord, str], HealthView]
) -> list[InstanceRecord]:
    """Instances that need someone on top (the most urgent first, then those with stuck messages),
    then the healthy ones; by name within each group, so the order is stable between refreshes."""

    def key(r: InstanceRecord) -> tuple[bool, int, int, str, str]:
        health = view(r, "en")
        tone = state_view(r.state.value, health.reason).tone
        return (
            not needs_attention(r, health),
            _TONE_RANK.get(tone, 4),
            -r.stuck_messages,
            r.name.casefold(),
            r.instance_id,
        )

    return sorted(records, key=key)


def _newest_first(rows: Sequence[MessageRecord]) -> list[MessageRecord]:
    return sorted(rows, key=lambda m: (m.created_at, m.id), reverse=True)


async def _messages(gateway: Gateway, ids: list[str] | None) -> list[MessageRecord]:
    stuck: list[MessageRecord] = []
    failed: list[MessageRecord] = []
    for instance_id in [""] if ids is None else ids:
        rows, _ = await gateway.list_messages(instance_id=instance_id, stuck_only=True, page_size=STUCK_SHOWN)
        stuck += rows
        rows, _ = await gateway.list_messages(
            instance_id=instance_id, states=[MessageState.FAILED], page_size=FAILED_SHOWN
        )
        failed += rows
    # Stuck first (they need someone now), then the most recent failures.
    return _newest_first(stuck)[:STUCK_SHOWN] + _newest_first(failed)[:FAILED_SHOWN]


async def _changes(gateway: Gateway, ids: list[str] | None) -> list[ChangeRow]:
    ordered = await gateway.instance_changes(ids, window=CHANGE_WINDOW, per_instance=CHANGES_SHOWN + 1)
    previous: dict[str, str] = {}
    out: list[ChangeRow] = []
    for instance_id, change in ordered:
        out.append(ChangeRow(instance_id, change, previous.get(instance_id)))
        previous[instance_id] = change.reason
    return list(reversed(out))[:CHANGES_SHOWN]


def _is_stuck(msg: MessageRecord) -> bool:
    return msg.state is MessageState.SENT and msg.stuck_at is not None


def snapshot_json(snap: Snapshot, lang: str) -> dict[str, Any]:
    """The snapshot API: machine codes plus the operator's labels in `lang`. Recipients masked."""
    now = snap.generated_at
    instances = []
    for r in snap.instances:
        health = snap.view(r, lang)
        view = state_view(r.state.value, health.reason, lang)
        instances.append(
            {
                "instance_id": r.instance_id,
                "name": r.name,
                "phone_number": r.phone_number or None,
                "plan": r.plan.value,
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
            }
        )
    messages = []
    for m in snap.messages:
        stuck = _is_stuck(m)
        reason = m.failure_reason or ("STUCK" if stuck else "")
        messages.append(
            {
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
        )
    changes = []
    for row in snap.changes:
        c = row.change
        to_view = state_view(c.to_state, c.reason, lang)
        from_view = state_view(c.from_state, row.from_reason, lang) if c.from_state else None
        changes.append(
            {
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
        )
    return {
        "generated_at": iso(snap.generated_at),
        "lang": lang,
        "summary": _summary(snap),
        "instances": instances,
        "messages": messages,
        "changes": changes,
        "webhooks": [
            {
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
            for sub, stats in snap.webhooks
        ],
        "event_streams": (
            None
            if snap.event_streams is None
            else {"open": snap.event_streams[0], "cut_off_too_slow": snap.event_streams[1]}
        ),
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


def _summary(snap: Snapshot) -> dict[str, int]:
    # Online: sending with confirmable deliveries; anything else needs attention.
    online = sum(1 for r in snap.instances if snap.view(r, "en").reason == "PHONE_CONFIRMED")
    return {
        "instances": len(snap.instances),
        "online": online,
        "attention": len(snap.instances) - online,
        "stuck": sum(1 for m in snap.messages if _is_stuck(m)),
        "failed": sum(1 for m in snap.messages if m.state is MessageState.FAILED),
    }


# --- HTML ------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return escape(str(value), quote=True)


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
    s = _summary(snap)
    items = [
        ("instances", s["instances"], "s_instances", ""),
        ("online", s["online"], "s_online", "tone-green" if s["online"] else ""),
        ("attention", s["attention"], "s_attention", "tone-red" if s["attention"] else ""),
        ("stuck", s["stuck"], "s_stuck", "tone-red" if s["stuck"] else ""),
        ("failed", s["failed"], "s_failed", "tone-yellow" if s["failed"] else ""),
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
        step = ""
        if health.reason == "WEBHOOKS_UNCONFIGURED":
            step = (
                f'<p class="next-step" data-role="next-step"><strong>{_e(_t(lang, "next_step"))}:</strong> '
                f"{_e(health.next_step)}</p>"
            )
        cards.append(
            f'<article class="card tone-{view.tone}" data-instance-id="{_e(r.instance_id)}" '
            f'data-state="{_e(r.state.value)}" data-reason="{_e(health.reason)}" data-label-key="{view.key}" '
            f'data-webhooks="{_e(health.webhooks)}">'
            f'<header><h3 class="name">{_e(r.name)}</h3>{_badge(view.label, view.tone)}</header>'
            f'<p class="reason" data-role="reason">{_e(reason_label(health.reason, lang))}</p>{step}'
            "<dl>"
            f'<dt>{_e(_t(lang, "id"))}</dt><dd class="mono">{_e(r.instance_id)}</dd>'
            f'<dt>{_e(_t(lang, "phone"))}</dt><dd class="mono" data-role="phone">{_e(r.phone_number or "—")}</dd>'
            f'<dt>{_e(_t(lang, "sends"))}</dt><dd data-role="sends">{_e(sends)}</dd>'
            f"<dt>{_e(_t(lang, 'changed'))}</dt><dd>{_time(r.state_changed_at, now, lang)}</dd>"
            f"<dt>{_e(_t(lang, 'checked'))}</dt><dd>{_time(r.checked_at, now, lang)}</dd>"
            f'<dt>{_e(_t(lang, "stuck"))}</dt><dd data-role="stuck"{stuck_cls}>{r.stuck_messages}</dd>'
            "</dl>"
            f"{instance_actions(r.instance_id, r.state.value, snap.csrf, lang, r.reason) if snap.csrf else ''}"
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
        stuck = _is_stuck(m)
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


# --- HTTP ------------------------------------------------------------------------------------


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**SECURITY_HEADERS, "Cache-Control": "no-store", **(extra or {})}


@dataclass(slots=True, eq=False)
class _Stream:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False


class StatusPage:
    def __init__(
        self,
        settings: Settings,
        gateway: Gateway,
        recovery: Recovery | None = None,
        subscriptions: SubscriptionStore | None = None,
    ) -> None:
        self.gateway = gateway
        self.recovery = recovery
        self.subscriptions = subscriptions
        self.csrf = Csrf(settings)
        self.tokens = parse_tokens(settings.api_tokens.get_secret_value()) if settings.api_tokens else []
        self.streams: set[_Stream] = set()
        # (open event streams, cut off as too slow): set by the composition root.
        self.event_streams: Callable[[], tuple[int, int]] | None = None
        self.static: dict[str, bytes] = {}
        folder = resources.files("services.http").joinpath("static")
        for name in STATIC_FILES:
            try:
                self.static[name] = folder.joinpath(name).read_bytes()
            except OSError:
                log.warning("status page asset %s is missing (package data?)", name)

    # auth

    def principal(self, request: web.Request) -> Principal | None:
        """None: no valid credential. Basic (password = API token) or Bearer; constant time."""
        if not self.tokens:
            return ANONYMOUS
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        presented = ""
        if scheme.lower() == "bearer":
            presented = value.strip()
        elif scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                decoded = ""
            presented = decoded.partition(":")[2]
        return match_token(self.tokens, presented)

    def _lang(self, request: web.Request) -> str:
        return resolve_lang(request.query.get("lang"), request.headers.get("Accept-Language"))

    def _denied(self, lang: str, *, as_json: bool) -> web.Response:
        headers = _headers({"WWW-Authenticate": REALM})
        text = _t(lang, "auth")
        if as_json:
            return web.json_response({"error": "unauthenticated", "message": text}, status=401, headers=headers)
        return web.Response(text=text, status=401, headers=headers, content_type="text/plain")

    def headers(self) -> dict[str, str]:
        return _headers()

    async def _snapshot(self, principal: Principal) -> Snapshot | None:
        try:
            snap = await build_snapshot(self.gateway, principal, self.subscriptions)
            if self.recovery is not None and self.recovery.operations is not None:
                snap.csrf = self.csrf.token(principal)
            if self.event_streams is not None:
                snap.event_streams = self.event_streams()
            return snap
        except Exception as error:
            if classify(error) is None:
                log.exception("status snapshot failed")
            else:  # storage trouble: said on the page, no traceback every REFRESH_SECONDS per viewer
                log.warning("status snapshot failed: %s", type(error).__name__)
            return None

    # handlers

    async def index(self, request: web.Request) -> web.StreamResponse:
        lang = self._lang(request)
        principal = self.principal(request)
        if principal is None:
            return self._denied(lang, as_json=False)
        snap = await self._snapshot(principal)
        if snap is None:
            return web.Response(
                text=_t(lang, "unavailable"),
                status=503,
                headers=_headers({"Retry-After": "2"}),
                content_type="text/plain",
            )
        return web.Response(
            text=render_page(snap, lang),
            content_type="text/html",
            charset="utf-8",
            headers=_headers({"Content-Language": lang, "Vary": "Accept-Language, Authorization"}),
        )

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(f"/status{query}")

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        lang = self._lang(request)
        principal = self.principal(request)
        if principal is None:
            return self._denied(lang, as_json=True)
        snap = await self._snapshot(principal)
        if snap is None:
            return web.json_response(
                {"error": "unavailable", "message": _t(lang, "unavailable")},
                status=503,
                headers=_headers({"Retry-After": "2"}),
            )
        return web.json_response(
            snapshot_json(snap, lang),
            headers=_headers({"Content-Language": lang, "Vary": "Accept-Language, Authorization"}),
            dumps=lambda value: json.dumps(value, ensure_ascii=False),
        )

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body = self.static.get(name)
        if body is None:
            raise web.HTTPNotFound()
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        return web.Response(body=body, content_type=STATIC_FILES[name], charset="utf-8", headers=headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        lang = self._lang(request)
        principal = self.principal(request)
        if principal is None:
            return self._denied(lang, as_json=True)
        if len(self.streams) >= MAX_STREAMS:
            return web.json_response(
                {"error": "busy", "message": _t(lang, "busy")}, status=503, headers=_headers({"Retry-After": "5"})
            )
        response = web.StreamResponse(
            headers=_headers({"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"})
        )
        stream = _Stream()
        self.streams.add(stream)
        watcher = asyncio.create_task(self._watch(stream, principal), name="status-page-watch")
        try:
            await response.prepare(request)
            await response.write(b"retry: 3000\n\n")
            await self._pump(response, stream, principal, lang)
        except ConnectionResetError:
            pass  # the viewer went away
        finally:
            self.streams.discard(stream)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher
        return response

    async def _watch(self, stream: _Stream, principal: Principal) -> None:
        """Instance changes (from any replica) wake the stream; the current state wakes it first."""
        scope = principal.instances
        if scope is not None and not scope:
            return  # a token scoped to nothing watches nothing (an empty list would mean "all")
        ids = sorted(scope) if scope is not None else []
        while not stream.closing:
            try:
                subscription = cast(AsyncGenerator[Any, None], self.gateway.subscribe(ids, include_current=True))
                async with contextlib.aclosing(subscription) as events:
                    async for _event in events:
                        stream.wake.set()
            except Exception:
                log.warning("status page subscription failed; retrying", exc_info=True)
                await asyncio.sleep(REFRESH_SECONDS)

    async def _pump(self, response: web.StreamResponse, stream: _Stream, principal: Principal, lang: str) -> None:
        sent: dict[str, str] = {}
        seq = 0
        stream.wake.set()
        while not stream.closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.wake.wait(), REFRESH_SECONDS)
            if stream.closing:
                break
            await asyncio.sleep(DEBOUNCE_SECONDS)
            stream.wake.clear()
            snap = await self._snapshot(principal)
            seq += 1
            if snap is None:
                data = {"message": _t(lang, "live_unavailable")}
                await response.write(_sse("unavailable", seq, data))
                continue
            sections = render_sections(snap, lang)
            changed = {k: v for k, v in sections.items() if sent.get(k) != v}
            generated = iso(snap.generated_at)
            if changed:
                sent.update(changed)
                await response.write(_sse("snapshot", seq, {"generated_at": generated, "html": changed}))
            else:
                await response.write(_sse("ping", seq, {"generated_at": generated}))

    async def on_shutdown(self, app: web.Application) -> None:
        """Event streams never end on their own: end them, or the bridge waits its full shutdown timeout."""
        for stream in list(self.streams):
            stream.closing = True
            stream.wake.set()


def _sse(event: str, seq: int, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\nid: {seq}\ndata: {payload}\n\n".encode()


STATUS_PAGE_KEY = web.AppKey("status_page", StatusPage)


def add_status_routes(
    app: web.Application,
    settings: Settings,
    gateway: Gateway,
    recovery: Recovery | None = None,
    subscriptions: SubscriptionStore | None = None,
) -> None:
    """Adds the status page routes to the bridge's aiohttp application."""
    page = StatusPage(settings, gateway, recovery, subscriptions)
    app[STATUS_PAGE_KEY] = page
    if recovery is not None:
        add_action_routes(app, StatusActions(page, gateway, recovery, page.csrf))
    app.router.add_get("/status", page.index)
    app.router.add_get("/status/", page.redirect)
    app.router.add_get("/", page.redirect)  # a browser pointed at the bridge lands on the page
    app.router.add_get("/status/api/snapshot", page.snapshot)
    app.router.add_get("/status/api/events", page.events)
    app.router.add_get("/status/static/{name}", page.asset)
    app.on_shutdown.append(page.on_shutdown)
