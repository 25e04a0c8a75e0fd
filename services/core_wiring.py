"""The composition root's core: the use cases of services/app/, each built over only the ports it
uses, and their background loops started with their stop on the root's exit stack. There is no
facade over them: the gRPC servicers (services/rpc/server.py `Servers`) and the HTTP surface
(services/http/bridge.py `Surface`) are handed the use cases they call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from adapters.runtime import cancel_and_wait
from services.app.gateway_config import GatewayConfig
from services.app.health import Instances
from services.app.ingest import Ingest
from services.app.jobs import Jobs
from services.app.message_queries import MessageQueries
from services.app.sending import Sending
from services.app.stall_watch import StallWatch
from services.config import Settings
from services.observability.telemetry import Telemetry
from statemachine.detection import DetectionConfig, ProbePolicy
from statemachine.ports import Provider, RetentionPolicy, WebhookParser
from statemachine.preflight import WebhookPolicy
from statemachine.store_ports import Store

log = logging.getLogger("wapi_guard.core")


def gateway_config(settings: Settings) -> GatewayConfig:
    return GatewayConfig(
        send_timeout=settings.send_timeout,
        probe_timeout=settings.probe_timeout,
        health_cache_ttl=settings.health_cache_ttl,
        gateway_failure_threshold=settings.gateway_failure_threshold,
        probe_interval=settings.probe_interval,
        probe_concurrency=settings.probe_concurrency,
        stuck_after=settings.stuck_after,
        stall_threshold=settings.stall_threshold,
        sweep_interval=settings.sweep_interval,
        stall_false_alarm_per_day=settings.stall_false_alarm_per_day,
        detect_interval=settings.detect_interval,
        active_probe_max_age=settings.active_probe_max_age,
        pending_grace=settings.pending_grace,
        retention_interval=settings.retention_interval,
        retention=RetentionPolicy(
            events=timedelta(days=settings.retention_events_days),
            chat_statuses=timedelta(days=settings.retention_chat_statuses_days),
            instance_transitions=timedelta(days=settings.retention_transitions_days),
            messages=timedelta(days=settings.retention_messages_days),
            change_log=timedelta(days=settings.retention_change_log_days),
            batch=settings.retention_batch,
        ),
        phone_region=settings.default_phone_region,
        webhooks=WebhookPolicy(require=settings.require_webhooks, evidence_window=settings.webhook_evidence_window),
        public_url=settings.public_url,
        webhook_secret_set=settings.webhook_secret is not None,
    )


@dataclass
class UseCases:
    """The core's use cases over one store (the request-bounded one in production)."""

    store: Store  # all the ports together; each use case is given only its own (store_ports.py)
    telemetry: Telemetry
    instances: Instances
    stall_watch: StallWatch
    jobs: Jobs
    sending: Sending
    ingest: Ingest
    messages: MessageQueries


def build_use_cases(
    store: Store,
    provider: Provider,
    config: GatewayConfig | None = None,
    telemetry: Telemetry | None = None,
    *,
    parse_webhook: WebhookParser,
) -> UseCases:
    config = config or GatewayConfig()
    telemetry = telemetry or Telemetry({})
    instances = Instances(store, provider, config, telemetry)
    stall_watch = StallWatch(
        store,
        probe=lambda instance_id: instances.probe(instance_id, source="probe"),
        apply_change=instances.after_change,
        config=DetectionConfig(false_alarm_per_day=config.stall_false_alarm_per_day),
        policy=ProbePolicy(active_max_age=config.active_probe_max_age),
        interval=config.detect_interval or 1.0,
    )
    jobs = Jobs(store, config, telemetry, instances)
    sending = Sending(store, provider, config, telemetry, instances, stall_watch, jobs.reconcile_once)
    ingest = Ingest(store, parse_webhook, telemetry, instances)
    return UseCases(store, telemetry, instances, stall_watch, jobs, sending, ingest, MessageQueries(store))


async def start_use_cases(
    core: UseCases,
    config: GatewayConfig,
    stack: contextlib.AsyncExitStack,
    quietly: Callable[[Callable[[], Awaitable[Any]]], Awaitable[None]],
    *,
    background_probes: bool = True,
) -> None:
    """Loads the instances, starts the background loops, and pushes their stop on `stack` (run in
    reverse: in-flight sends finish within the send timeout, the loops stop, the stall watch
    closes, the last touches are flushed). `quietly` runs one close, logging a failure."""
    await core.instances.start()
    loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [
        ("change-feed", core.instances.tail_changes),
        ("touch-flusher", core.instances.flush_touches),
    ]
    if background_probes and config.probe_interval > 0:
        loops.append(("prober", core.instances.probe_forever))
    if config.sweep_interval > 0:
        loops.append(("stuck-sweeper", core.jobs.sweep_forever))
    if config.detect_interval > 0:
        loops.append(("stall-watch", core.stall_watch.run))
    if config.retention_interval > 0:
        loops.append(("retention", core.jobs.prune_forever))
    tasks = [asyncio.create_task(loop(), name=name) for name, loop in loops]

    async def stop_loops() -> None:
        if core.sending.inflight:
            await asyncio.wait(core.sending.inflight, timeout=config.send_timeout)
        if stuck := await cancel_and_wait(tasks):
            log.warning("core: %d background task(s) did not stop", len(stuck))

    stack.push_async_callback(quietly, core.instances.flush_touches_once)
    stack.push_async_callback(quietly, core.stall_watch.aclose)
    stack.push_async_callback(quietly, stop_loops)
