"""The recipient's side of the preflight (docs/send-policy.md): the suppression list and the
number-check cache, read before any provider call (never the provider itself)."""

from __future__ import annotations

from typing import Protocol

from services.app.optouts import OptOuts
from services.app.recipients import Recipients
from statemachine.domain import InstanceRecord, InstanceState, MessageRecord, Reason
from statemachine.validation import SendRequest


class HoldPath(Protocol):
    """The send path's view of the hold (services/app/holds.py): hold_for / send_at."""

    def wanted(self, req: SendRequest) -> bool: ...

    async def hold_or_admit(
        self, req: SendRequest, blocked: Reason | None, health: InstanceRecord
    ) -> MessageRecord | Reason | None: ...


# The reasons a preflight block is stored with (a replayed key's FAILED message answers SendBlocked).
PREFLIGHT_REASONS = frozenset(
    {
        Reason.SESSION_INCOMPLETE,
        Reason.TIMEOUT_OR_GATEWAY,
        Reason.INSTANCE_DISCONNECTED,
        Reason.HEALTH_UNKNOWN,
        Reason.TOKEN_INVALID,
        Reason.INSTANCE_NOT_FOUND,
        Reason.DELIVERY_STALLED,
        Reason.NOT_SUPPORTED_BY_PLAN,
        Reason.RESTARTING,
        Reason.PAIRING_IN_PROGRESS,
        Reason.RECIPIENT_OPTED_OUT,
        Reason.NOT_ON_WHATSAPP,
        Reason.WAITING_FOR_MESSAGE,
        Reason.SESSION_NEEDS_RESTORE,
        Reason.LOGGED_OUT,
        Reason.QR_REFUSED,
        Reason.PHONE_OFFLINE,
        # A held message cancelled, or a scheduled one expired (statemachine/hold.py): the same key
        # again answers FAILED_PRECONDITION with that reason, as a blocked send.
        Reason.CANCELLED,
        Reason.HOLD_EXPIRED,
    }
)


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
