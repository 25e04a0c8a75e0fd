"""What one viewer of the status page may see, read fresh: instances (the most urgent first), stuck
and failed messages, the latest state changes and the webhook subscriptions. No HTML here
(status_views.py renders it); every query goes through the health and message use cases' reads, none of which selects
an instance's W-API token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from services.app.gateway_config import GatewayConfig
from services.app.health import HealthView, Instances, health_view
from services.app.held_counts import Held
from services.app.message_queries import MessageQueries
from services.app.principals import ANONYMOUS, Principal
from services.app.send_protection import Protection
from services.app.subscriptions import visible
from services.i18n import state_view
from statemachine.domain import InstanceRecord, MessageRecord, MessageState, StateChange
from statemachine.ports import SubscriptionRecord, SubscriptionStats, SubscriptionStore

REFRESH_SECONDS = 2.0  # snapshot re-read (messages) and heartbeat of every event stream
STUCK_SHOWN = 100
FAILED_SHOWN = 50
CHANGES_SHOWN = 20
CHANGE_WINDOW = 200  # newest transitions read to find the latest CHANGES_SHOWN visible ones


@dataclass(frozen=True, slots=True)
class StatusReads:
    """What the status page reads: the instances' health (and its live changes) and the messages."""

    instances: Instances
    messages: MessageQueries


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
    # The verdict on each instance (webhooks included): Instances.view of the use case that read it.
    view: Callable[[InstanceRecord, str], HealthView] = field(
        default=lambda record, lang: health_view(record, lang, GatewayConfig())
    )
    # The send policy's budgets and the opt-outs per instance (empty: not wired).
    protection: dict[str, Protection] = field(default_factory=dict)
    # Held messages per instance from the hold's table (None: not wired; absent: none held).
    held: dict[str, Held] | None = None
    # The send policy's form on each card (its route is wired: status_policy.py).
    policy_form: bool = False


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
    reads: StatusReads,
    principal: Principal = ANONYMOUS,
    subscriptions: SubscriptionStore | None = None,
    protection: Callable[[Sequence[str]], Awaitable[dict[str, Protection]]] | None = None,
    held: Callable[[Sequence[str] | None], Awaitable[dict[str, Held]]] | None = None,
) -> Snapshot:
    """What one viewer may see, read fresh. Never selects an instance token."""
    scope = principal.instances
    records = await reads.instances.list_instances()
    if scope is not None:
        records = [r for r in records if r.instance_id in scope]
    ids = None if scope is None else [r.instance_id for r in records]
    messages = await _messages(reads.messages, ids)
    changes = await _changes(reads.instances, ids)
    names = {r.instance_id: r.name for r in records}
    view = reads.instances.view
    records = attention_first(records, view)
    return Snapshot(
        datetime.now(UTC),
        records,
        messages,
        changes,
        names,
        await _webhooks(subscriptions, principal),
        view=view,
        protection=await protection([r.instance_id for r in records]) if protection is not None else {},
        held=await held(ids) if held is not None else None,
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


async def _messages(queries: MessageQueries, ids: list[str] | None) -> list[MessageRecord]:
    stuck: list[MessageRecord] = []
    failed: list[MessageRecord] = []
    for instance_id in [""] if ids is None else ids:
        rows, _ = await queries.list_messages(instance_id=instance_id, stuck_only=True, page_size=STUCK_SHOWN)
        stuck += rows
        rows, _ = await queries.list_messages(
            instance_id=instance_id, states=[MessageState.FAILED], page_size=FAILED_SHOWN
        )
        failed += rows
    # Stuck first (they need someone now), then the most recent failures.
    return _newest_first(stuck)[:STUCK_SHOWN] + _newest_first(failed)[:FAILED_SHOWN]


async def _changes(instances: Instances, ids: list[str] | None) -> list[ChangeRow]:
    ordered = await instances.instance_changes(ids, window=CHANGE_WINDOW, per_instance=CHANGES_SHOWN + 1)
    previous: dict[str, str] = {}
    out: list[ChangeRow] = []
    for instance_id, change in ordered:
        out.append(ChangeRow(instance_id, change, previous.get(instance_id)))
        previous[instance_id] = change.reason
    return list(reversed(out))[:CHANGES_SHOWN]


def is_stuck(msg: MessageRecord) -> bool:
    return msg.state is MessageState.SENT and msg.stuck_at is not None


def summary(snap: Snapshot) -> dict[str, int]:
    """The counts at the top of the page (and of the snapshot API)."""
    # Online: sending with confirmable deliveries; anything else needs attention.
    online = sum(1 for r in snap.instances if snap.view(r, "en").reason == "PHONE_CONFIRMED")
    return {
        "instances": len(snap.instances),
        "online": online,
        "attention": len(snap.instances) - online,
        "stuck": sum(1 for m in snap.messages if is_stuck(m)),
        "failed": sum(1 for m in snap.messages if m.state is MessageState.FAILED),
        # Messages waiting with a hold (hold_for / send_at; docs/holds.md): every held one, from
        # the hold's table (else only the recent messages listed).
        "held": (
            sum(h.count for h in snap.held.values())
            if snap.held is not None
            else sum(1 for m in snap.messages if m.state is MessageState.HELD)
        ),
    }


# --- HTML ------------------------------------------------------------------------------------
