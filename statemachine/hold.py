"""Holds: a send that may wait (`hold_for`) or must not go before a time (`send_at`). Pure.

A send with a hold that the send policy paces, or that an unhealthy instance blocks, is stored
HELD instead of refused; the dispatcher (services/app/holds.py) claims it when due, re-runs the
whole preflight and sends it, holds it again with the new reason, or ends it FAILED when its
hold expired. Blocks that waiting cannot clear (opt-out, NOT_ON_WHATSAPP, the plan, an unknown
instance) are refused at once, as without a hold. See docs/holds.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from statemachine.domain import MessageRecord, MessageState, Reason
from statemachine.message_machine import MessageTrigger, transition_message
from statemachine.preflight import INSTANCE_BLOCKS

MAX_HOLD = timedelta(days=30)  # the longest hold_for, and how far ahead send_at may be
# How long a send with only `send_at` may wait after it (blocked at that time).
DEFAULT_HOLD_AFTER_SEND_AT = timedelta(hours=1)
# How often a message held for an unhealthy instance is looked at again without a wake-up.
DEFAULT_RECHECK = timedelta(seconds=30)


class WaitsFor(StrEnum):
    """What a held message waits for."""

    POLICY = "POLICY"  # the send policy's pace (its RetryInfo says until when)
    HEALTH = "HEALTH"  # the instance to be healthy again (woken when it is CONNECTED)
    SCHEDULE = "SCHEDULE"  # the caller's send_at


# Instance-health blocks a wait can clear (the instance reconnects, is paired, is restored):
# all the preflight's instance blocks but an instance the provider does not know.
HEALTH_REASONS = INSTANCE_BLOCKS - {Reason.INSTANCE_NOT_FOUND}


@dataclass(frozen=True, slots=True)
class HoldWish:
    """What the caller asked: how long the send may wait, and not before when (both optional)."""

    hold_for: timedelta | None = None
    send_at: datetime | None = None

    @property
    def wanted(self) -> bool:
        return (self.hold_for is not None and self.hold_for > timedelta(0)) or self.send_at is not None


@dataclass(frozen=True, slots=True)
class Hold:
    """One held message's wait: when the dispatcher looks at it next, when it gives up, and why."""

    message_id: str
    instance_id: str
    recipient: str
    reason: Reason
    waits_for: WaitsFor
    due_at: datetime
    expires_at: datetime
    held_at: datetime
    # The instance's policy says an operator releases messages held for its health (ReleaseHeld).
    needs_release: bool = False


def validate_hold(wish: HoldWish, now: datetime) -> list[tuple[str, str]]:
    """(field, problem) for every value a hold cannot use."""
    problems: list[tuple[str, str]] = []
    if wish.hold_for is not None:
        if wish.hold_for < timedelta(0):
            problems.append(("hold_for", "must not be negative"))
        elif wish.hold_for > MAX_HOLD:
            problems.append(("hold_for", f"at most {MAX_HOLD.days} days"))
    if wish.send_at is not None and wish.send_at > now + MAX_HOLD:
        problems.append(("send_at", f"at most {MAX_HOLD.days} days ahead"))
    return problems


def expiry(wish: HoldWish, now: datetime) -> datetime:
    """When the hold gives up: hold_for after send_at (or after now), DEFAULT_HOLD_AFTER_SEND_AT
    after send_at when only send_at was given."""
    start = max(now, wish.send_at) if wish.send_at is not None else now
    wait = wish.hold_for if wish.hold_for is not None and wish.hold_for > timedelta(0) else DEFAULT_HOLD_AFTER_SEND_AT
    return start + wait


def holdable(reason: Reason | None, *, paced: bool = False) -> bool:
    """A block that waiting can clear: the send policy's pace, or the instance's health."""
    return reason is not None and (paced or reason in HEALTH_REASONS)


def waits_for(reason: Reason, *, paced: bool) -> WaitsFor:
    if reason is Reason.SCHEDULED:
        return WaitsFor.SCHEDULE
    return WaitsFor.POLICY if paced else WaitsFor.HEALTH


def next_due(
    waits: WaitsFor,
    now: datetime,
    expires_at: datetime,
    *,
    retry_after: float = 0.0,
    recheck: timedelta = DEFAULT_RECHECK,
) -> datetime:
    """When to look at the message again: the policy's RetryInfo, or the health re-check (a wake-up
    on reconnection comes sooner); never after the expiry (it is failed then)."""
    due = now + (timedelta(seconds=retry_after) if waits is WaitsFor.POLICY else recheck)
    return min(due, expires_at)


def new_hold(
    msg: MessageRecord,
    reason: Reason,
    *,
    paced: bool,
    now: datetime,
    expires_at: datetime,
    not_before: datetime | None = None,
    retry_after: float = 0.0,
    recheck: timedelta = DEFAULT_RECHECK,
    confirm_release: bool = False,
) -> Hold:
    waits = waits_for(reason, paced=paced)
    due = not_before if waits is WaitsFor.SCHEDULE and not_before else None
    if due is None:
        due = next_due(waits, now, expires_at, retry_after=retry_after, recheck=recheck)
    needs_release = confirm_release and waits is WaitsFor.HEALTH
    return Hold(msg.id, msg.instance_id, msg.to, reason, waits, due, expires_at, now, needs_release)


def expired(hold: Hold, now: datetime) -> bool:
    return now >= hold.expires_at


def outlasts(retry_after: float, now: datetime, expires_at: datetime) -> bool:
    """The send policy allows the send only after the hold's expiry (its RetryInfo time is later):
    waiting cannot succeed. The send is then refused at once (RESOURCE_EXHAUSTED + RetryInfo, as
    without a hold), or a held one ends FAILED now, instead of being held only to expire."""
    return now + timedelta(seconds=retry_after) > expires_at


def give_up(
    msg: MessageRecord, reason: Reason, retry_at: datetime, expires_at: datetime, now: datetime
) -> MessageRecord | None:
    """HELD (or PENDING at dispatch) → FAILED with the policy's reason, before the expiry: the
    policy allows the send only after it (`outlasts`)."""
    detail = f"the send policy allows it at {retry_at.isoformat()}, after the hold's expiry at {expires_at.isoformat()}"
    trigger = MessageTrigger.DROP if msg.state is MessageState.HELD else MessageTrigger.FAIL
    return transition_message(msg, trigger, reason=reason, source="dispatcher", at=now, failure_detail=detail)


def postponed(hold: Hold, now: datetime, recheck: timedelta = DEFAULT_RECHECK) -> Hold:
    """A health hold whose instance is still unhealthy, or that waits for the operator: looked at
    again later, without a state change (no event)."""
    due = hold.expires_at if hold.needs_release else min(now + recheck, hold.expires_at)
    return replace(hold, due_at=due)


def release(msg: MessageRecord, now: datetime) -> MessageRecord | None:
    """HELD → PENDING: the dispatcher claimed it and runs the send path."""
    return transition_message(msg, MessageTrigger.RELEASE, reason=Reason.HOLD_RELEASED, source="dispatcher", at=now)


def hold_again(msg: MessageRecord, reason: Reason, now: datetime) -> MessageRecord | None:
    """PENDING → HELD: the preflight at dispatch is blocked again by something a wait can clear."""
    return transition_message(msg, MessageTrigger.HOLD, reason=reason, source="dispatcher", at=now)


def expire(msg: MessageRecord, last_reason: Reason, expires_at: datetime, now: datetime) -> MessageRecord | None:
    """HELD (or PENDING at dispatch) → FAILED with the last blocking reason (HOLD_EXPIRED for a
    scheduled send that could not be looked at in time)."""
    reason = Reason.HOLD_EXPIRED if last_reason is Reason.SCHEDULED else last_reason
    detail = f"hold expired at {expires_at.isoformat()}; still blocked by {last_reason.value}"
    trigger = MessageTrigger.DROP if msg.state is MessageState.HELD else MessageTrigger.FAIL
    return transition_message(msg, trigger, reason=reason, source="dispatcher", at=now, failure_detail=detail)


def cancel(msg: MessageRecord, by: str, now: datetime) -> MessageRecord | None:
    """HELD → FAILED/CANCELLED (a terminal state every client already knows; see docs/holds.md)."""
    return transition_message(
        msg, MessageTrigger.DROP, reason=Reason.CANCELLED, source="cancel", at=now, failure_detail=f"cancelled by {by}"
    )
