"""Output helpers of the operator commands: tables and progress (rich on a terminal, plain text
otherwise) and the dictionaries of an instance's and a message's answer (their --json form,
labelled in the operator's language)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from services.cli.context import RICH_TONES, Context
from services.i18n import iso, mask_recipient, message_label, reason_label, state_view


def proto_time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return value


def enum_name(enum_value: int, enum_type: Any, prefix: str) -> str:
    try:
        return str(enum_type.Name(enum_value)).removeprefix(prefix)
    except ValueError:
        return "UNSPECIFIED"


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def webhooks_line(ctx: Context, data: dict[str, Any]) -> str:
    """W-API's webhook state and whether deliveries can be confirmed (receipts reach us)."""
    state = data["webhooks_state"]
    if data["delivery_confirmable"]:
        return ctx.t("webhooks_ok", state=state)
    return ctx.paint(ctx.t("webhooks_unconfirmed", state=state), "orange")


def instance_dict(h: Any, lang: str) -> dict[str, Any]:
    from services.api.wapiguard.v1 import common_pb2

    state = enum_name(h.state, common_pb2.InstanceState, "INSTANCE_STATE_")
    view = state_view(state, h.reason, lang)
    return {
        "instance_id": h.instance_id,
        "name": h.name,
        "state": state,
        "state_label": view.label,
        "tone": view.tone,
        "reason": h.reason,
        "reason_message": h.reason_message or reason_label(h.reason, lang),
        "can_send": h.can_send,
        "phone_number": h.phone_number or None,
        "plan": enum_name(h.plan, common_pb2.Plan, "PLAN_"),
        "provider": enum_name(h.provider, common_pb2.Provider, "PROVIDER_") if h.provider else "WAPI",
        "stuck_messages": h.stuck_messages,
        "checked_at": iso(proto_time(h, "checked_at")),
        "last_event_at": iso(proto_time(h, "last_event_at")),
        "state_changed_at": iso(proto_time(h, "state_changed_at")),
        "delivery_confirmable": h.delivery_confirmable,
        "webhooks_state": h.webhooks_state or "UNCONFIGURED",
        "webhooks_evidence": h.webhooks_evidence or None,
        "last_receipt_at": iso(proto_time(h, "last_receipt_at")),
        "next_step": h.next_step,
        "send_budgets": budgets_dict(h.send_budgets),
        "opt_outs": h.opt_outs,
        "optout_list": h.optout_list,
        # Held messages (docs/holds.md): how many wait, and why (most first).
        "held_messages": h.held_messages,
        "held_reasons": [{"reason": r.reason, "count": r.count} for r in h.held_reasons],
    }


def held_cell(row: dict[str, Any]) -> str:
    """The `instances` table's held column: the count, and the reason most of them wait for."""
    n = row["held_messages"]
    reasons = row["held_reasons"]
    return f"{n} {reasons[0]['reason']}" if n and reasons else str(n)


def budgets_dict(b: Any) -> dict[str, Any]:
    """A SendBudgets message as JSON (InstanceHealth.send_budgets, SendPolicyState.budgets)."""
    names = (
        "policy_active",
        "sends_this_minute",
        "max_per_minute",
        "sends_left_this_minute",
        "new_recipients_this_hour",
        "new_recipients_per_hour",
        "new_recipients_left_this_hour",
        "new_recipients_today",
        "new_recipients_today_budget",
        "new_recipients_left_today",
        "warmup_day",
        "warmup_days",
    )
    return {name: getattr(b, name) for name in names}


def budgets_cell(data: dict[str, Any]) -> str:
    """One compact cell: used/limit per minute, new recipients per hour and today; opt-outs."""
    b = data["send_budgets"]
    parts = []
    if b["policy_active"]:
        for label, used, limit in (
            ("min", "sends_this_minute", "max_per_minute"),
            ("h", "new_recipients_this_hour", "new_recipients_per_hour"),
            ("d", "new_recipients_today", "new_recipients_today_budget"),
        ):
            if b[limit]:
                parts.append(f"{label}:{b[used]}/{b[limit]}")
        if b["warmup_days"]:
            parts.append(f"warmup:{b['warmup_day']}/{b['warmup_days']}")
    if data["opt_outs"]:
        parts.append(f"opt-out:{data['opt_outs']}")
    return ",".join(parts) or "—"


def message_dict(m: Any, lang: str) -> dict[str, Any]:
    from services.api.wapiguard.v1 import common_pb2

    state = enum_name(m.state, common_pb2.MessageState, "MESSAGE_STATE_")
    reason = m.failure_reason or ("STUCK" if m.stuck else "")
    return {
        "id": m.id,
        "instance_id": m.instance_id,
        "to": m.to,
        "to_masked": mask_recipient(m.to),
        "kind": enum_name(m.kind, common_pb2.MessageKind, "MESSAGE_KIND_"),
        "state": state,
        "state_label": message_label(state, m.stuck, lang),
        "stuck": m.stuck,
        "failure_reason": m.failure_reason,
        "reason_message": reason_label(reason, lang),
        "attempts": m.attempts,
        "provider_message_id": m.provider_message_id or None,
        "idempotency_key": m.idempotency_key or None,
        "created_at": iso(proto_time(m, "created_at")),
        "sent_at": iso(proto_time(m, "sent_at")),
        "updated_at": iso(proto_time(m, "updated_at")),
    }


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], tones: Sequence[str | None], out: TextIO, *, color: bool
) -> None:
    """A rich table: coloured and framed on a terminal, plain aligned columns otherwise (one row
    per line, never wrapped, so `grep` and `cut` keep working)."""
    from rich.console import Console
    from rich.table import Table

    tty = color
    console = Console(
        file=out,
        force_terminal=tty,
        no_color=not tty,
        color_system="standard" if tty else None,
        width=None if tty else 100_000,
        highlight=False,
        soft_wrap=not tty,
    )
    grid = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), show_header=True, header_style="bold" if tty else "")
    for header in headers:
        grid.add_column(header, overflow="fold" if tty else "ignore", no_wrap=not tty)
    for row, tone in zip(rows, tones, strict=False):
        grid.add_row(*row, style=RICH_TONES.get(tone or "", "") if tty else "")
    console.print(grid)


class Progress:
    """A rich progress bar on stderr when it is a terminal; one final plain line otherwise."""

    def __init__(self, total: int, label: str, stream: TextIO) -> None:
        self.total, self.label, self.stream, self.done = total, label, stream, 0
        self.tty = stream.isatty()
        self._bar: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(file=stream),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
            self.stream.flush()
