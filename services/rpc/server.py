"""Composition root: builds engine, adapters, core and the grpc.aio server inside the running loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from sqlalchemy.engine import make_url

from adapters.persistence.bounded import BoundedStore
from adapters.persistence.db import async_url, create_engine
from adapters.persistence.listen import change_listener
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.repository import Repository
from adapters.persistence.webhook_store import WebhookStore
from adapters.wapi.webhooks import parse_webhook
from services.api.wapiguard.v1 import (
    events_pb2,
    events_pb2_grpc,
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)
from services.app.events import ChangeFeed
from services.app.gateway import Gateway, GatewayConfig
from services.app.outbound import OutboundConfig, WebhookDispatcher, parse_schedule
from services.app.principals import parse_tokens
from services.app.recovery import Recovery, RecoveryConfig
from services.app.subscriptions import Scopes
from services.config import Settings
from services.observability.logs import register_secret
from services.observability.telemetry import Telemetry
from services.provider_wiring import build_registry, status_puller
from services.rpc.auth import AuthInterceptor
from services.rpc.decoding import DecodingGuard
from services.rpc.errors import treat_as_unavailable
from services.rpc.event_mapping import event_dict
from services.rpc.event_servicers import EventServicer, WebhookSubscriptionServicer
from services.rpc.exposure import check_exposure
from services.rpc.servicers import InstanceHealthServicer, SendServicer, WebhookServicer
from services.rpc.startup import step
from statemachine.ports import InstanceOperations, Provider, RetentionPolicy
from statemachine.preflight import WebhookPolicy

log = logging.getLogger("wapi_guard.server")
# Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 7000

SERVICE_NAMES = (
    send_pb2.DESCRIPTOR.services_by_name["SendService"].full_name,
    webhook_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name,
    instance_health_pb2.DESCRIPTOR.services_by_name["InstanceHealthService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    events_pb2.DESCRIPTOR.services_by_name["WebhookSubscriptionService"].full_name,
)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mTLS when a client CA is configured too."""
    if not settings.tls_cert_file:
        if settings.tls_key_file or settings.tls_client_ca_file:
            raise ValueError("--tls-key-file / --tls-client-ca-file need --tls-cert-file")
        return None
    if not settings.tls_key_file:
        raise ValueError("--tls-cert-file needs --tls-key-file")
    chain = Path(settings.tls_cert_file).read_bytes()
    key = Path(settings.tls_key_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


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


def recovery_config(settings: Settings) -> RecoveryConfig:
    return RecoveryConfig(
        public_url=settings.public_url,
        webhook_secret=settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
        action_timeout=settings.probe_timeout,
        limit=settings.recovery_limit,
        window=settings.recovery_window,
        follow_interval=settings.recovery_probe_interval,
        follow_for=settings.recovery_probe_for,
        webhook_check_interval=settings.webhook_check_interval,
        reconcile_interval=settings.reconcile_interval,
        stuck_after=settings.stuck_after,
        phone_region=settings.default_phone_region,
    )


def outbound_config(settings: Settings) -> OutboundConfig:
    return OutboundConfig(
        retry_schedule=parse_schedule(settings.webhook_retry_schedule),
        timeout=settings.webhook_timeout,
        concurrency=settings.webhook_concurrency,
        allow_private=settings.webhook_allow_private,
    )


def default_provider(settings: Settings) -> Provider:
    from adapters.wapi.client import WapiProvider

    return WapiProvider(settings.wapi_base_url)


@dataclass
class App:
    """A running wapi-guard: gRPC server, HTTP bridge (optional) and the core's background tasks."""

    settings: Settings
    gateway: Gateway
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    grpc_port: int
    http_port: int | None = None
    feed: ChangeFeed | None = None
    dispatcher: WebhookDispatcher | None = None
    recovery: Recovery | None = None
    bridge_runner: Any = None
    _cleanup: list[Any] = field(default_factory=list)

    @classmethod
    async def start(
        cls, settings: Settings, *, provider: Provider | None = None, telemetry: Telemetry | None = None
    ) -> App:
        """Starts everything, or nothing: when a step fails (a port already in use, a database that
        does not answer) what it had started is stopped again before the error goes to the caller,
        who reports it once. Nothing may outlive the event loop: a grpc.aio server collected after
        the loop closed prints "Event loop is closed" on its way out."""
        opened: list[Callable[[], Awaitable[Any]]] = []
        try:
            return await cls._start(settings, provider, telemetry, opened)
        except BaseException:
            for close in reversed(opened):
                try:
                    await close()
                except Exception:
                    log.warning("cleanup after a failed start failed", exc_info=True)
            raise

    @classmethod
    async def _start(
        cls,
        settings: Settings,
        provider: Provider | None,
        telemetry: Telemetry | None,
        opened: list[Callable[[], Awaitable[Any]]],
    ) -> App:
        check_exposure(settings)  # before anything is opened: not open to the network by accident
        if settings.webhook_secret:
            register_secret(settings.webhook_secret.get_secret_value())
        telemetry = telemetry or Telemetry()
        url = async_url(settings.database_url)  # one line naming the accepted forms, or the async URL
        password = make_url(url).password
        register_secret(str(password) if password else None)
        if settings.migrate_on_start:
            # Own engine, no statement timeout: a migration's DDL may legitimately take long.
            migrations = create_engine(url, pool_size=1, connect_timeout=settings.db_connect_timeout)
            try:
                await step("migrations", url, settings.db_connect_timeout, upgrade_to_head(migrations))
            finally:
                await migrations.dispose()
        engine = create_engine(
            url,
            pool_size=settings.db_pool_size,
            connect_timeout=settings.db_connect_timeout,
            pool_timeout=settings.db_timeout,
            statement_timeout=settings.db_statement_timeout or None,
        )
        opened.append(engine.dispose)
        repo = Repository(engine, group_commit_window=settings.group_commit_window)
        treat_as_unavailable(repo.unavailable_errors)
        # What the request paths reach the store through: bounded per call (bounded.py).
        bounded = cast(Repository, BoundedStore(repo, settings.db_timeout))
        provider = provider or default_provider(settings)
        # Per-instance provider (issue 24): W-API's client plus Z-API and Evolution, routed by
        # the instance's stored provider; recovery stays offered only when W-API's client has it.
        operations = isinstance(provider, InstanceOperations)
        provider = build_registry(provider, engine, zapi_base_url=settings.zapi_base_url)
        await step("loading providers", url, settings.db_connect_timeout, provider.load())
        opened.append(provider.aclose)
        instrument = getattr(provider, "instrument", None)
        if telemetry.tracer_provider is not None and instrument is not None:
            instrument(telemetry.tracer_provider)
        gateway = Gateway(bounded, provider, gateway_config(settings), telemetry, parse_webhook=parse_webhook)
        recovery = Recovery(gateway, provider if operations else None, recovery_config(settings))
        recovery.pull_statuses = status_puller(bounded, provider, gateway.ingest, timeout=settings.probe_timeout).pull
        await step(
            "loading instances",
            url,
            settings.db_connect_timeout,
            gateway.start(background_probes=settings.probe_interval > 0),
        )
        opened.append(gateway.aclose)
        feed = ChangeFeed(
            repo,
            poll_interval=settings.event_poll_interval,
            wakeups=change_listener(dsn) if (dsn := listen_dsn(url)) else None,
            window=settings.event_subscriber_buffer,
        )
        await step("change feed", url, settings.db_connect_timeout, feed.start())
        opened.append(feed.aclose)
        store = WebhookStore(engine)
        dispatcher = WebhookDispatcher(
            repo,
            store,
            feed,
            outbound_config(settings),
            render=lambda change: event_dict(change, feed.cursors),
            scopes=Scopes(
                [p for p, _token in parse_tokens(settings.api_tokens.get_secret_value())]
                if settings.api_tokens
                else None
            ),
            metrics=telemetry.metrics,
        )
        await dispatcher.start()
        opened.append(dispatcher.aclose)
        register_outbound_metrics(telemetry, store, dispatcher)
        telemetry.metrics.gauges["event_streams"] = lambda: [(float(len(feed.listeners)), {})]
        telemetry.metrics.gauges["event_cut_offs"] = lambda: [(float(feed.cut_offs), {})]
        await recovery.start()
        opened.append(recovery.aclose)

        interceptors: list[Any] = telemetry.server_interceptors()  # tracing first: it sees auth failures
        if settings.api_tokens:
            tokens = parse_tokens(settings.api_tokens.get_secret_value())
            for _principal, token in tokens:
                register_secret(token.decode())
            interceptors.append(AuthInterceptor(tokens, open_health=settings.auth_open_health))
        server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", int(settings.reuse_port))])
        opened.append(lambda: server.stop(0))
        # Every service is registered through the decoding guard: undecodable bytes answer
        # INVALID_ARGUMENT/MALFORMED_REQUEST instead of UNKNOWN plus a traceback each.
        target = cast(grpc.aio.Server, DecodingGuard(server))
        send_pb2_grpc.add_SendServiceServicer_to_server(SendServicer(gateway), target)
        webhook_servicer = WebhookServicer(gateway)
        webhook_pb2_grpc.add_WebhookServiceServicer_to_server(webhook_servicer, target)
        instance_health_pb2_grpc.add_InstanceHealthServiceServicer_to_server(
            InstanceHealthServicer(gateway, recovery), target
        )
        events_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(
                repo,
                feed,
                progress_interval=settings.event_progress_interval,
                stall_timeout=settings.event_subscriber_timeout,
            ),
            target,
        )
        events_pb2_grpc.add_WebhookSubscriptionServiceServicer_to_server(
            WebhookSubscriptionServicer(
                repo, store, dispatcher, feed.cursors, allow_private=settings.webhook_allow_private
            ),
            target,
        )
        health_servicer = health.aio.HealthServicer()
        # The servicer starts with the overall status SERVING: not until the database answers.
        await health_servicer.set(health.OVERALL_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, target)
        # What reflection.enable_server_reflection does for an aio server (it tells one by type).
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)), target
        )
        address = f"{settings.host}:{settings.grpc_port}"
        credentials = server_credentials(settings)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError:  # grpcio ≥ 1.67 raises where it used to return 0 (port in use)
            port = 0
        if port == 0:
            raise OSError(f"cannot bind gRPC on {settings.host}:{settings.grpc_port}")
        await server.start()
        app = cls(settings, gateway, server, health_servicer, port, feed=feed, dispatcher=dispatcher, recovery=recovery)
        app._cleanup += [
            recovery.aclose,
            dispatcher.aclose,
            feed.aclose,
            gateway.aclose,
            provider.aclose,
            engine.dispose,
            _async(telemetry.shutdown),
        ]
        if settings.http_port >= 0:
            from services.http.bridge import start_bridge
            from services.http.status_page import STATUS_PAGE_KEY

            runner, http_port = await start_bridge(settings, gateway, recovery, store)
            runner.app[STATUS_PAGE_KEY].event_streams = lambda: (len(feed.listeners), feed.cut_offs)
            opened.append(runner.cleanup)
            app.http_port = http_port
            app.bridge_runner = runner
            app._cleanup.insert(0, runner.cleanup)
        # Serving only once the database is migrated and reachable.
        await step("first query", url, settings.db_connect_timeout, repo.ping())
        for name in (*SERVICE_NAMES, health.OVERALL_HEALTH):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return app

    async def stop(self, grace: float | None = None) -> None:
        """Probes fail first (load balancers drain), then in-flight RPCs finish within the grace."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace if grace is None else grace)
        for close in self._cleanup:
            try:
                await close()
            except Exception:
                log.warning("cleanup step failed", exc_info=True)


def listen_dsn(url: str) -> str | None:
    """The plain asyncpg DSN of a PostgreSQL URL (for LISTEN), None for SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    query = dict(parsed.query)
    if "ssl" in query:  # SQLAlchemy's asyncpg dialect takes `ssl`; an asyncpg DSN reads `sslmode`
        query["sslmode"] = query.pop("ssl")
    return parsed.set(drivername="postgresql", query=query).render_as_string(hide_password=False)


def register_outbound_metrics(telemetry: Telemetry, store: WebhookStore, dispatcher: WebhookDispatcher) -> None:
    """Per-subscription lag, failures and pending deliveries as gauges (read at scrape time)."""
    snapshot: dict[str, list[tuple[float, dict[str, str]]]] = {"lag": [], "pending": [], "failures": []}

    async def refresh() -> None:
        subs = await store.list_subscriptions()
        stats = await store.stats([s.id for s in subs])
        now = datetime.now(UTC)
        snapshot["lag"] = [
            (
                (now - stats[s.id].oldest_pending_at).total_seconds() if stats[s.id].oldest_pending_at else 0.0,  # type: ignore[operator]
                {"subscription": s.id},
            )
            for s in subs
        ]
        snapshot["pending"] = [(float(stats[s.id].pending), {"subscription": s.id}) for s in subs]
        snapshot["failures"] = [(float(s.consecutive_failures), {"subscription": s.id}) for s in subs]

    async def loop() -> None:
        while True:
            with contextlib.suppress(Exception):
                await refresh()
            await asyncio.sleep(5.0)

    task = asyncio.create_task(loop(), name="webhook-metrics")
    dispatcher._tasks.append(task)
    gauges = telemetry.metrics.gauges
    gauges["webhook_lag_seconds"] = lambda: snapshot["lag"]
    gauges["webhook_pending"] = lambda: snapshot["pending"]
    gauges["webhook_consecutive_failures"] = lambda: snapshot["failures"]


def settle_heap() -> None:
    """Once started: what start-up built (modules, SQLAlchemy's and protobuf's tables, the
    caches) goes to the collector's permanent generation, so the full collections a busy
    server runs every few seconds no longer walk it again each time. The young generation is
    collected less often too: the hot paths allocate many short-lived containers (protobuf
    messages, SQLAlchemy rows, futures) that reference counting frees anyway; the collector
    only finds cycles, and finding them 10× less often costs a few hundred KB of garbage held
    a little longer. Measured in docs/performance.md (the largest single cut on the status path)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _async(fn: Any) -> Any:
    """A blocking cleanup (exporter flush) run off the event loop, so in-loop peers still answer."""

    async def run() -> None:
        await asyncio.to_thread(fn)

    return run


def status_page_url(host: str, port: int) -> str:
    """The status page as a browser on this machine reaches it (a wildcard address is not one)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/status"


async def serve(settings: Settings, *, provider: Provider | None = None) -> None:
    # Signal handlers first: a SIGTERM that lands while starting (or while the serving line is
    # being printed) still gets the graceful path, never the default kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await App.start(settings, provider=provider)
    settle_heap()
    try:
        bridge = ""
        if app.http_port is not None:
            bridge = f", webhook bridge on http://{settings.host}:{app.http_port}"
            bridge += f", status page {status_page_url(settings.host, app.http_port)}"
        print(f"wapi-guard serving gRPC on {settings.host}:{app.grpc_port}{bridge}", flush=True)
        log.info("serving", extra={"grpc_port": app.grpc_port, "http_port": app.http_port})
        await stop.wait()
    finally:
        log.info("shutting down", extra={"grace_seconds": settings.shutdown_grace})
        await app.stop()
