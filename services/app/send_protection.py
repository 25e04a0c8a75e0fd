"""The recipient's side of the preflight (docs/send-policy.md): the suppression list and the
number-check cache, read before any provider call (never the provider itself)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.app.optouts import OptOuts
from services.app.recipients import Recipients
from services.app.send_policy import SendPolicies
from statemachine.domain import InstanceRecord, InstanceState, MessageRecord, Reason
from statemachine.preflight import BLOCK_REASONS
from statemachine.send_policy import Budgets, SendPolicy
from statemachine.validation import SendRequest

log = logging.getLogger("wapi_guard.send_protection")


class HoldPath(Protocol):
    """The send path's view of the hold (services/app/holds.py): hold_for / send_at."""

    def wanted(self, req: SendRequest) -> bool: ...

    async def hold_or_admit(
        self, req: SendRequest, blocked: Reason | None, health: InstanceRecord
    ) -> MessageRecord | Reason | None: ...


# The reasons a preflight block is stored with (a replayed key's FAILED message answers SendBlocked):
# every block the preflight's rule can give (statemachine/preflight.py, one list: a hand-kept copy
# here had missed WEBHOOKS_UNCONFIGURED, whose replay answered UNAVAILABLE), the recipient's, and a
# held message cancelled or a scheduled one expired (statemachine/hold.py).
PREFLIGHT_REASONS = BLOCK_REASONS | {
    Reason.RECIPIENT_OPTED_OUT,
    Reason.NOT_ON_WHATSAPP,
    Reason.CANCELLED,
    Reason.HOLD_EXPIRED,
}


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


async def learn_absence(recipients: Recipients | None, msg: MessageRecord, failure: Reason | None) -> None:
    """A send the provider failed because the recipient is not on WhatsApp (Evolution's 400
    `exists: false`, W-API's or Z-API's "phone number does not exist"; also a failure webhook that
    overtook the send's answer and was applied with it) teaches the number-check cache: the next
    send to them is refused before any provider call."""
    absent = failure is Reason.NOT_ON_WHATSAPP or msg.failure_reason == Reason.NOT_ON_WHATSAPP.value
    if recipients is None or not absent or not msg.to.isdigit():
        return
    try:
        await recipients.learn_absent(msg.instance_id, msg.to)
    except Exception:  # the lesson is a bonus: the send's own outcome is already stored and answered
        log.warning("learning a recipient not on WhatsApp failed", extra={"message_id": msg.id}, exc_info=True)


def absence_listener(recipients: Recipients) -> Callable[[str, str], Awaitable[None]]:
    """Ingest's hook for a status webhook that failed a message as NOT_ON_WHATSAPP (Z-API reports a
    send's failure by webhook), by (instance id, provider message id): the same lesson as a failed
    send's answer, whether the webhook applied at once or waited for the send's answer (parked)."""

    async def on_absent(instance_id: str, provider_message_id: str) -> None:
        try:
            await recipients.learn_absent_by_provider_id(instance_id, provider_message_id)
        except Exception:
            log.warning(
                "learning a recipient not on WhatsApp failed", extra={"instance_id": instance_id}, exc_info=True
            )

    return on_absent


@dataclass(frozen=True, slots=True)
class Protection:
    """What protects an instance's number now, for the operator's surfaces (status page)."""

    budgets: Budgets = field(default_factory=Budgets)
    opt_outs: int = 0
    optout_list: str = ""  # the shared list named ("" = its own)
    policy: SendPolicy = field(default_factory=SendPolicy)  # the policy set now (all 0: none)


def protection_reader(
    policies: SendPolicies, opt_outs: OptOuts
) -> Callable[[Sequence[str]], Awaitable[dict[str, Protection]]]:
    """The status page's read: the policies re-read once, each instance's opt-out list from the
    replica's copy (read once, then followed)."""

    async def read(instance_ids: Sequence[str]) -> dict[str, Protection]:
        await policies.view()
        out: dict[str, Protection] = {}
        for instance_id in instance_ids:
            await opt_outs.warm(instance_id)
            budgets, optout_list = policies.budgets_here(instance_id)
            policy = policies.policy_here(instance_id)
            out[instance_id] = Protection(budgets, opt_outs.size_here(instance_id), optout_list, policy)
        return out

    return read
