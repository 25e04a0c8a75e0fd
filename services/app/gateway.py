"""The Gateway: the use cases behind one object, for the gRPC and HTTP edges.

Servicers call this; it calls the pure rules (statemachine) and the ports (provider, store) through
its parts, one module per use case:

- services/app/health.py   registration, probes, the preflight's health cache, WatchInstances
- services/app/sending.py  SendMessage / RetryMessage: preflight, provider call, record
- services/app/ingest.py   webhooks: store, dedupe, apply through the machines
- services/app/jobs.py     background jobs: crash reconciliation, stuck sweep, retention
- services/app/stall_watch.py  the learned stall test on sending instances

The composition root (services/bootstrap.py) builds it with concrete adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from adapters.runtime import cancel_and_wait
from services.app.gateway_config import GatewayConfig
from services.app.health import InstanceEvent, Instances
from services.app.ingest import Ingest
from services.app.jobs import Jobs
from services.app.message_queries import MessageQueries
from services.app.sending import Sending
from services.app.stall_watch import StallWatch
from services.observability.telemetry import Telemetry
from statemachine.detection import DetectionConfig, ProbePolicy
from statemachine.domain import InstanceRecord, InstanceState, MessageRecord, MessageState, Plan, StateChange
from statemachine.ports import IngestResult, MessageChange, Provider, PruneReport, WebhookParser
from statemachine.store_ports import Store
from statemachine.validation import SendRequest

log = logging.getLogger("wapi_guard.core")


class Gateway:
    def __init__(
        self,
        repo: Store,
        provider: Provider,
        config: GatewayConfig | None = None,
        telemetry: Telemetry | None = None,
        *,
        parse_webhook: WebhookParser,
    ) -> None:
        self.repo = repo
        self.provider = provider
        self.parse_webhook = parse_webhook
        self.config = config or GatewayConfig()
        self.telemetry = telemetry or Telemetry({})
        self.tracer = self.telemetry.tracer
        self.metrics = self.telemetry.metrics
        self.instances = Instances(repo, provider, self.config, self.telemetry)
        self.stall_watch = StallWatch(
            repo,
            probe=lambda instance_id: self.instances.probe(instance_id, source="probe"),
            apply_change=self.instances.after_change,
            config=DetectionConfig(false_alarm_per_day=self.config.stall_false_alarm_per_day),
            policy=ProbePolicy(active_max_age=self.config.active_probe_max_age),
            interval=self.config.detect_interval or 1.0,
        )
        self.jobs = Jobs(repo, self.config, self.telemetry, self.instances)
        self.sending = Sending(
            repo, provider, self.config, self.telemetry, self.instances, self.stall_watch, self.jobs.reconcile_once
        )
        self.ingestion = Ingest(repo, parse_webhook, self.telemetry, self.instances)
        self.messages = MessageQueries(repo)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def on_reconnected(self) -> Callable[[str], None] | None:
        return self.instances.on_reconnected

    @on_reconnected.setter
    def on_reconnected(self, callback: Callable[[str], None] | None) -> None:
        self.instances.on_reconnected = callback

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, background_probes: bool = True) -> None:
        await self.instances.start()
        self._tasks.append(asyncio.create_task(self.instances.tail_changes(), name="change-feed"))
        self._tasks.append(asyncio.create_task(self.instances.flush_touches(), name="touch-flusher"))
        if background_probes and self.config.probe_interval > 0:
            self._tasks.append(asyncio.create_task(self.instances.probe_forever(), name="prober"))
        if self.config.sweep_interval > 0:
            self._tasks.append(asyncio.create_task(self.jobs.sweep_forever(), name="stuck-sweeper"))
        if self.config.detect_interval > 0:
            self._tasks.append(asyncio.create_task(self.stall_watch.run(), name="stall-watch"))
        if self.config.retention_interval > 0:
            self._tasks.append(asyncio.create_task(self.jobs.prune_forever(), name="retention"))

    async def aclose(self) -> None:
        if self.sending.inflight:
            await asyncio.wait(self.sending.inflight, timeout=self.config.send_timeout)
        if stuck := await cancel_and_wait(self._tasks):
            log.warning("gateway: %d background task(s) did not stop", len(stuck))
        self._tasks.clear()
        await self.stall_watch.aclose()
        with contextlib.suppress(Exception):
            await self.instances.flush_touches_once()
        await self.repo.aclose()

    # --- instance health (services/app/health.py) --------------------------------------------

    async def register(
        self, instance_id: str, name: str, token: str, plan: Plan, *, probe: bool = True, **provider: Any
    ) -> InstanceRecord:
        """`provider`: provider, base_url, client_token (services/app/health.py register)."""
        return await self.instances.register(instance_id, name, token, plan, probe=probe, **provider)

    async def remove(self, instance_id: str) -> bool:
        return await self.instances.remove(instance_id)

    async def probe(self, instance_id: str, *, source: str = "probe") -> InstanceRecord:
        return await self.instances.probe(instance_id, source=source)

    async def health(self, instance_id: str, *, refresh: bool = False) -> InstanceRecord:
        return await self.instances.health(instance_id, refresh=refresh)

    async def list_instances(
        self, *, refresh: bool = False, states: Sequence[InstanceState] = ()
    ) -> list[InstanceRecord]:
        return await self.instances.list_instances(refresh=refresh, states=states)

    async def instance_changes(
        self, ids: Sequence[str] | None, *, window: int, per_instance: int
    ) -> list[tuple[str, StateChange]]:
        return await self.instances.instance_changes(ids, window=window, per_instance=per_instance)

    async def probe_all(self) -> dict[str, InstanceState]:
        return await self.instances.probe_all()

    def subscribe(
        self, instance_ids: Sequence[str] = (), *, include_current: bool = False
    ) -> AsyncIterator[InstanceEvent]:
        return self.instances.subscribe(instance_ids, include_current=include_current)

    async def refresh_gauges(self) -> None:
        await self.instances.refresh_gauges()

    # --- sends (services/app/sending.py) -----------------------------------------------------

    async def send(self, req: SendRequest, *, time_remaining: float | None = None) -> MessageRecord:
        return await self.sending.send(req, time_remaining=time_remaining)

    async def retry(self, message_id: str, *, time_remaining: float | None = None) -> MessageRecord:
        return await self.sending.retry(message_id, time_remaining=time_remaining)

    async def get_message(self, message_id: str) -> MessageRecord:
        return await self.messages.get_message(message_id)

    async def list_messages(
        self,
        *,
        instance_id: str = "",
        states: Sequence[MessageState] = (),
        stuck_only: bool = False,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[MessageRecord], str]:
        return await self.messages.list_messages(
            instance_id=instance_id, states=states, stuck_only=stuck_only, page_size=page_size, page_token=page_token
        )

    # --- webhooks (services/app/ingest.py) ---------------------------------------------------

    async def ingest(
        self,
        payload: bytes,
        headers: dict[str, str],
        received_at: datetime | None = None,
        *,
        parse: WebhookParser | None = None,
    ) -> IngestResult:
        return await self.ingestion.ingest(payload, headers, received_at, parse=parse)

    # --- background jobs (services/app/jobs.py) ----------------------------------------------

    async def reconcile_once(self) -> list[MessageRecord]:
        return await self.jobs.reconcile_once()

    async def sweep_once(self) -> list[MessageRecord]:
        return await self.jobs.sweep_once()

    async def prune_once(self) -> PruneReport:
        return await self.jobs.prune_once()


__all__ = ["Gateway", "GatewayConfig", "InstanceEvent", "MessageChange"]
