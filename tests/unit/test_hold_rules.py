"""The hold's pure rules (statemachine/hold.py): what may wait, until when, and what it becomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from statemachine import hold as rules
from statemachine.domain import MessageKind, MessageRecord, MessageState, Reason, StateChange
from statemachine.hold import HoldWish, WaitsFor

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def held() -> MessageRecord:
    return MessageRecord(
        "m1", "i1", "5515981121710", MessageKind.TEXT, MessageState.HELD, "", "", None, 1, "k", "h", {},
        NOW, NOW, None, None, [StateChange("", MessageState.HELD, Reason.SEND_INTERVAL, "hold", NOW)], 1,
    )  # fmt: skip


def test_bad_hold_values_are_named_by_field() -> None:
    assert rules.validate_hold(HoldWish(hold_for=timedelta(seconds=-1)), NOW) == [("hold_for", "must not be negative")]
    assert rules.validate_hold(HoldWish(hold_for=timedelta(days=31)), NOW) == [("hold_for", "at most 30 days")]
    far = HoldWish(send_at=NOW + timedelta(days=31))
    assert rules.validate_hold(far, NOW) == [("send_at", "at most 30 days ahead")]
    assert rules.validate_hold(HoldWish(hold_for=timedelta(days=30), send_at=NOW + timedelta(days=30)), NOW) == []


def test_a_zero_hold_is_no_hold_and_expiry_counts_from_send_at() -> None:
    assert not HoldWish(hold_for=timedelta(0)).wanted
    assert HoldWish(send_at=NOW).wanted
    assert rules.expiry(HoldWish(hold_for=timedelta(minutes=5)), NOW) == NOW + timedelta(minutes=5)
    at = NOW + timedelta(hours=2)
    assert rules.expiry(HoldWish(send_at=at), NOW) == at + rules.DEFAULT_HOLD_AFTER_SEND_AT
    assert rules.expiry(HoldWish(hold_for=timedelta(minutes=1), send_at=at), NOW) == at + timedelta(minutes=1)


def test_only_blocks_a_wait_can_clear_are_held() -> None:
    assert rules.holdable(Reason.SESSION_INCOMPLETE)
    assert rules.holdable(Reason.SEND_INTERVAL, paced=True)
    for never in (Reason.RECIPIENT_OPTED_OUT, Reason.NOT_ON_WHATSAPP, Reason.NOT_SUPPORTED_BY_PLAN):
        assert not rules.holdable(never)
    assert not rules.holdable(Reason.INSTANCE_NOT_FOUND)


def test_due_times_follow_the_policy_the_schedule_or_the_recheck_never_past_expiry() -> None:
    msg = held()
    end = NOW + timedelta(minutes=1)
    paced = rules.new_hold(msg, Reason.SEND_INTERVAL, paced=True, now=NOW, expires_at=end, retry_after=4.5)
    assert (paced.waits_for, paced.due_at) == (WaitsFor.POLICY, NOW + timedelta(seconds=4.5))
    health = rules.new_hold(msg, Reason.SESSION_INCOMPLETE, paced=False, now=NOW, expires_at=end)
    assert (health.waits_for, health.due_at) == (WaitsFor.HEALTH, NOW + rules.DEFAULT_RECHECK)
    late = rules.new_hold(msg, Reason.SEND_INTERVAL, paced=True, now=NOW, expires_at=end, retry_after=3600)
    assert late.due_at == end
    at = NOW + timedelta(seconds=20)
    scheduled = rules.new_hold(msg, Reason.SCHEDULED, paced=False, now=NOW, expires_at=end, not_before=at)
    assert (scheduled.waits_for, scheduled.due_at) == (WaitsFor.SCHEDULE, at)
    confirm = rules.new_hold(msg, Reason.SESSION_INCOMPLETE, paced=False, now=NOW, expires_at=end, confirm_release=True)
    assert confirm.needs_release
    assert rules.postponed(confirm, NOW).due_at == end  # waits for the operator until its expiry
    assert not rules.new_hold(
        msg, Reason.SEND_INTERVAL, paced=True, now=NOW, expires_at=end, confirm_release=True
    ).needs_release


def test_expired_and_cancelled_end_failed_with_their_reasons() -> None:
    end = NOW + timedelta(minutes=1)
    expired = rules.expire(held(), Reason.SESSION_INCOMPLETE, end, end)
    assert expired is not None
    assert (expired.state, expired.failure_reason) == (MessageState.FAILED, "SESSION_INCOMPLETE")
    assert "hold expired" in expired.failure_detail
    scheduled = rules.expire(held(), Reason.SCHEDULED, end, end)
    assert scheduled is not None
    assert scheduled.failure_reason == "HOLD_EXPIRED"
    cancelled = rules.cancel(held(), "crm", NOW)
    assert cancelled is not None
    assert (cancelled.state, cancelled.failure_reason, cancelled.version) == (MessageState.FAILED, "CANCELLED", 2)
    released = rules.release(held(), NOW)
    assert released is not None
    assert released.state is MessageState.PENDING
    assert rules.cancel(released, "crm", NOW) is None  # only a HELD message can be cancelled
    again = rules.hold_again(released, Reason.SESSION_INCOMPLETE, NOW)
    assert again is not None
    assert again.state is MessageState.HELD


def test_a_policy_wait_past_the_hold_expiry_is_not_held_but_ends_at_once() -> None:
    end = NOW + timedelta(minutes=2)
    assert not rules.outlasts(120, NOW, end)  # allowed right at the expiry: worth waiting
    assert rules.outlasts(120.001, NOW, end)
    midnight = datetime(2026, 12, 8, tzinfo=UTC)  # the day's new-recipient budget is spent
    assert rules.outlasts((midnight - NOW).total_seconds(), NOW, end)
    failed = rules.give_up(held(), Reason.NEW_RECIPIENTS_DAILY, midnight, end, NOW)
    assert failed is not None
    assert (failed.state, failed.failure_reason) == (MessageState.FAILED, Reason.NEW_RECIPIENTS_DAILY.value)
    assert "after the hold's expiry" in failed.failure_detail
