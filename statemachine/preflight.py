"""Send preflight: may this instance send this kind, right now? Pure and O(1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

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
        Reason.WAITING_FOR_MESSAGE,
        # The providers' own session reasons (statemachine/providers.py): each has its own remedy.
        Reason.SESSION_NEEDS_RESTORE,
        Reason.LOGGED_OUT,
        Reason.QR_REFUSED,
        Reason.PHONE_OFFLINE,
    }
)


# Every reason `block_reason` can give for the instance (its state, its specific reason, its
# webhooks), and the plan's: the one list the stores of blocked sends and the hold read from.
INSTANCE_BLOCKS = frozenset(_BLOCK_REASON_BY_STATE.values()) | _SPECIFIC | {Reason.WEBHOOKS_UNCONFIGURED}
BLOCK_REASONS = INSTANCE_BLOCKS | {Reason.NOT_SUPPORTED_BY_PLAN}


def plan_allows(plan: Plan, kind: MessageKind) -> bool:
    return plan is Plan.PRO or kind in LITE_KINDS


def block_reason(
    state: InstanceState, reason: str, plan: Plan, kind: MessageKind, *, webhooks_blocked: bool = False
) -> Reason | None:
    """None when the send may go to the provider; otherwise the reason it is blocked.

    The plan is checked first: a retry can never fix it, while health can recover.
    Only CONNECTED passes; DEGRADED is blocked too (the old preflight let it through). A CONNECTED
    instance whose delivery cannot be confirmed passes unless webhooks are required
    (`webhooks_blocked`, from `webhooks_block_sends`).
    """
    if not plan_allows(plan, kind):
        return Reason.NOT_SUPPORTED_BY_PLAN
    if state is InstanceState.CONNECTED:
        return Reason.WEBHOOKS_UNCONFIGURED if webhooks_blocked else None
    if reason in _SPECIFIC:
        return Reason(reason)
    return _BLOCK_REASON_BY_STATE[state]


# --- webhooks: can this instance's deliveries be confirmed? -----------------------------------


class WebhookEvidence(StrEnum):
    """What says that W-API's receipts reach this service, strongest first."""

    RECEIPTS = "RECEIPTS"  # receipts arrived within the evidence window: evidently wired, however set up
    CONFIGURED = "CONFIGURED"  # set by this service and read back pointing at its bridge
    FAILED = "FAILED"  # W-API refused the URLs, they could not be read back, or they point elsewhere
    UNCONFIGURED = "UNCONFIGURED"  # never configured by this service, and no receipt lately


CONFIRMING = frozenset({WebhookEvidence.RECEIPTS, WebhookEvidence.CONFIGURED})


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    # Block sends (WEBHOOKS_UNCONFIGURED) instead of only saying that delivery cannot be confirmed.
    require: bool = False
    # A receipt younger than this proves the webhooks reach us, whatever was configured.
    evidence_window: float = 86_400.0


def webhook_evidence(
    webhooks_state: str, last_receipt_at: datetime | None, now: datetime, policy: WebhookPolicy
) -> WebhookEvidence:
    """From stored state only: the webhook state this service recorded (set/verified/checked) and
    the newest receipt's time. Recent receipts win over whatever was (or was not) configured."""
    if last_receipt_at is not None and (now - last_receipt_at).total_seconds() <= policy.evidence_window:
        return WebhookEvidence.RECEIPTS
    if webhooks_state == "CONFIGURED":
        return WebhookEvidence.CONFIGURED
    if webhooks_state == "FAILED":
        return WebhookEvidence.FAILED
    return WebhookEvidence.UNCONFIGURED


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """What an instance's health says to a caller: the reason shown, whether a send passes, and
    whether its deliveries can be confirmed."""

    reason: str
    can_send: bool
    delivery_confirmable: bool
    evidence: WebhookEvidence


def health_verdict(
    state: InstanceState,
    reason: str,
    webhooks_state: str,
    last_receipt_at: datetime | None,
    now: datetime,
    policy: WebhookPolicy,
) -> HealthVerdict:
    """A CONNECTED instance is plainly healthy (its own reason, PHONE_CONFIRMED) only when its
    deliveries can be confirmed; otherwise its reason is WEBHOOKS_UNCONFIGURED and it may send only
    when webhooks are not required. Any other state keeps its own reason (it blocks sends anyway)."""
    evidence = webhook_evidence(webhooks_state, last_receipt_at, now, policy)
    confirmable = evidence in CONFIRMING
    if state is InstanceState.CONNECTED and not confirmable:
        return HealthVerdict("WEBHOOKS_UNCONFIGURED", not policy.require, False, evidence)
    return HealthVerdict(reason, state is InstanceState.CONNECTED, confirmable, evidence)


def webhooks_block_sends(
    webhooks_state: str, last_receipt_at: datetime | None, now: datetime, policy: WebhookPolicy
) -> bool:
    """The preflight's part of the rule: only with `policy.require`, only from stored state."""
    return policy.require and webhook_evidence(webhooks_state, last_receipt_at, now, policy) not in CONFIRMING
