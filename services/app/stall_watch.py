"""Feeds the learned stall test from the database and acts on its verdicts, off the send path.

Every replica keeps, per instance that is sending, a `DeliveryModel` refreshed once a tick from
three bounded, indexed reads (messages created since the last read; delivery/read webhooks, and
server acks — "sent" statuses and webhookDelivery bodies of our sends — received since the last
read). The database is the truth: a restarted or second replica
rebuilds the same model from the newest rows (bounded), so the model survives restarts and is
shared by replicas without a new write on the hot path. A stall verdict goes through the
instance machine (`report_delivery_stalled`); suspicion and "this instance is sending" start a
status probe (one in flight per instance, rate-limited by `probe_due`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.app.clock import utcnow
from statemachine.detection import Assessment, DeliveryModel, DetectionConfig, ProbePolicy, assess, probe_due
from statemachine.domain import InstanceRecord, InstanceState, MessageState
from statemachine.instance_machine import InstanceTrigger
from statemachine.ports import AckSample, InstanceChange, ReceiptSample, SendSample
from statemachine.store_ports import StallWatchStore

log = logging.getLogger("wapi_guard.stall_watch")


# Rows may commit a little after the time they carry: every read looks this far back again.
OVERLAP = timedelta(seconds=5)
READ_LIMIT = 1000
BOOTSTRAP_RECEIPTS = 512
BOOTSTRAP_SENDS = 2048
# Up to two acks per send (a "sent" status and a webhookDelivery).
BOOTSTRAP_ACKS = 2 * BOOTSTRAP_SENDS
SEEN_LIMIT = 8192


@dataclass(slots=True)
class _Watched:
    model: DeliveryModel
    sends_after: datetime
    receipts_after: datetime
    acks_after: datetime
    seen_sends: OrderedDict[str, None] = field(default_factory=OrderedDict)
    seen_receipts: OrderedDict[str, None] = field(default_factory=OrderedDict)
    seen_acks: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last_send_at: float | None = None
    probe: asyncio.Task[object] | None = None
    last_probe_at: float | None = None
    last: Assessment | None = None


def _remember(seen: OrderedDict[str, None], key: str) -> bool:
    """True the first time `key` is seen (bounded memory)."""
    if key in seen:
        return False
    seen[key] = None
    while len(seen) > SEEN_LIMIT:
        seen.popitem(last=False)
    return True


class StallWatch:
    def __init__(
        self,
        repo: StallWatchStore,
        *,
        probe: Callable[[str], Awaitable[object]],
        apply_change: Callable[[InstanceChange | None], None],
        config: DetectionConfig | None = None,
        policy: ProbePolicy | None = None,
        interval: float = 1.0,
    ) -> None:
        self.repo = repo
        self.config = config or DetectionConfig()
        self.policy = policy or ProbePolicy()
        self.interval = interval
        self._probe = probe
        self._apply_change = apply_change
        self._watched: dict[str, _Watched] = {}
        self._local_sends: dict[str, float] = {}
        # Whether a recipient is known not to be on WhatsApp (the number-check cache, wired by the
        # composition root): a send to them is no evidence against the session either way.
        self.absent: Callable[[str, str], bool] | None = None

    def note_send(self, instance_id: str) -> None:
        """This replica accepted a send: watch the instance from the next tick (an O(1) note)."""
        self._local_sends[instance_id] = time.time()

    def model(self, instance_id: str) -> DeliveryModel | None:
        """The delivery model this replica keeps for the instance (None: not watched)."""
        watched = self._watched.get(instance_id)
        return watched.model if watched else None

    def assessment(self, instance_id: str) -> Assessment | None:
        watched = self._watched.get(instance_id)
        return watched.last if watched else None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:
                log.warning("stall watch tick failed", exc_info=True)

    async def aclose(self) -> None:
        for watched in self._watched.values():
            if watched.probe is not None and not watched.probe.done():
                watched.probe.cancel()
                with contextlib.suppress(BaseException):
                    await watched.probe

    async def tick(self) -> None:
        now = utcnow()
        horizon = now - timedelta(seconds=self.policy.active_for)
        active = set(await self.repo.sending_instances(horizon))
        active.update(i for i, at in self._local_sends.items() if at >= horizon.timestamp())
        self._local_sends = {i: at for i, at in self._local_sends.items() if at >= horizon.timestamp()}
        # Instances with open evidence stay watched after their sends stop (a stall must still
        # be called when the last send went unanswered); the others are dropped (bounded memory).
        for instance_id in list(self._watched):
            watched = self._watched[instance_id]
            evidence_open = watched.last is not None and (watched.last.silent_recipients or watched.last.unacked)
            if instance_id not in active and not evidence_open:
                if watched.probe is None or watched.probe.done():
                    del self._watched[instance_id]
            else:
                active.add(instance_id)
        for instance_id in sorted(active):
            await self.check(instance_id)

    async def check(self, instance_id: str) -> Assessment | None:
        """Refreshes one instance's model, assesses it, and acts on the verdict."""
        found = await self.repo.get_instance(instance_id)
        if found is None:
            self._watched.pop(instance_id, None)
            return None
        record = found[0]
        watched = self._watched.get(instance_id)
        if watched is None:
            watched = await self._bootstrap(instance_id)
            self._watched[instance_id] = watched
        else:
            await self._refresh(instance_id, watched)
        if self.absent is not None:
            absent = [m for m, sent in watched.model.open.items() if self.absent(instance_id, sent.recipient)]
            for message_id in absent:
                watched.model.on_closed(message_id)
        now = time.time()
        since = record.state_changed_at.timestamp() if record.state_changed_at else None
        verdict = assess(watched.model, now, since=since)
        watched.last = verdict
        if record.state is not InstanceState.CONNECTED:
            return verdict
        if verdict.stalled:
            await self._stall(record, verdict)
            return verdict
        checked = record.checked_at.timestamp() if record.checked_at else None
        last_probe = max((t for t in (checked, watched.last_probe_at) if t is not None), default=None)
        if probe_due(
            self.policy,
            now,
            last_probe_at=last_probe,
            last_send_at=watched.last_send_at,
            suspicious=verdict.suspicious,
            in_flight=watched.probe is not None and not watched.probe.done(),
        ):
            watched.last_probe_at = now
            watched.probe = asyncio.create_task(self._probe_quietly(instance_id), name=f"probe-{instance_id}")
        return verdict

    async def _probe_quietly(self, instance_id: str) -> object:
        try:
            return await self._probe(instance_id)
        except Exception:
            log.warning("probe of a sending instance failed", extra={"instance_id": instance_id}, exc_info=True)
            return None

    async def _stall(self, record: InstanceRecord, verdict: Assessment) -> None:
        change = await self.repo.apply_instance_trigger(
            record.instance_id, InstanceTrigger.REPORT_DELIVERY_STALLED, source="detector"
        )
        if change is not None and change.decision.changed:
            log.warning(
                "ALERT instance delivery stalled: sends blocked",
                extra={
                    "alert": "DELIVERY_STALLED",
                    "instance_id": record.instance_id,
                    "evidence": round(verdict.evidence, 2),
                    "threshold": round(verdict.threshold, 2),
                    "silent_recipients": verdict.silent_recipients,
                    "unacked": verdict.unacked,
                    "ack_evidence": round(verdict.ack_evidence, 2),
                    "cold_start": verdict.cold,
                },
            )
            self._apply_change(change)

    async def _bootstrap(self, instance_id: str) -> _Watched:
        """A model from the newest rows only (bounded), replayed in time order."""
        now = utcnow()
        epoch = now - timedelta(days=30)
        receipts = await self.repo.recent_receipts(instance_id, epoch, limit=BOOTSTRAP_RECEIPTS, newest=True)
        sends = await self.repo.recent_sends(instance_id, epoch, limit=BOOTSTRAP_SENDS, newest=True)
        # Acks only over the sends' window (an instance without acks must not cost a scan of its
        # whole event history); when even that is cut by the limit, the older sends are left out so
        # their missing acks are not learned as "never acked".
        window = min((s.created_at for s in sends), default=now) - OVERLAP
        acks = await self.repo.recent_acks(instance_id, window, limit=BOOTSTRAP_ACKS, newest=True)
        if len(acks) >= BOOTSTRAP_ACKS:
            cut = min(a.sent_at for a in acks)
            sends = [s for s in sends if s.sent_at is None or s.sent_at >= cut]
        watched = _Watched(DeliveryModel(self.config), sends_after=epoch, receipts_after=epoch, acks_after=window)
        self._feed(watched, sends, receipts, acks)
        return watched

    async def _refresh(self, instance_id: str, watched: _Watched) -> None:
        sends = await self.repo.recent_sends(instance_id, watched.sends_after - OVERLAP, limit=READ_LIMIT)
        receipts = await self.repo.recent_receipts(instance_id, watched.receipts_after - OVERLAP, limit=READ_LIMIT)
        acks = await self.repo.recent_acks(instance_id, watched.acks_after - OVERLAP, limit=READ_LIMIT)
        self._feed(watched, sends, receipts, acks)

    def _feed(
        self, watched: _Watched, sends: list[SendSample], receipts: list[ReceiptSample], acks: list[AckSample]
    ) -> None:
        timeline: list[tuple[float, int, SendSample | ReceiptSample | AckSample]] = []
        pending_from: datetime | None = None
        for sample in sends:
            if sample.state is MessageState.FAILED:
                watched.model.on_closed(sample.message_id)  # no evidence either way
                continue
            if sample.state is MessageState.PENDING:
                pending_from = sample.created_at if pending_from is None else min(pending_from, sample.created_at)
                continue
            if sample.sent_at is None or not _remember(watched.seen_sends, sample.message_id):
                continue
            timeline.append((sample.sent_at.timestamp(), 0, sample))
        for receipt in receipts:
            if not _remember(watched.seen_receipts, receipt.message_id):
                continue
            timeline.append((receipt.received_at.timestamp(), 2, receipt))
        for ack in acks:
            if not _remember(watched.seen_acks, ack.message_id):
                continue  # a "sent" status and a webhookDelivery of one message: the first counts
            # An ack may be stored before the send's SENT is (W-API's webhook raced its answer).
            timeline.append((max(ack.received_at, ack.sent_at).timestamp(), 1, ack))
        timeline.sort(key=lambda item: (item[0], item[1]))
        model = watched.model
        for at, _order, item in timeline:
            if isinstance(item, SendSample):
                model.on_sent(item.message_id, item.recipient, at)
                watched.last_send_at = max(at, watched.last_send_at or at)
            elif isinstance(item, AckSample):
                model.on_ack(item.message_id, item.sent_at.timestamp(), at)
            else:
                model.on_receipt(item.message_id, item.recipient, item.sent_at.timestamp(), at)
        if sends:
            newest = max(s.created_at for s in sends)
            watched.sends_after = min(newest, pending_from) if pending_from is not None else newest
        if receipts:
            watched.receipts_after = max(r.received_at for r in receipts)
        if acks:
            watched.acks_after = max(a.received_at for a in acks)
