"""The stuck rule and the stall it leads to: which messages become stuck, what is written, and when
a run of stuck messages stalls an instance. Pure; the store executes it (`Sweeps.mark_stuck`;
the stall of stuck runs through the jobs' unit of work, services/app/jobs.py `stall_stuck_runs`).

Where DELIVERY_STALLED is set and cleared — every time through the instance machine
(statemachine/instance_machine.py), written by the store's one instance-transition writer
(`instances.apply_instance_triggers`):

- set by REPORT_DELIVERY_STALLED: the sweep, when `stuck_run_stalls` (below) holds; and the learned
  stall test (statemachine/detection.py) through services/app/stall_watch.py;
- cleared by REPORT_DELIVERY_RESUMED when a delivery status arrives (`lifts_stall` in
  message_machine.py, planned by status_plan.py, run next to the status write); by the sweep when
  a delivery raced the stall (`contradicts`, below: the delivery committed while the stall's
  transaction was open, so neither saw the other); by CLEAR_STALL
  (the operator's ClearStall), by REPORT_RECONNECTED (a connection event), and replaced by
  BEGIN_RESTART / BEGIN_PAIRING.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from statemachine import changes as change_log
from statemachine.domain import MessageState
from statemachine.message_machine import stuck_run_stalls

# Handed to W-API and not delivered: both can get stuck (a queued message may never leave the queue).
HANDED_OVER: tuple[MessageState, ...] = (MessageState.SENT, MessageState.QUEUED)


def becomes_stuck(state: MessageState, sent_at: datetime | None, stuck_at: datetime | None, cutoff: datetime) -> bool:
    """Handed over before `cutoff`, no delivery since, not marked yet: it becomes stuck, once."""
    return state in HANDED_OVER and stuck_at is None and sent_at is not None and sent_at < cutoff


@dataclass(frozen=True, slots=True)
class StuckMark:
    """What marking one message writes: `stuck_at` and its change-log entry."""

    message_id: str
    stuck_at: datetime
    change: change_log.Change


def mark(msg: change_log.MessageFacts, state: MessageState, now: datetime) -> StuckMark:
    return StuckMark(msg.id, now, change_log.message_stuck(msg, now, state.value))


def stuck_run(newest_stuck: Sequence[datetime], last_delivery: datetime | None) -> int:
    """Of an instance's newest stuck messages (sent after its latest stall ended), how many were
    sent after its latest delivery status: the run of stuck messages with no delivery between."""
    return sum(1 for sent_at in newest_stuck if last_delivery is None or sent_at > last_delivery)


def stalls(newest_stuck: Sequence[datetime], last_delivery: datetime | None, threshold: int) -> bool:
    return stuck_run_stalls(stuck_run(newest_stuck, last_delivery), threshold)


# How long a stall's decision can take from its read to its commit (the sweep's one transaction,
# the stall watch's check), with room to spare: a delivery received within it may have been
# written while the stall was being decided, and then neither side saw the other.
STALL_RACE_WINDOW = timedelta(seconds=30)


def contradicts(stalled_at: datetime, delivered_at: datetime | None) -> bool:
    """A delivery received after the stall's decision began contradicts it: had it come after the
    commit, it would have lifted the stall itself (`lifts_stall`); the sweep lifts it instead."""
    return delivered_at is not None and delivered_at > stalled_at - STALL_RACE_WINDOW
