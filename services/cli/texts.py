"""Lines several operator commands print the same way."""

from __future__ import annotations

from services.cli.context import Context, say
from services.i18n import RECOVERY_CLI_TEXTS


def next_step(ctx: Context, text: str) -> None:
    """The server's next step for the operator, when it gave one."""
    if text:
        ctx.print(say(RECOVERY_CLI_TEXTS, ctx.lang, "next", text=text))
