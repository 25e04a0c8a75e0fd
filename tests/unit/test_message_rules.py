"""The message rules every write path stores: what a decided transition does to the record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from statemachine.domain import InstanceState, MessageState, Reason, StateChange
from statemachine.instance_machine import InstanceTrigger, decide_instance
from statemachine.message_machine import (
    MessageTrigger,
    apply_status,
    lifts_stall,
    outcome_unknown,
    send_outcome,
    stuck_run_stalls,
    transition_message,
)
from tests.records import message_record

S = MessageState
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_accept_records_the_provider_id_and_the_send_time() -> None:
    msg = message_record(id="m1", state=S.PENDING, at=AT - timedelta(seconds=1))
    after = send_outcome(msg, provider_message_id="3EB0AA", failure=None, detail="", source="send", at=AT)
    assert after is not None
    assert (after.state, after.provider_message_id, after.sent_at, after.updated_at) == (S.SENT, "3EB0AA", AT, AT)
    assert after.version == msg.version + 1
    assert after.history[-1] == StateChange(S.PENDING, S.SENT, Reason.PROVIDER_ACCEPTED, "send", AT)
    assert msg.state is S.PENDING  # the stored row is not touched until the store writes `after`
    assert len(msg.history) == 1


def test_a_2xx_without_an_id_is_never_sent() -> None:
    msg = message_record(id="m2", state=S.PENDING)
    after = send_outcome(msg, provider_message_id=None, failure=None, detail="no id", source="send", at=AT)
    assert after is not None
    assert (after.state, after.failure_reason) == (S.FAILED, "PROVIDER_NO_MESSAGE_ID")
    assert transition_message(msg, MessageTrigger.ACCEPT, reason=Reason.PROVIDER_ACCEPTED, source="s", at=AT) is None


def test_a_provider_failure_keeps_its_reason_and_a_bounded_detail() -> None:
    msg = message_record(id="m3", state=S.PENDING)
    after = send_outcome(
        msg, provider_message_id=None, failure=Reason.PROVIDER_ERROR, detail="x" * 5000, source="send", at=AT
    )
    assert after is not None
    assert (after.state, after.failure_reason, len(after.failure_detail)) == (S.FAILED, "PROVIDER_ERROR", 1000)
    assert after.history[-1].reason == Reason.PROVIDER_ERROR


@pytest.mark.parametrize("state", [S.SENT, S.DELIVERED, S.FAILED])
def test_an_outcome_for_a_message_no_longer_pending_changes_nothing(state: MessageState) -> None:
    msg = message_record(id="m4", state=state)
    assert send_outcome(msg, provider_message_id="3EB0", failure=None, detail="", source="send", at=AT) is None
    assert outcome_unknown(msg, at=AT) is None


def test_outcome_unknown_fails_a_pending_message_honestly() -> None:
    after = outcome_unknown(message_record(id="m5", state=S.PENDING), at=AT)
    assert after is not None
    assert (after.state, after.failure_reason, after.history[-1].source) == (S.FAILED, "OUTCOME_UNKNOWN", "reconciler")
    assert after.provider_message_id is None


def test_retry_starts_a_new_attempt_from_failed_only() -> None:
    failed = message_record(
        id="m6", state=S.FAILED, failure_reason="PROVIDER_ERROR", failure_detail="boom", provider_message_id="3EB0"
    )
    after = transition_message(
        failed,
        MessageTrigger.RETRY,
        reason=Reason.RETRY_REQUESTED,
        source="retry",
        at=AT,
        trace_ids=("a" * 32, "b" * 16),
    )
    assert after is not None
    assert (after.state, after.attempts, after.failure_reason, after.failure_detail) == (S.PENDING, 2, "", "")
    assert after.provider_message_id is None
    assert (after.trace_id, after.span_id) == ("a" * 32, "b" * 16)
    sent = message_record(id="m7", state=S.SENT)
    assert transition_message(sent, MessageTrigger.RETRY, reason=Reason.RETRY_REQUESTED, source="r", at=AT) is None


def test_statuses_move_forward_and_a_stale_one_is_kept_unapplied() -> None:
    sent = message_record(id="m8", state=S.SENT)
    read = apply_status(sent, S.READ, source="webhook", at=AT, now=AT)
    assert (read.state, read.history[-1].applied, read.version) == (S.READ, True, sent.version + 1)
    late = apply_status(read, S.DELIVERED, source="webhook", at=AT, now=AT)
    assert (late.state, late.version) == (S.READ, read.version)
    assert (late.history[-1].to_state, late.history[-1].applied, late.history[-1].reason) == (
        S.DELIVERED,
        False,
        Reason.STALE_STATUS,
    )
    failed = apply_status(sent, S.FAILED, source="webhook", at=AT, now=AT)
    assert (failed.state, failed.failure_reason) == (S.FAILED, "PROVIDER_ERROR")


def test_the_stall_rule_sets_and_lifts_delivery_stalled() -> None:
    assert not stuck_run_stalls(2, 3)
    assert stuck_run_stalls(3, 3)
    stalled = decide_instance(
        InstanceState.CONNECTED, Reason.PHONE_CONFIRMED, "5511", InstanceTrigger.REPORT_DELIVERY_STALLED
    )
    assert (stalled.to_state, stalled.reason) == (InstanceState.DEGRADED, Reason.DELIVERY_STALLED)
    delivered = StateChange(S.SENT, S.DELIVERED, Reason.WEBHOOK_STATUS, "webhook", AT)
    stale = StateChange(S.READ, S.DELIVERED, Reason.STALE_STATUS, "webhook", AT, applied=False)
    assert lifts_stall(delivered, stalled.reason)
    assert not lifts_stall(stale, stalled.reason)
    assert not lifts_stall(delivered, "TIMEOUT_OR_GATEWAY")
