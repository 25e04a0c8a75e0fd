"""`wapi-guard messages`: stuck, failed or all messages, newest first (recipients masked)."""

from __future__ import annotations

from typing import Any

from services.cli.context import EXIT_OK, MAX_PAGE, Context, Subparsers, UsageError
from services.cli.output import message_dict, parse_time, table
from services.i18n import MESSAGE_TONES, duration


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
    messages = sub.add_parser(
        "messages",
        help="list messages: stuck, failed, per instance (operator)",
        description="Newest first. Recipients are masked in the table (full numbers only with --json).",
        **kwargs,
    )
    messages.add_argument("--stuck", action="store_true", help="only messages stuck in SENT (no delivery receipt)")
    messages.add_argument("--failed", action="store_true", help="only FAILED messages (with --stuck: both)")
    messages.add_argument("--held", action="store_true", help="only HELD messages (waiting: hold_for / send_at)")
    messages.add_argument("--instance", default="", help="only this instance")
    messages.add_argument("--limit", type=int, default=20, help="at most N messages [default 20]")
    messages.set_defaults(run=cmd_messages)


async def cmd_messages(ctx: Context) -> int:
    from services.api.wapiguard.v1 import common_pb2, send_pb2

    args = ctx.args
    if args.limit < 1:
        raise UsageError("--limit must be ≥ 1")
    stub = ctx.send_stub()
    queries: list[dict[str, Any]] = []
    if args.stuck:
        queries.append({"stuck_only": True})
    if args.failed:
        queries.append({"states": [common_pb2.MESSAGE_STATE_FAILED]})
    if args.held:
        queries.append({"states": [common_pb2.MESSAGE_STATE_HELD]})
    if not queries:
        queries.append({})
    found: dict[str, Any] = {}
    for query in queries:
        token = ""
        taken = 0
        while taken < args.limit:
            size = min(MAX_PAGE, args.limit - taken)
            request = send_pb2.ListMessagesRequest(instance_id=args.instance, page_size=size, page_token=token, **query)
            page = await ctx.call(stub.ListMessages, request)
            for m in page.messages:
                found[m.id] = m
            taken += len(page.messages)
            token = page.next_page_token
            if not token:
                break
    ordered = sorted(found.values(), key=lambda m: (m.created_at.seconds, m.created_at.nanos, m.id), reverse=True)
    rows = [message_dict(m, ctx.lang) for m in ordered[: args.limit]]
    if ctx.json:
        ctx.emit_json({"messages": rows})
        return EXIT_OK
    if not rows:
        ctx.print(ctx.t("no_messages"))
        return EXIT_OK
    headers = [ctx.t(k) for k in ("id", "instance", "to", "state", "attempts", "age", "reason")]
    cells = [
        [
            r["id"],
            r["instance_id"],
            r["to_masked"],
            r["state_label"],
            str(r["attempts"]),
            duration((ctx.now - (parse_time(r["created_at"]) or ctx.now)).total_seconds(), ctx.lang),
            r["reason_message"],
        ]
        for r in rows
    ]
    tones = [MESSAGE_TONES.get("STUCK" if r["stuck"] else r["state"], "slate") for r in rows]
    table(headers, cells, tones, ctx.out, color=ctx.color)
    return EXIT_OK
