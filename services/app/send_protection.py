"""The recipient's side of the preflight (docs/send-policy.md): the suppression list and the
number-check cache, read before any provider call (never the provider itself)."""

from __future__ import annotations

from services.app.optouts import OptOuts
from services.app.recipients import Recipients
from statemachine.domain import InstanceState, Reason


async def recipient_block(
    opt_outs: OptOuts | None, recipients: Recipients | None, instance_id: str, to: str
) -> Reason | None:
    """Why this recipient may not be sent to now, or None (either list unwired: no check)."""
    if opt_outs is not None and await opt_outs.blocks(instance_id, to):
        return Reason.RECIPIENT_OPTED_OUT
    if recipients is not None and await recipients.absent(instance_id, to):
        return Reason.NOT_ON_WHATSAPP
    return None


def block_detail(blocked: Reason | None, state: InstanceState) -> str:
    """The stored failure detail of a blocked send."""
    if blocked is None:
        return ""
    if blocked is Reason.RECIPIENT_OPTED_OUT:
        return "recipient opted out"
    if blocked is Reason.NOT_ON_WHATSAPP:
        return "recipient not on WhatsApp (number check)"
    return f"instance {state.value}"
