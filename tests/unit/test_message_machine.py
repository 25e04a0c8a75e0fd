"""Message state machine: every (state, trigger) pair against a table written here by hand.

The expected table is deliberately *not* derived from statemachine.message_machine.MESSAGE_TRANSITIONS:
a wrong line there must make these tests fail.
"""

from __future__ import annotations

import pytest

from statemachine.domain import MessageState
from statemachine.message_machine import MessageTrigger, can_message, decide_message, decide_status

S = MessageState
TRIGGERS = (
    "accept",
    "queue",
    "leave_queue",
    "fail",
    "confirm_sent",
    "deliver",
    "read",
    "play",
    "retry",
    "hold",
    "release",
    "drop",
)

# (state, trigger) → state after the trigger. Pairs not listed are refused (message stays put).
ALLOWED: dict[tuple[MessageState, str], MessageState] = {
    (S.PENDING, "accept"): S.SENT,
    (S.PENDING, "fail"): S.FAILED,
    (S.PENDING, "queue"): S.QUEUED,  # W-API answered only a queue handle: not SENT
    (S.QUEUED, "leave_queue"): S.SENT,  # the delivery webhook named its real id
    (S.QUEUED, "fail"): S.FAILED,
    # Queued WITH the provider's id (Z-API's 200, Evolution's PENDING): its acks move it on.
    (S.QUEUED, "confirm_sent"): S.SENT,
    (S.QUEUED, "deliver"): S.DELIVERED,
    (S.QUEUED, "read"): S.READ,
    (S.QUEUED, "play"): S.PLAYED,
    (S.SENT, "fail"): S.FAILED,
    (S.SENT, "confirm_sent"): S.SENT,  # a provider "sent" on a SENT message: applied, nothing moves
    (S.SENT, "deliver"): S.DELIVERED,
    (S.SENT, "read"): S.READ,  # READ may come without DELIVERED
    (S.SENT, "play"): S.PLAYED,
    (S.DELIVERED, "read"): S.READ,
    (S.DELIVERED, "play"): S.PLAYED,
    (S.READ, "play"): S.PLAYED,
    (S.FAILED, "retry"): S.PENDING,
    # Holds: claimed by the dispatcher, blocked again at dispatch, expired or cancelled.
    (S.HELD, "release"): S.PENDING,
    (S.PENDING, "hold"): S.HELD,
    (S.HELD, "drop"): S.FAILED,
}

MATRIX = [(state, trigger) for state in MessageState for trigger in TRIGGERS]


def test_matrix_covers_every_state_and_trigger() -> None:
    assert len(MATRIX) == 8 * 12
    assert {s for s, _ in ALLOWED} <= set(MessageState)
    assert {t for _, t in ALLOWED} <= set(TRIGGERS)


@pytest.mark.parametrize(("state", "trigger"), MATRIX, ids=[f"{s}-{t}" for s, t in MATRIX])
def test_decide_message_matrix(state: MessageState, trigger: str) -> None:
    decision = decide_message(state, MessageTrigger(trigger))
    assert decision.from_state is state
    if (state, trigger) in ALLOWED:
        assert decision.applied is True
        assert decision.to_state is ALLOWED[(state, trigger)]
    else:
        assert decision.applied is False
        assert decision.to_state is state


@pytest.mark.parametrize(("state", "trigger"), MATRIX, ids=[f"{s}-{t}" for s, t in MATRIX])
def test_can_message_agrees_with_table(state: MessageState, trigger: str) -> None:
    assert can_message(state, MessageTrigger(trigger)) is ((state, trigger) in ALLOWED)


def test_to_state_is_a_message_state_not_a_plain_string() -> None:
    decision = decide_message(S.PENDING, MessageTrigger("accept"))
    assert isinstance(decision.to_state, MessageState)
    assert type(decision.to_state) is MessageState


# --- forward-only rules, spelled out -----------------------------------------------------------


def test_delivered_after_read_is_not_applied_and_stays_read() -> None:
    decision = decide_message(S.READ, MessageTrigger("deliver"))
    assert (decision.applied, decision.to_state) == (False, S.READ)


def test_read_may_arrive_without_delivered() -> None:
    decision = decide_message(S.SENT, MessageTrigger("read"))
    assert (decision.applied, decision.to_state) == (True, S.READ)


def test_played_after_read() -> None:
    decision = decide_message(S.READ, MessageTrigger("play"))
    assert (decision.applied, decision.to_state) == (True, S.PLAYED)


def test_played_is_final() -> None:
    for trigger in TRIGGERS:
        decision = decide_message(S.PLAYED, MessageTrigger(trigger))
        assert (decision.applied, decision.to_state) == (False, S.PLAYED), trigger


@pytest.mark.parametrize("trigger", [t for t in TRIGGERS if t != "retry"])
def test_failed_only_leaves_through_retry(trigger: str) -> None:
    decision = decide_message(S.FAILED, MessageTrigger(trigger))
    assert (decision.applied, decision.to_state) == (False, S.FAILED)


def test_failed_retry_goes_back_to_pending() -> None:
    decision = decide_message(S.FAILED, MessageTrigger("retry"))
    assert (decision.applied, decision.to_state) == (True, S.PENDING)


@pytest.mark.parametrize("state", [S.SENT, S.DELIVERED, S.READ, S.PLAYED, S.FAILED])
def test_accept_is_refused_once_past_pending(state: MessageState) -> None:
    decision = decide_message(state, MessageTrigger("accept"))
    assert (decision.applied, decision.to_state) == (False, state)


@pytest.mark.parametrize("state", [S.PENDING, S.SENT, S.DELIVERED, S.READ, S.PLAYED])
def test_retry_only_for_failed(state: MessageState) -> None:
    decision = decide_message(state, MessageTrigger("retry"))
    assert (decision.applied, decision.to_state) == (False, state)


@pytest.mark.parametrize("state", [S.DELIVERED, S.READ, S.PLAYED])
def test_a_late_failure_does_not_undo_a_delivery(state: MessageState) -> None:
    decision = decide_message(state, MessageTrigger("fail"))
    assert (decision.applied, decision.to_state) == (False, state)


def test_no_status_moves_a_message_backwards() -> None:
    rank = {S.PENDING: 0, S.SENT: 1, S.DELIVERED: 2, S.READ: 3, S.PLAYED: 4}
    for state in rank:
        for trigger in ("confirm_sent", "deliver", "read", "play"):
            decision = decide_message(state, MessageTrigger(trigger))
            if decision.applied:
                assert rank[decision.to_state] >= rank[state], (state, trigger)


def test_full_happy_path() -> None:
    state = S.PENDING
    for trigger, expected in [
        ("accept", S.SENT),
        ("confirm_sent", S.SENT),
        ("deliver", S.DELIVERED),
        ("read", S.READ),
        ("play", S.PLAYED),
    ]:
        decision = decide_message(state, MessageTrigger(trigger))
        assert decision.applied, trigger
        assert decision.to_state is expected
        state = decision.to_state


def test_failed_retry_then_accept() -> None:
    state = S.PENDING
    for trigger, expected in [("fail", S.FAILED), ("retry", S.PENDING), ("accept", S.SENT)]:
        decision = decide_message(state, MessageTrigger(trigger))
        assert (decision.applied, decision.to_state) == (True, expected), trigger
        state = decision.to_state


# --- provider status reports -------------------------------------------------------------------

PROVIDER_STATUSES = (S.SENT, S.DELIVERED, S.READ, S.PLAYED, S.FAILED)

# (state, provider status) → state after it. Not listed: not applied (STALE_STATUS), unchanged.
STATUS_ALLOWED: dict[tuple[MessageState, MessageState], MessageState] = {
    (S.PENDING, S.FAILED): S.FAILED,
    (S.QUEUED, S.FAILED): S.FAILED,  # a queued message W-API reports failed
    # Queued with the provider's id (Z-API, Evolution PENDING): moved on only by its own statuses.
    (S.QUEUED, S.SENT): S.SENT,
    (S.QUEUED, S.DELIVERED): S.DELIVERED,
    (S.QUEUED, S.READ): S.READ,
    (S.QUEUED, S.PLAYED): S.PLAYED,
    (S.SENT, S.SENT): S.SENT,
    (S.SENT, S.DELIVERED): S.DELIVERED,
    (S.SENT, S.READ): S.READ,
    (S.SENT, S.PLAYED): S.PLAYED,
    (S.SENT, S.FAILED): S.FAILED,
    (S.DELIVERED, S.READ): S.READ,
    (S.DELIVERED, S.PLAYED): S.PLAYED,
    (S.READ, S.PLAYED): S.PLAYED,
}
STATUS_MATRIX = [(state, status) for state in MessageState for status in PROVIDER_STATUSES]


@pytest.mark.parametrize(("state", "status"), STATUS_MATRIX, ids=[f"{s}-reported-{p}" for s, p in STATUS_MATRIX])
def test_decide_status_matrix(state: MessageState, status: MessageState) -> None:
    decision = decide_status(state, status)
    assert decision.from_state is state
    if (state, status) in STATUS_ALLOWED:
        assert decision.applied is True
        assert decision.to_state is STATUS_ALLOWED[(state, status)]
    else:
        assert decision.applied is False
        assert decision.to_state is state


def test_provider_status_never_confirms_a_pending_message() -> None:
    """Only `accept` (a provider answer carrying an id) makes PENDING into SENT; a webhook can't."""
    for status in (S.SENT, S.DELIVERED, S.READ, S.PLAYED):
        decision = decide_status(S.PENDING, status)
        assert (decision.applied, decision.to_state) == (False, S.PENDING), status


def test_provider_status_never_revives_a_failed_message() -> None:
    for status in PROVIDER_STATUSES:
        decision = decide_status(S.FAILED, status)
        assert (decision.applied, decision.to_state) == (False, S.FAILED), status
