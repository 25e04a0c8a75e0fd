"""The status plan is pure: what each event writes (decision, CAS update, change-log entries), the
same for one event as inside a batch; and the stuck rule the sweep executes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from statemachine.changes import ChangeKind
from statemachine.domain import MessageState, Reason
from statemachine.status_plan import (
    StatusEvent,
    StatusFacts,
    StatusOutcome,
    first_per_key,
    merge,
    plan_chain,
    plan_status,
    plan_statuses,
)
from statemachine.stuck import becomes_stuck, mark, stalls, stuck_run

S = MessageState
AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NOW = AT + timedelta(seconds=5)


def _facts(state: MessageState = S.SENT, *, pid: str = "P-1", version: int = 2, reason: str = "") -> StatusFacts:
    return StatusFacts(
        id=f"m-{pid}",
        instance_id="I-1",
        to="5515981121710",
        provider_message_id=pid,
        state=state,
        attempts=1,
        version=version,
        created_at=AT,
        sent_at=AT,
        failure_reason="",
        failure_detail="",
        trace_id="t" * 32,
        span_id="s" * 16,
        instance_reason=reason,
    )


def _event(status: MessageState, pid: str = "P-1") -> StatusEvent:
    return StatusEvent("I-1", pid, status, AT)


def test_a_delivery_moves_the_message_with_one_cas_update_and_one_log_entry() -> None:
    step = plan_status(0, _event(S.DELIVERED), _facts(), now=NOW)
    assert step.outcome is StatusOutcome.APPLIED
    assert step.update is not None
    assert (step.update.from_version, step.update.to_version, step.update.state) == (2, 3, S.DELIVERED)
    assert [(c.from_state, c.to_state, c.applied) for c in step.update.entries] == [(S.SENT, S.DELIVERED, True)]
    assert step.update.updated_at == NOW
    assert [(c.kind, c.payload["version"], c.payload["to_state"]) for c in step.log] == [
        (ChangeKind.MESSAGE_STATE_CHANGED, 3, "DELIVERED")
    ]
    assert step.message_change is not None
    assert step.message_change.span_id == "s" * 16
    assert not step.lifts_stall
    assert not step.parked


def test_a_late_status_is_recorded_on_the_message_without_moving_it_or_logging() -> None:
    step = plan_status(0, _event(S.DELIVERED), _facts(S.READ), now=NOW)
    assert step.outcome is StatusOutcome.STALE
    assert step.event_reason == "STALE_STATUS"
    assert step.update is not None
    assert step.update.state is S.READ
    assert [(c.to_state, c.applied, c.reason) for c in step.update.entries] == [
        (S.DELIVERED, False, Reason.STALE_STATUS)
    ]
    assert step.log == ()
    # No event, no version: the version moves only with the change-log events.
    assert (step.update.from_version, step.update.to_version) == (2, 2)


def test_a_failed_status_writes_the_failure_fields() -> None:
    step = plan_status(0, _event(S.FAILED), _facts(), now=NOW)
    assert step.update is not None
    assert (step.update.state, step.update.failure_reason) == (S.FAILED, Reason.PROVIDER_ERROR.value)
    assert [c.kind for c in step.log] == [ChangeKind.MESSAGE_FAILED]
    assert step.log[0].payload["failure_reason"] == Reason.PROVIDER_ERROR.value


def test_a_status_for_a_message_not_stored_is_parked_and_writes_nothing() -> None:
    step = plan_status(0, _event(S.DELIVERED), None, now=NOW)
    assert step.parked
    assert step.update is None
    assert step.log == ()
    assert step.event_reason == "UNKNOWN_MESSAGE"


def test_a_delivery_on_a_stalled_instance_lifts_the_stall_or_is_deferred_to_the_locked_path() -> None:
    stalled = _facts(reason=Reason.DELIVERY_STALLED.value)
    assert plan_status(0, _event(S.DELIVERED), stalled, now=NOW, allow_lift=False).outcome is StatusOutcome.DEFER
    lifted = plan_status(0, _event(S.DELIVERED), stalled, now=NOW, allow_lift=True)
    assert lifted.outcome is StatusOutcome.APPLIED
    assert lifted.lifts_stall
    # A "sent" confirmation on a stalled instance lifts nothing and stays in the batch.
    confirm = plan_status(0, _event(S.SENT), stalled, now=NOW, allow_lift=False)
    assert confirm.outcome is StatusOutcome.STALE
    assert not confirm.lifts_stall


def test_the_plan_of_one_event_is_the_same_as_inside_a_batch() -> None:
    facts = {("I-1", "P-1"): _facts(), ("I-1", "P-2"): _facts(S.DELIVERED, pid="P-2")}
    batch = plan_statuses([(0, _event(S.DELIVERED)), (1, _event(S.READ, "P-2"))], facts, now=NOW)
    alone = plan_statuses([(1, _event(S.READ, "P-2"))], facts, now=NOW)
    assert batch.steps[1] == alone.steps[0]
    assert [u.message_id for u in batch.updates] == ["m-P-1", "m-P-2"]


def test_a_second_status_of_a_message_waits_for_the_next_round() -> None:
    keys = ["a", "b", "a", "a", "c", "b"]
    first, later = first_per_key(range(len(keys)), keys.__getitem__)
    assert (first, later) == ([0, 1, 4], [2, 3, 5])


def test_parked_statuses_are_chained_in_rank_order_and_merged_into_one_update() -> None:
    steps = plan_chain(_facts(), [_event(S.READ), _event(S.DELIVERED)], now=NOW)
    assert [(s.change.from_state, s.change.to_state) for s in steps if s.change] == [
        (S.SENT, S.DELIVERED),
        (S.DELIVERED, S.READ),
    ]
    merged = merge(steps)
    assert merged is not None
    assert (merged.from_version, merged.to_version, merged.state, len(merged.entries)) == (2, 4, S.READ, 2)
    assert [c.payload["version"] for s in steps for c in s.log] == [3, 4]


def test_the_stuck_rule() -> None:
    cutoff = AT
    before = AT - timedelta(seconds=1)
    assert becomes_stuck(S.SENT, before, None, cutoff)
    assert becomes_stuck(S.QUEUED, before, None, cutoff)
    assert not becomes_stuck(S.SENT, AT, None, cutoff)  # not past the window yet
    assert not becomes_stuck(S.SENT, before, before, cutoff)  # marked once only
    assert not becomes_stuck(S.DELIVERED, before, None, cutoff)
    m = mark(replace(_facts(), version=3), S.SENT, NOW)
    assert (m.stuck_at, m.change.kind, m.change.payload["stuck_at"]) == (NOW, ChangeKind.MESSAGE_STUCK, NOW)


def test_a_run_of_stuck_messages_stalls_only_without_a_delivery_among_them() -> None:
    sent = [AT + timedelta(seconds=n) for n in (3, 2, 1)]
    assert stuck_run(sent, None) == 3
    assert stalls(sent, None, 3)
    assert stuck_run(sent, AT + timedelta(seconds=1.5)) == 2
    assert not stalls(sent, AT + timedelta(seconds=1.5), 3)
    assert not stalls(sent[:2], None, 3)


def test_leaving_a_stall_restarts_the_stuck_run_evidence() -> None:
    from statemachine.domain import InstanceState
    from statemachine.instance_machine import InstanceTrigger, decide_instance

    stalled = (InstanceState.DEGRADED, Reason.DELIVERY_STALLED.value, "+5511999990000")
    assert decide_instance(*stalled, InstanceTrigger.CLEAR_STALL).ends_stall
    assert decide_instance(*stalled, InstanceTrigger.REPORT_DELIVERY_RESUMED).ends_stall
    assert decide_instance(*stalled, InstanceTrigger.REPORT_RECONNECTED, new_phone="5511999990000").ends_stall
    assert not decide_instance(*stalled, InstanceTrigger.REPORT_GATEWAY_FAILURE).ends_stall  # the stall stays
    connected = (InstanceState.CONNECTED, Reason.PHONE_CONFIRMED.value, "+5511999990000")
    assert not decide_instance(*connected, InstanceTrigger.REPORT_DELIVERY_STALLED).ends_stall
