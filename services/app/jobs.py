"""Background jobs: crash reconciliation of PENDING sends, the stuck-message sweep with its stall
backstop, and retention. Each `*_once` is one bounded run (safe on several replicas); the
`*_forever` loops are started by the composition root (services/core_wiring.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from datetime import timedelta

from opentelemetry.trace import Link, SpanContext, TraceFlags

from services.app.clock import utcnow
from services.app.gateway_config import GatewayConfig
from services.app.health import Instances
from services.observability.telemetry import Telemetry
from statemachine import stuck as stuck_rule
from statemachine.domain import MessageRecord, Reason
from statemachine.instance_machine import InstanceTrigger
from statemachine.ports import InstanceChange, MessageChange, PruneReport
from statemachine.store_ports import InstanceSignal, JobsStore, Transaction, UnitOfWork

log = logging.getLogger("wapi_guard.core")


class Jobs:
    def __init__(self, repo: JobsStore, config: GatewayConfig, telemetry: Telemetry, instances: Instances) -> None:
        self.repo = repo
        self.config = config
        self.metrics = telemetry.metrics
        self.tracer = telemetry.tracer
        self.instances = instances

    async def reconcile_once(self) -> list[MessageRecord]:
        """Messages a crashed process left PENDING become FAILED/OUTCOME_UNKNOWN, with an alert."""
        cutoff = utcnow() - timedelta(seconds=self.config.pending_cutoff_seconds())
        reconciled = await self.repo.reconcile_pending(cutoff)
        for msg in reconciled:
            self.metrics.sends.add(1, {"outcome": "failed", "reason": Reason.OUTCOME_UNKNOWN.value})
            log.warning(
                "ALERT send outcome unknown after a stop mid-send",
                extra={"alert": "OUTCOME_UNKNOWN", "instance_id": msg.instance_id, "message_id": msg.id},
            )
        return reconciled

    async def sweep_once(self, *, continuation: bool = False) -> list[MessageRecord]:
        """Marks up to `sweep_batch` messages stuck in SENT (the oldest first), alerts once for each,
        and stalls the instances among them that stopped delivering (one check for all of them).
        Safe with several replicas: each message is returned to one sweeper only. A continuation
        (the next batch of a backlog, right after) skips the parked pass, done by the first sweep of
        the run, and the gauges, unless it is the last of the run."""
        cutoff = utcnow() - timedelta(seconds=self.config.stuck_after)
        if not continuation:
            # Statuses that lost the race with their SENT update.
            self._late_spans(await self.repo.apply_parked())
        stuck = await self.repo.mark_stuck(cutoff, limit=self.config.sweep_batch)
        per_instance: dict[str, int] = {}
        for msg in stuck:
            per_instance[msg.instance_id] = per_instance.get(msg.instance_id, 0) + 1
            self.metrics.stuck_alerts.add(1, {"instance_id": msg.instance_id})
            age = (utcnow() - msg.sent_at).total_seconds() if msg.sent_at else 0.0
            log.warning(
                "ALERT message stuck in SENT",
                extra={
                    "alert": "MESSAGE_STUCK",
                    "instance_id": msg.instance_id,
                    "message_id": msg.id,
                    "provider_message_id": msg.provider_message_id or "",
                    "sent_seconds_ago": round(age, 1),
                },
            )
        for change in await stall_stuck_runs(self.repo, sorted(per_instance), self.config.stall_threshold):
            log.warning(
                "ALERT instance delivery stalled: sends blocked",
                extra={"alert": "DELIVERY_STALLED", "instance_id": change.instance.instance_id},
            )
            self.instances.after_change(change)
        if not continuation:
            for change in await lift_contradicted_stalls(self.repo):
                log.warning(
                    "a delivery raced the stall of an instance: stall lifted",
                    extra={"instance_id": change.instance.instance_id},
                )
                self.instances.after_change(change)
        if not continuation or len(stuck) < self.config.sweep_batch:
            await self.instances.refresh_gauges()  # a sweep on its own, or the last of a run
        return stuck

    async def sweep_forever(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:
                log.warning("pending reconciliation failed", exc_info=True)
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.sweep_backlog()
            except Exception:
                log.warning("stuck sweep failed", exc_info=True)

    def _late_spans(self, changes: list[MessageChange]) -> None:
        """One `wapi.status.late` span per parked status the sweeper applied, linked to its send
        attempt: the attempt's story stays whole when its status beat the SENT commit."""
        for change in changes:
            links = []
            if change.trace_id and change.span_id:
                context = SpanContext(
                    int(change.trace_id, 16), int(change.span_id, 16), True, TraceFlags(TraceFlags.SAMPLED)
                )
                links.append(Link(context, {"wapi.message_id": change.message_id}))
            attributes = {"wapi.message_id": change.message_id, "wapi.status": str(change.change.to_state)}
            with self.tracer.start_as_current_span("wapi.status.late", links=links, attributes=attributes):
                pass

    async def sweep_backlog(self) -> int:
        """Sweeps back to back while a backlog remains (each sweep a short, bounded batch); returns
        how many messages were marked. Bounded by `sweep_continuations`."""
        marked = 0
        for n in range(max(1, self.config.sweep_continuations)):
            stuck = await self.sweep_once(continuation=n > 0)
            marked += len(stuck)
            if len(stuck) < self.config.sweep_batch:
                return marked
            await asyncio.sleep(0)  # let requests in between two sweeps
        await self.instances.refresh_gauges()  # cut short with a backlog left: the gauges now
        return marked

    async def prune_once(self) -> PruneReport:
        """One retention run (skipped when another replica holds the lease), with its metrics."""
        report = await self.repo.prune(self.config.retention)
        if report.ran:
            for table, rows in report.deleted.items():
                self.metrics.pruned.add(rows, {"table": table})
            self.metrics.prune_duration.record(report.seconds)
            log.info(
                "retention run",
                extra={"deleted": report.deleted, "seconds": round(report.seconds, 3), "complete": report.complete},
            )
        return report

    async def prune_forever(self) -> None:
        # Replicas started together spread their first attempt over the interval.
        await asyncio.sleep(random.uniform(0.0, min(self.config.retention_interval, 60.0)))
        while True:
            try:
                report = await self.prune_once()
            except Exception:
                log.warning("retention run failed", exc_info=True)
                report = None
            # A run cut short by its batch budget continues soon; otherwise wait the interval.
            incomplete = report is not None and report.ran and not report.complete
            await asyncio.sleep(
                min(5.0, self.config.retention_interval) if incomplete else self.config.retention_interval
            )


async def stall_stuck_runs(uow: UnitOfWork, instance_ids: Sequence[str], threshold: int) -> list[InstanceChange]:
    """Stalls every CONNECTED instance of these whose last `threshold` sends are all stuck, in one
    transaction: read their stuck runs (one read for all of them), decide (statemachine/stuck.py
    `stalls`), write the stall through the instance machine's one writer (its compare-and-set
    refuses an instance that is not CONNECTED any more). The sweep's one call site of the stall."""
    if not instance_ids:
        return []

    async def work(tx: Transaction) -> list[InstanceChange]:
        runs = await tx.stuck_runs.read(instance_ids, threshold)
        due = [i for i, run in runs.items() if stuck_rule.stalls(run.sent, run.last_delivery, threshold)]
        if not due:
            return []
        signals = [InstanceSignal(i, InstanceTrigger.REPORT_DELIVERY_STALLED, "sweeper") for i in due]
        return [c for c in await tx.instances.apply_triggers(signals) if c.decision.changed]

    return await uow.atomically(work)


async def lift_contradicted_stalls(uow: UnitOfWork) -> list[InstanceChange]:
    """Lifts each stall a delivery raced (statemachine/stuck.py `contradicts`): the delivery was
    written while the stall was being decided, so it saw no stall to lift and the stall did not
    see it. Without this the instance stayed blocked until an operator cleared it."""

    async def work(tx: Transaction) -> list[InstanceChange]:
        found = await tx.stuck_runs.stalls_with_deliveries()
        due = [i for i, (stalled_at, delivered_at) in found.items() if stuck_rule.contradicts(stalled_at, delivered_at)]
        signals = [InstanceSignal(i, InstanceTrigger.REPORT_DELIVERY_RESUMED, "sweeper") for i in due]
        return [c for c in await tx.instances.apply_triggers(signals) if c.decision.changed] if signals else []

    return await uow.atomically(work)
