"""`wapi-guard held release INSTANCE` and `wapi-guard held cancel MESSAGE`: the operator's side of
the hold (docs/holds.md). `wapi-guard messages --held` lists the held messages."""

from __future__ import annotations

from typing import Any

from services.cli.context import EXIT_OK, Context, Subparsers
from services.cli.output import message_dict


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
    held = sub.add_parser(
        "held",
        help="release or cancel held messages (operator)",
        description=(
            "Held messages wait (SendMessage with hold_for / send_at) while the send policy paces them or the "
            "instance is unhealthy. `release` sends an instance's messages held for its health now, at the "
            "policy's pace (what release_requires_confirmation waits for); `cancel` ends one held message "
            "FAILED/CANCELLED."
        ),
        **kwargs,
    )
    actions = held.add_subparsers(dest="held_action", required=True, metavar="{release,cancel}")
    release = actions.add_parser("release", help="release the instance's held messages now", **kwargs)
    release.add_argument("instance_id", metavar="INSTANCE")
    release.set_defaults(run=cmd_release)
    cancel = actions.add_parser("cancel", help="cancel one held message", **kwargs)
    cancel.add_argument("message_id", metavar="MESSAGE")
    cancel.set_defaults(run=cmd_cancel)


async def cmd_release(ctx: Context) -> int:
    from services.api.wapiguard.v1 import send_pb2

    request = send_pb2.ReleaseHeldRequest(instance_id=ctx.args.instance_id)
    answer = await ctx.call(ctx.send_stub().ReleaseHeld, request)
    if ctx.json:
        ctx.emit_json({"instance_id": ctx.args.instance_id, "released": answer.released})
    else:
        ctx.print(ctx.paint(ctx.t("held_released", count=answer.released, id=ctx.args.instance_id), "green"))
    return EXIT_OK


async def cmd_cancel(ctx: Context) -> int:
    from services.api.wapiguard.v1 import send_pb2

    msg = await ctx.call(ctx.send_stub().CancelMessage, send_pb2.CancelMessageRequest(message_id=ctx.args.message_id))
    data = message_dict(msg, ctx.lang)
    if ctx.json:
        ctx.emit_json({"message": data})
    else:
        ctx.print(ctx.paint(ctx.t("held_cancelled", id=data["id"]), "green"))
    return EXIT_OK
