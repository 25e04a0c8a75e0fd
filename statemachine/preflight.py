"""Send preflight: may this instance send this kind, right now? Pure and O(1)."""

from __future__ import annotations

from statemachine.domain import InstanceState, MessageKind, Plan, Reason

# W-API LITE sends text, image, audio, video, document, location and a single contact
# (docs/wapi-contract.md, "Basics"); everything else is PRO only.
LITE_KINDS = frozenset(
    {
        MessageKind.TEXT,
        MessageKind.IMAGE,
        MessageKind.AUDIO,
        MessageKind.VIDEO,
        MessageKind.DOCUMENT,
        MessageKind.LOCATION,
        MessageKind.CONTACT,
    }
)

_BLOCK_REASON_BY_STATE: dict[InstanceState, Reason] = {
    InstanceState.UNKNOWN: Reason.HEALTH_UNKNOWN,
    InstanceState.SESSION_INCOMPLETE: Reason.SESSION_INCOMPLETE,
    InstanceState.DEGRADED: Reason.TIMEOUT_OR_GATEWAY,
    InstanceState.DISCONNECTED: Reason.INSTANCE_DISCONNECTED,
}

# Reasons specific enough to be reported instead of the state's generic one.
_SPECIFIC = frozenset(
    {
        Reason.DELIVERY_STALLED,
        Reason.TOKEN_INVALID,
        Reason.INSTANCE_NOT_FOUND,
        Reason.RESTARTING,
        Reason.PAIRING_IN_PROGRESS,
    }
)


def plan_allows(plan: Plan, kind: MessageKind) -> bool:
    return plan is Plan.PRO or kind in LITE_KINDS


def block_reason(state: InstanceState, reason: str, plan: Plan, kind: MessageKind) -> Reason | None:
    """None when the send may go to the provider; otherwise the reason it is blocked.

    The plan is checked first: a retry can never fix it, while health can recover.
    Only CONNECTED passes; DEGRADED is blocked too (the old preflight let it through).
    """
    if not plan_allows(plan, kind):
        return Reason.NOT_SUPPORTED_BY_PLAN
    if state is InstanceState.CONNECTED:
        return None
    if reason in _SPECIFIC:
        return Reason(reason)
    return _BLOCK_REASON_BY_STATE[state]
