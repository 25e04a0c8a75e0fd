"""`wapi-guard subscriptions …`: outbound webhook subscriptions for operators (over gRPC, like the
other operator commands): list with lag/failures/last error, create (prints the secret once),
enable/disable, delete, rotate the secret, list deliveries, replay exhausted ones. One function per
action, picked from ACTIONS."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from services.cli.context import EXIT_OK, EXIT_USAGE, Context, Subparsers, say
from services.cli.output import table
from services.i18n import SUBSCRIPTION_CLI_TEXTS

EVENT_TYPES = {
    "message.state_changed": 1,
    "message.stuck": 2,
    "message.failed": 3,
    "instance.health_changed": 4,
    "message.received": 5,
    "message.from_phone": 6,
}
TYPE_NAMES = {v: k for k, v in EVENT_TYPES.items()}
DELIVERY_STATES = {"pending": 1, "succeeded": 2, "exhausted": 3}
STATE_NAMES = {v: k for k, v in DELIVERY_STATES.items()}


def _t(ctx: Context, name: str, /, **values: Any) -> str:
    return say(SUBSCRIPTION_CLI_TEXTS, ctx.lang, name, **values)


def _ago(ctx: Context | None, value: Any, field: str) -> str:
    if not value.HasField(field):
        return "-"
    at: datetime = getattr(value, field).ToDatetime(tzinfo=UTC)
    return at.isoformat(timespec="seconds")


def subscription_dict(s: Any) -> dict[str, Any]:
    return {
        "id": s.id,
        "url": s.url,
        "types": [TYPE_NAMES.get(t, str(t)) for t in s.types],
        "instance_ids": list(s.instance_ids),
        "enabled": s.enabled,
        "disabled_reason": s.disabled_reason,
        "description": s.description,
        "pending": s.stats.pending,
        "exhausted": s.stats.exhausted,
        "succeeded": s.stats.succeeded,
        "consecutive_failures": s.stats.consecutive_failures,
        "failed_attempts": s.stats.failed_attempts,
        "lag_seconds": round(s.stats.lag_seconds, 3),
        "last_error": s.stats.last_error,
        "timeouts": s.stats.timeouts,
        "refused": s.stats.refused,
        "last_failure_at": _ago(None, s.stats, "last_failure_at"),
        **({"secret": s.secret} if s.secret else {}),
    }


async def _create(ctx: Context, stub: Any, events_pb2: Any) -> int:
    args = ctx.args
    if not args.url:
        ctx.warn(_t(ctx, "need_url"))
        return EXIT_USAGE
    created = await ctx.call(
        stub.CreateWebhookSubscription,
        events_pb2.CreateWebhookSubscriptionRequest(
            url=args.url,
            types=[EVENT_TYPES[t] for t in args.type],
            instance_ids=args.instance,
            description=args.description,
        ),
    )
    if ctx.json:
        ctx.emit_json(subscription_dict(created))
    else:
        ctx.print(f"{created.id}  {created.url}")
        ctx.print(_t(ctx, "secret", secret=created.secret))
    return EXIT_OK


async def _enable_or_disable(ctx: Context, stub: Any, events_pb2: Any) -> int:
    action = ctx.args.action
    updated = await ctx.call(
        stub.UpdateWebhookSubscription,
        events_pb2.UpdateWebhookSubscriptionRequest(id=ctx.args.id, enabled=action == "enable"),
    )
    ctx.emit_json(subscription_dict(updated)) if ctx.json else ctx.print(_t(ctx, f"{action}d", id=updated.id))
    return EXIT_OK


async def _delete(ctx: Context, stub: Any, events_pb2: Any) -> int:
    await ctx.call(stub.DeleteWebhookSubscription, events_pb2.DeleteWebhookSubscriptionRequest(id=ctx.args.id))
    ctx.emit_json({"deleted": ctx.args.id}) if ctx.json else ctx.print(_t(ctx, "deleted", id=ctx.args.id))
    return EXIT_OK


async def _rotate_secret(ctx: Context, stub: Any, events_pb2: Any) -> int:
    rotated = await ctx.call(stub.RotateWebhookSecret, events_pb2.RotateWebhookSecretRequest(id=ctx.args.id))
    ctx.emit_json(subscription_dict(rotated)) if ctx.json else ctx.print(_t(ctx, "new_secret", secret=rotated.secret))
    return EXIT_OK


async def _replay(ctx: Context, stub: Any, events_pb2: Any) -> int:
    replayed = await ctx.call(
        stub.ReplayWebhookDeliveries, events_pb2.ReplayWebhookDeliveriesRequest(subscription_id=ctx.args.id)
    )
    ctx.emit_json({"replayed": replayed.replayed}) if ctx.json else ctx.print(_t(ctx, "replayed", n=replayed.replayed))
    return EXIT_OK


async def _deliveries(ctx: Context, stub: Any, events_pb2: Any) -> int:
    args = ctx.args
    page = await ctx.call(
        stub.ListWebhookDeliveries,
        events_pb2.ListWebhookDeliveriesRequest(
            subscription_id=args.id,
            states=[DELIVERY_STATES[s] for s in args.state],
            page_size=max(1, min(args.limit, 1000)),
        ),
    )
    rows = [
        {
            "id": d.id,
            "webhook_id": d.webhook_id,
            "type": TYPE_NAMES.get(d.type, str(d.type)),
            "instance_id": d.instance_id,
            "state": STATE_NAMES.get(d.state, "?"),
            "attempts": d.attempts,
            "last_status_code": d.last_status_code,
            "last_error": d.last_error,
        }
        for d in page.deliveries
    ]
    if ctx.json:
        ctx.emit_json(rows)
        return EXIT_OK
    headers = [_t(ctx, k) for k in ("id", "webhook_id", "type", "state", "attempts", "last_error")]
    cells = [
        [
            str(r["id"]),
            r["webhook_id"],
            r["type"],
            _t(ctx, f"s_{r['state']}") if r["state"] in DELIVERY_STATES else r["state"],
            str(r["attempts"]),
            r["last_error"] or "-",
        ]
        for r in rows
    ]
    if not cells:
        ctx.print(_t(ctx, "no_deliveries"))
        return EXIT_OK
    table(headers, cells, [None] * len(cells), ctx.out, color=ctx.color)
    return EXIT_OK


async def _list(ctx: Context, stub: Any, events_pb2: Any) -> int:
    listed = await ctx.call(stub.ListWebhookSubscriptions, events_pb2.ListWebhookSubscriptionsRequest())
    subs = [subscription_dict(s) for s in listed.subscriptions]
    if ctx.json:
        ctx.emit_json(subs)
        return EXIT_OK
    if not subs:
        ctx.print(_t(ctx, "none"))
        return EXIT_OK
    headers = [
        _t(ctx, k) for k in ("id", "url", "on", "pending", "lag", "failures", "timeouts", "refused", "last_error")
    ]
    cells = [
        [
            s["id"],
            s["url"],
            _t(ctx, "yes") if s["enabled"] else _t(ctx, "no", reason=s["disabled_reason"] or "-"),
            str(s["pending"]),
            f"{s['lag_seconds']:.1f}s",
            str(s["consecutive_failures"]),
            str(s["timeouts"]),
            str(s["refused"]),
            s["last_error"] or "-",
        ]
        for s in subs
    ]
    table(headers, cells, [None] * len(cells), ctx.out, color=ctx.color)
    return EXIT_OK


# action → what it does (the events_pb2 module is passed in: the stubs load only when a command runs).
ACTIONS: dict[str, Callable[[Context, Any, Any], Awaitable[int]]] = {
    "list": _list,
    "create": _create,
    "enable": _enable_or_disable,
    "disable": _enable_or_disable,
    "delete": _delete,
    "rotate-secret": _rotate_secret,
    "deliveries": _deliveries,
    "replay": _replay,
}


async def cmd_subscriptions(ctx: Context) -> int:
    from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc

    action = ctx.args.action
    stub = events_pb2_grpc.WebhookSubscriptionServiceStub(ctx.channel())
    if action not in ("list", "create") and not ctx.args.id:
        ctx.warn(_t(ctx, "need_id", action=action))
        return EXIT_USAGE
    return await ACTIONS[action](ctx, stub, events_pb2)


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
    hooks = sub.add_parser(
        "subscriptions",
        help="outbound webhook subscriptions: list, create, enable/disable, replay (operator)",
        description="Outbound webhooks (Standard Webhooks signatures). Without an action: the list.",
        **kwargs,
    )
    hooks.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=list(ACTIONS),
    )
    hooks.add_argument("id", nargs="?", default="", help="subscription id (all actions but list/create)")
    hooks.add_argument("--url", default="", help="receiver URL (create)")
    hooks.add_argument(
        "--type", action="append", default=[], choices=sorted(EVENT_TYPES), help="event type (repeatable; default all)"
    )
    hooks.add_argument("--instance", action="append", default=[], help="instance id (repeatable; default all)")
    hooks.add_argument("--description", default="", help="free text (create)")
    hooks.add_argument("--state", action="append", default=[], choices=sorted(DELIVERY_STATES), help="deliveries")
    hooks.add_argument("--limit", type=int, default=20, help="deliveries: at most N [default 20]")
    hooks.set_defaults(run=cmd_subscriptions)
