"""The composition root: builds the engine, the adapters, the use cases, the gRPC server
(services/rpc/server.py registers the servicers) and the HTTP surface, inside the running loop,
with every lifecycle on one `contextlib.AsyncExitStack`: what was opened is closed in reverse,
whether the start failed half-way or the process is stopping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc_health.v1 import health, health_pb2
from sqlalchemy.engine import make_url

from adapters.inbound import normalize_inbound
from adapters.persistence.bounded import BoundedStore
from adapters.persistence.db import async_url, create_engine
from adapters.persistence.listen import change_listener
from adapters.persistence.optouts import OptOutRepository
from adapters.persistence.recipients import RecipientCheckRepository
from adapters.persistence.send_policies import SendPolicyRepository
from adapters.persistence.store import Repository
from adapters.persistence.webhook_store import WebhookStore
from adapters.wapi.webhooks import parse_webhook
from services.app.errors import treat_as_unavailable
from services.app.events import ChangeFeed
from services.app.held_counts import HeldCounts
from services.app.optouts import OptOuts, inbound_listener
from services.app.outbound import OutboundConfig, WebhookDispatcher, parse_schedule
from services.app.principals import parse_tokens
from services.app.recipients import Recipients
from services.app.recovery import Recovery, RecoveryConfig
from services.app.send_policy import SendPolicies
from services.app.send_protection import absence_listener, protection_reader
from services.app.subscriptions import Scopes
from services.app.webhook_subscriptions import WebhookSubscriptions
from services.config import Settings
from services.core_wiring import UseCases, build_use_cases, gateway_config, start_use_cases
from services.hold_wiring import held_counts, start_holds, stop_holds
from services.migration import migrate
from services.observability.logs import register_secret
from services.observability.telemetry import Telemetry
from services.provider_wiring import build_registry, status_puller
from services.rpc.event_mapping import event_dict
from services.rpc.exposure import check_exposure
from services.rpc.server import SERVICE_NAMES, Servers, build_grpc_server
from services.rpc.startup import step
from statemachine.ports import InstanceOperations, Provider
from statemachine.send_policy import SendPolicy

if TYPE_CHECKING:
    from services.http.bridge import Surface

log = logging.getLogger("wapi_guard.server")
# Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 7000


def new_number_policy(settings: Settings) -> SendPolicy:
    """The warm-up policy of a number registered with `new_number` (the --new-number-* settings)."""
    return SendPolicy(
        min_interval_seconds=settings.new_number_min_interval,
        jitter_seconds=settings.new_number_jitter,
        new_recipients_per_hour=settings.new_number_new_per_hour,
        new_recipients_per_day=settings.new_number_warmup_target,
        warmup_start_per_day=min(settings.new_number_warmup_start, settings.new_number_warmup_target),
        warmup_days=settings.new_number_warmup_days,
    )


def protect_the_number(
    settings: Settings, engine: Any, core: UseCases, provider: Provider
) -> tuple[SendPolicies, OptOuts, Recipients]:
    """The per-instance send policy, opt-outs and number checks (docs/send-policy.md): their own
    stores and use cases, consulted by the send preflight and fed by inbound messages."""
    send_policies = SendPolicies(SendPolicyRepository(engine), new_number_policy=new_number_policy(settings))
    opt_outs = OptOuts(
        OptOutRepository(engine),
        keywords=[k for k in settings.optout_keywords.split(",") if k.strip()],
        phone_region=settings.default_phone_region,
    )
    recipients = Recipients(
        RecipientCheckRepository(engine),
        provider,
        core.instances,
        ttl_seconds=settings.recipient_check_ttl,
        phone_region=settings.default_phone_region,
        timeout=settings.probe_timeout,
    )
    core.sending.policies = send_policies
    core.instances.on_connected_phone = send_policies.connected_later
    core.sending.opt_outs = opt_outs
    core.sending.recipients = recipients
    core.ingest.on_inbound = inbound_listener(normalize_inbound, send_policies, opt_outs)
    core.ingest.on_absent = absence_listener(recipients)
    core.stall_watch.absent = recipients.known_absent_here
    return send_policies, opt_outs, recipients


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


async def _quietly(close: Callable[[], Awaitable[Any]]) -> None:
    """One close of the exit stack: a failure is logged and the others still run."""
    try:
        await close()
    except Exception:
        log.warning("cleanup step failed", exc_info=True)


@dataclass
class App(UseCases):
    """A running wapi-guard: its use cases (with their background tasks), the gRPC server and the
    HTTP bridge (optional)."""

    settings: Settings
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    grpc_port: int
    stack: contextlib.AsyncExitStack
    http_port: int | None = None
    feed: ChangeFeed | None = None
    dispatcher: WebhookDispatcher | None = None
    recovery: Recovery | None = None
    bridge_runner: Any = None
    # The send policy, opt-outs and number checks (protect_the_number).
    protection: tuple[SendPolicies, OptOuts, Recipients] | None = None
    held: HeldCounts | None = None  # held messages per instance (the lists)

    @classmethod
    async def start(
        cls, settings: Settings, *, provider: Provider | None = None, telemetry: Telemetry | None = None
    ) -> App:
        """Starts everything, or nothing: when a step fails (a port already in use, a database that
        does not answer) what it had started is stopped again (the exit stack) before the error
        goes to the caller, who reports it once. Nothing may outlive the event loop: a grpc.aio
        server collected after the loop closed prints "Event loop is closed" on its way out."""
        check_exposure(settings)  # before anything is opened: not open to the network by accident
        stack = contextlib.AsyncExitStack()
        started = False

        async def shutdown_telemetry() -> None:
            if started:  # a failed start leaves the caller's telemetry alone
                await asyncio.to_thread(used.shutdown)

        used = telemetry or Telemetry()
        stack.push_async_callback(_quietly, shutdown_telemetry)
        try:
            app = await cls._start(settings, provider, used, stack)
        except BaseException:
            await stack.aclose()
            raise
        started = True
        return app

    @classmethod
    async def _start(  # size: the start-up order, one step per line, each close pushed right after it opens
        cls, settings: Settings, provider: Provider | None, telemetry: Telemetry, stack: contextlib.AsyncExitStack
    ) -> App:
        # Over 60 lines on purpose: the order of the start-up is the one thing this function says,
        # and each line is one step of it (its close goes on the exit stack right after it opens).
        if settings.webhook_secret:
            register_secret(settings.webhook_secret.get_secret_value())
        url = async_url(settings.database_url)  # one line naming the accepted forms, or the async URL
        password = make_url(url).password
        register_secret(str(password) if password else None)
        if settings.migrate_on_start:
            await migrate(settings, url)
        engine = create_engine(
            url,
            pool_size=settings.db_pool_size,
            connect_timeout=settings.db_connect_timeout,
            pool_timeout=settings.db_timeout,
            statement_timeout=settings.db_statement_timeout or None,
        )
        stack.push_async_callback(_quietly, engine.dispose)
        repo = Repository(engine, group_commit_window=settings.group_commit_window)
        stack.push_async_callback(_quietly, repo.aclose)
        treat_as_unavailable(repo.unavailable_errors)
        # What the request paths reach the store through: bounded per call (bounded.py).
        bounded = cast(Repository, BoundedStore(repo, settings.db_timeout))
        provider = provider or default_provider(settings)
        # Per-instance provider (docs/providers.md): W-API's client plus Z-API and Evolution, routed
        # by the instance's stored provider; recovery stays offered only when W-API's client has it.
        operations = isinstance(provider, InstanceOperations)
        provider = build_registry(provider, engine, zapi_base_url=settings.zapi_base_url)
        await step("loading providers", url, settings.db_connect_timeout, provider.load())
        stack.push_async_callback(_quietly, provider.aclose)
        instrument = getattr(provider, "instrument", None)
        if telemetry.tracer_provider is not None and instrument is not None:
            instrument(telemetry.tracer_provider)
        config = gateway_config(settings)
        core = build_use_cases(bounded, provider, config, telemetry, parse_webhook=parse_webhook)
        protection = protect_the_number(settings, engine, core, provider)
        stack.push_async_callback(_quietly, protection[0].aclose)  # unspent per-minute slices go back
        recovery = Recovery(
            bounded,
            core.instances,
            provider if operations else None,
            recovery_config(settings),
            jobs=core.jobs,
            messages=core.messages,
            ingest=core.ingest,
        )
        recovery.pull_statuses = status_puller(
            bounded, provider, core.ingest.ingest, timeout=settings.probe_timeout
        ).pull
        starting = start_use_cases(core, config, stack, _quietly, background_probes=settings.probe_interval > 0)
        await step("loading instances", url, settings.db_connect_timeout, starting)
        feed = ChangeFeed(
            repo,
            poll_interval=settings.event_poll_interval,
            wakeups=change_listener(dsn) if (dsn := listen_dsn(url)) else None,
            window=settings.event_subscriber_buffer,
        )
        await step("change feed", url, settings.db_connect_timeout, feed.start())
        stack.push_async_callback(_quietly, feed.aclose)
        store = WebhookStore(engine)
        dispatcher = await start_dispatcher(settings, telemetry, repo, store, feed)
        stack.push_async_callback(_quietly, dispatcher.aclose)
        await recovery.start()
        stack.push_async_callback(_quietly, recovery.aclose)
        holds, hold_watch = await start_holds(settings, engine, core.sending, core.instances)
        stack.push_async_callback(_quietly, lambda: stop_holds(holds, hold_watch))
        # Every gRPC method's storage is bounded by the caller's deadline, the event and
        # subscription services' too (the feed and the dispatcher, background loops, use the stores
        # as they are).
        servers = Servers(
            core.instances,
            core.sending,
            core.messages,
            core.ingest,
            recovery,
            bounded,
            WebhookSubscriptions(
                cast(WebhookStore, BoundedStore(store, settings.db_timeout)),
                bounded,
                dispatcher,
                allow_private=settings.webhook_allow_private,
            ),
            feed,
            *protection,
            holds=holds,
            held=held_counts(engine),
        )
        server, health_servicer, port = await build_grpc_server(settings, telemetry, servers)
        stack.push_async_callback(_quietly, lambda: server.stop(0))
        parts = {f.name: getattr(core, f.name) for f in fields(UseCases)}
        app = cls(**parts, settings=settings, server=server, health=health_servicer, grpc_port=port, stack=stack)
        app.feed, app.dispatcher, app.recovery = feed, dispatcher, recovery
        app.protection = protection
        app.held = servers.held
        if settings.http_port >= 0:
            await start_http(app, store, feed)
        # Serving only once the database is migrated and reachable.
        await step("first query", url, settings.db_connect_timeout, repo.ping())
        for name in (*SERVICE_NAMES, health.OVERALL_HEALTH):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return app

    async def stop(self, grace: float | None = None) -> None:
        """Probes fail first (load balancers drain), then in-flight RPCs finish within the grace;
        then everything else closes in reverse order of opening (the exit stack)."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_grace if grace is None else grace)
        await self.stack.aclose()


async def start_http(app: App, store: WebhookStore, feed: ChangeFeed) -> None:
    """The HTTP surface (webhook bridge, status page) on the app's exit stack."""
    from services.http.bridge import start_bridge
    from services.http.status_page import STATUS_PAGE_KEY

    runner, http_port = await start_bridge(app.settings, http_surface(app, store))
    runner.app[STATUS_PAGE_KEY].event_streams = lambda: (len(feed.listeners), feed.cut_offs)
    if app.protection is not None:
        runner.app[STATUS_PAGE_KEY].protection = protection_reader(app.protection[0], app.protection[1])
    if app.held is not None:
        runner.app[STATUS_PAGE_KEY].held = app.held.of
    app.stack.push_async_callback(_quietly, runner.cleanup)
    app.http_port = http_port
    app.bridge_runner = runner


def http_surface(app: App, subscriptions: WebhookStore | None = None) -> Surface:
    """What the HTTP surface calls: the webhook ingest, the metrics, the status page's reads and
    actions (the use cases themselves, no facade)."""
    from services.http.bridge import Surface
    from services.http.status_snapshot import StatusReads

    reads = StatusReads(app.instances, app.messages)
    # The send policy's form on the page: the use case, and the opt-outs' "lists changed" hook.
    policies, lists_changed = (app.protection[0], app.protection[1].lists_changed) if app.protection else (None, None)
    return Surface(app.ingest, app.telemetry, reads, app.sending, app.recovery, subscriptions, policies, lists_changed)


async def start_dispatcher(
    settings: Settings, telemetry: Telemetry, repo: Repository, store: WebhookStore, feed: ChangeFeed
) -> WebhookDispatcher:
    """The outbound webhook dispatcher, started, with its gauges and the feed's."""
    dispatcher = WebhookDispatcher(
        repo,
        store,
        feed,
        outbound_config(settings),
        render=lambda change: event_dict(change, feed.cursors),
        scopes=Scopes(
            [p for p, _token in parse_tokens(settings.api_tokens.get_secret_value())] if settings.api_tokens else None
        ),
        metrics=telemetry.metrics,
    )
    await dispatcher.start()
    register_outbound_metrics(telemetry, store, dispatcher)
    telemetry.metrics.gauges["event_streams"] = lambda: [(float(len(feed.listeners)), {})]
    telemetry.metrics.gauges["event_cut_offs"] = lambda: [(float(feed.cut_offs), {})]
    return dispatcher


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
