"""Instance health: registration, probes, the preflight's health cache, WatchInstances.

The send preflight reads stored health through the cache (`cached`): never a provider round-trip
on the send path. A change this replica makes is applied to the cache at once (`after_change`);
another replica's reaches it through the instance change feed (`tail_changes`) or the cache's TTL
(`--health-cache-ttl`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from opentelemetry import trace

from services.app.clock import utcnow
from services.app.gateway_config import GatewayConfig
from services.app.providers import ProviderRegistry, provider_config
from services.i18n import next_step, webhooks_next_step
from services.observability.logs import register_secret
from services.observability.telemetry import Telemetry
from statemachine.domain import Credentials, InstanceRecord, InstanceState, Plan, Reason, StateChange
from statemachine.errors import InstanceNotFound, InvalidRequest
from statemachine.instance_machine import probe_trigger
from statemachine.ports import InstanceChange, Provider
from statemachine.preflight import health_verdict, webhooks_block_sends
from statemachine.providers import ProviderKind
from statemachine.store_ports import HealthStore
from statemachine.validation import Violation, validate_instance_id

log = logging.getLogger("wapi_guard.core")


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    """One item of WatchInstances: current health plus the change (None for the snapshot)."""

    instance: InstanceRecord
    change: StateChange | None


@dataclass(frozen=True, slots=True)
class HealthView:
    """An instance's health as callers see it (InstanceHealth, the CLI, the status page): the
    verdict of `statemachine.preflight.health_verdict` on the stored record, and the next step."""

    reason: str
    can_send: bool
    delivery_confirmable: bool
    webhooks: str  # the evidence: RECEIPTS, CONFIGURED, FAILED, UNCONFIGURED
    next_step: str


def health_view(record: InstanceRecord, locale: str, config: GatewayConfig, now: datetime | None = None) -> HealthView:
    verdict = health_verdict(
        record.state, record.reason, record.webhooks_state, record.last_receipt_at, now or utcnow(), config.webhooks
    )
    if verdict.reason == "WEBHOOKS_UNCONFIGURED":
        step = webhooks_next_step(record.instance_id, config.public_url, config.webhook_secret_set, locale)
    else:
        step = next_step(record.state, record.reason, locale)
    return HealthView(verdict.reason, verdict.can_send, verdict.delivery_confirmable, verdict.evidence.value, step)


@dataclass(slots=True)
class CachedInstance:
    record: InstanceRecord
    token: str = field(repr=False)
    expires: float


class Instances:
    """Every instance's health as this process sees it, and the operations that change it."""

    def __init__(self, repo: HealthStore, provider: Provider, config: GatewayConfig, telemetry: Telemetry) -> None:
        self.repo = repo
        self.provider = provider
        self.config = config
        self.metrics = telemetry.metrics
        self._gauge_stuck: dict[str, int] = {}
        self._gauge_states: dict[str, int] = {}
        self.metrics.gauges["stuck"] = lambda: [(v, {"instance_id": k}) for k, v in self._gauge_stuck.items()]
        self.metrics.gauges["instances"] = lambda: [(v, {"state": k}) for k, v in self._gauge_states.items()]
        self._cache: dict[str, CachedInstance] = {}
        self._subscribers: set[asyncio.Queue[InstanceEvent]] = set()
        self._feed_nudge = asyncio.Event()
        self._last_change_id = 0
        # Newest webhook per instance, flushed to last_event_at in batches (flush_touches).
        self.touched: dict[str, datetime] = {}
        # Newest receipt per instance, flushed to last_receipt_at the same way.
        self.receipts: dict[str, datetime] = {}
        self._probe_gate = asyncio.Semaphore(self.config.probe_concurrency)
        # Called (not awaited) with the instance id when it becomes CONNECTED again from another
        # state: the recovery side re-applies W-API's webhooks then.
        self.on_reconnected: Callable[[str], None] | None = None
        # Called with (instance id, phone, paired here) on a change to CONNECTED with a phone (the
        # send policy's warm-up anchor; wired by the composition root).
        self.on_connected_phone: Callable[[str, str, bool], None] | None = None

    def view(self, record: InstanceRecord, locale: str = "pt-BR", now: datetime | None = None) -> HealthView:
        return health_view(record, locale, self.config, now)

    def webhooks_block(self, record: InstanceRecord) -> bool:
        """The preflight's webhook rule on the cached record (no I/O; only with --require-webhooks)."""
        policy = self.config.webhooks
        if not policy.require:
            return False
        return webhooks_block_sends(record.webhooks_state, record.last_receipt_at, utcnow(), policy)

    async def start(self) -> None:
        self._last_change_id = await self.repo.last_instance_change_id()
        await self.refresh_gauges()

    # --- the preflight's cache ---------------------------------------------------------------

    def peek(self, instance_id: str) -> CachedInstance | None:
        """The cached entry, fresh or not, without reading the store."""
        return self._cache.get(instance_id)

    def forget(self, instance_id: str) -> None:
        self._cache.pop(instance_id, None)

    def note_event(self, instance_id: str, received_at: datetime) -> None:
        previous = self.touched.get(instance_id)
        if previous is None or previous < received_at:
            self.touched[instance_id] = received_at

    def note_receipt(self, instance_id: str, received_at: datetime) -> None:
        """A receipt reached the bridge: the instance's webhooks evidently reach us. This replica's
        cached health sees it at once; the store (and other replicas) at the next flush."""
        previous = self.receipts.get(instance_id)
        if previous is None or previous < received_at:
            self.receipts[instance_id] = received_at
        cached = self._cache.get(instance_id)
        if cached is not None and (
            cached.record.last_receipt_at is None or cached.record.last_receipt_at < received_at
        ):
            cached.record = replace(cached.record, last_receipt_at=received_at)

    async def cached(self, instance_id: str) -> CachedInstance | None:
        cached = self._cache.get(instance_id)
        now = time.monotonic()
        if cached is not None and cached.expires > now:
            return cached
        found = await self.repo.get_instance(instance_id)
        if found is None:
            self._cache.pop(instance_id, None)
            return None
        register_secret(found[1])
        self._observe(found[0])
        cached = CachedInstance(found[0], found[1], now + self.config.health_cache_ttl)
        self._cache[instance_id] = cached
        return cached

    def _observe(self, record: InstanceRecord) -> None:
        """The provider registry learns the row's version: a newer one (a re-registration through
        another replica, perhaps onto another provider) makes it read the provider again."""
        if isinstance(self.provider, ProviderRegistry):
            self.provider.observe(record.instance_id, record.version)

    def remember(self, record: InstanceRecord) -> None:
        cached = self._cache.get(record.instance_id)
        if cached is not None:
            cached.record = record
            cached.expires = time.monotonic() + self.config.health_cache_ttl

    def after_change(self, change: InstanceChange | None) -> None:
        if change is None:
            return
        self.remember(change.instance)
        decision = change.decision
        connected = decision.applied and decision.to_state is InstanceState.CONNECTED
        if connected and decision.phone and self.on_connected_phone is not None:
            paired_here = decision.from_reason == Reason.PAIRING_IN_PROGRESS.value
            self.on_connected_phone(change.instance.instance_id, decision.phone, paired_here)
        if change.decision.changed:
            attributes = {
                "wapi.instance_id": change.instance.instance_id,
                "from": change.decision.from_state.value,
                "to": change.decision.to_state.value,
                "reason": change.decision.reason,
                "source": change.source,
            }
            trace.get_current_span().add_event("instance.state_change", attributes)
            self.metrics.state_changes.add(
                1, {"to": change.decision.to_state.value, "reason": change.decision.reason, "source": change.source}
            )
            log.info(
                "instance state changed",
                extra={
                    "instance_id": change.instance.instance_id,
                    "from": change.decision.from_state.value,
                    "to": change.decision.to_state.value,
                    "reason": change.decision.reason,
                    "source": change.source,
                },
            )
            self._feed_nudge.set()
            if (
                change.decision.to_state is InstanceState.CONNECTED
                and change.decision.from_state is not InstanceState.CONNECTED
                and self.on_reconnected is not None
            ):
                self.on_reconnected(change.instance.instance_id)

    async def register(
        self,
        instance_id: str,
        name: str,
        token: str,
        plan: Plan,
        *,
        probe: bool = True,
        provider: ProviderKind | None = None,
        base_url: str = "",
        client_token: str = "",
    ) -> InstanceRecord:
        violations = validate_instance_id(instance_id)
        if len(name) > 200:
            violations.append(Violation("name", "longer than 200 characters"))
        if len(token) > 512:
            violations.append(Violation("token", "longer than 512 characters"))
        if violations:
            raise InvalidRequest(violations)
        register_secret(token)
        register_secret(client_token or None)
        # The provider (services/app/providers.py), checked before anything is stored.
        registry = self.provider if isinstance(self.provider, ProviderRegistry) else None
        config = None
        if registry is not None:
            config = provider_config(provider, base_url, client_token, await registry.current(instance_id))
        elif provider not in (None, ProviderKind.WAPI) or base_url or client_token:
            raise InvalidRequest([Violation("provider", "this server speaks W-API only")])
        try:
            record, _created = await self.repo.upsert_instance(instance_id, name, token or None, plan)
        except ValueError:
            raise InvalidRequest([Violation("token", "required on first registration")]) from None
        if registry is not None and config is not None:
            await registry.bind(instance_id, config)
            record = replace(record, provider=config.kind.value)
        self.forget(instance_id)
        if probe:
            return await self.probe(instance_id, source="registration")
        return await self.with_stuck(record)

    async def remove(self, instance_id: str) -> bool:
        violations = validate_instance_id(instance_id)
        if violations:
            raise InvalidRequest(violations)
        removed = await self.repo.delete_instance(instance_id)
        if not removed:
            raise InstanceNotFound(instance_id)
        self._cache.pop(instance_id, None)
        await self.refresh_gauges()
        return removed

    async def probe(self, instance_id: str, *, source: str = "probe") -> InstanceRecord:
        """Asks the provider now and runs the answer through the instance machine."""
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        record, token = found
        register_secret(token)
        self._observe(record)
        async with self._probe_gate:
            outcome = await self.provider.probe(Credentials(instance_id, token), timeout=self.config.probe_timeout)
        change = await self.repo.apply_instance_trigger(
            instance_id, probe_trigger(outcome), source=source, new_phone=outcome.phone, checked_at=utcnow()
        )
        if change is None:
            raise InstanceNotFound(instance_id)
        self.after_change(change)
        return await self.with_stuck(change.instance)

    async def health(self, instance_id: str, *, refresh: bool = False) -> InstanceRecord:
        violations = validate_instance_id(instance_id)
        if violations:
            raise InvalidRequest(violations)
        if refresh:
            return await self.probe(instance_id, source="probe")
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        return await self.with_stuck(found[0])

    async def with_stuck(self, record: InstanceRecord) -> InstanceRecord:
        counts = await self.repo.stuck_counts([record.instance_id])
        return replace(record, stuck_messages=counts.get(record.instance_id, 0))

    async def list_instances(
        self, *, refresh: bool = False, states: Sequence[InstanceState] = ()
    ) -> list[InstanceRecord]:
        if refresh:
            await self.probe_all()
        return await self.repo.list_instances(states)

    async def instance_changes(
        self, ids: Sequence[str] | None, *, window: int, per_instance: int
    ) -> list[tuple[str, StateChange]]:
        """Recent instance transitions, oldest first: the last `window` of all instances, or the
        last `per_instance` of each of `ids`."""
        if ids is None:
            last = await self.repo.last_instance_change_id()
            rows = await self.repo.instance_changes_since(max(0, last - window), limit=window)
            return [(instance_id, change) for _id, instance_id, change in rows]
        ordered: list[tuple[str, StateChange]] = []
        for instance_id in ids:
            history = await self.repo.instance_history(instance_id, limit=per_instance)
            ordered += [(instance_id, change) for change in reversed(history)]
        ordered.sort(key=lambda item: item[1].at)
        return ordered

    async def probe_all(self) -> dict[str, InstanceState]:
        """Probes every instance concurrently, bounded by the probe gate, each with its own timeout."""
        ids = [instance_id for instance_id, _ in await self.repo.list_credentials()]

        async def one(instance_id: str) -> tuple[str, InstanceState]:
            try:
                return instance_id, (await self.probe(instance_id)).state
            except InstanceNotFound:
                return instance_id, InstanceState.UNKNOWN

        results = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
        out: dict[str, InstanceState] = {}
        for item in results:
            if isinstance(item, BaseException):
                log.warning("probe failed: %s", type(item).__name__)
            else:
                out[item[0]] = item[1]
        return out

    async def probe_forever(self) -> None:
        interval = self.config.probe_interval
        while True:
            # Jitter so N replicas (and N instances) do not probe W-API in lock-step.
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.probe_all()
            except Exception:
                log.exception("background probe round failed")

    async def subscribe(
        self, instance_ids: Sequence[str] = (), *, include_current: bool = False
    ) -> AsyncIterator[InstanceEvent]:
        queue: asyncio.Queue[InstanceEvent] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        wanted = set(instance_ids)
        try:
            if include_current:
                for record in await self.list_instances():
                    if not wanted or record.instance_id in wanted:
                        yield InstanceEvent(record, None)
            while True:
                item = await queue.get()
                if not wanted or item.instance.instance_id in wanted:
                    yield item
        finally:
            self._subscribers.discard(queue)

    async def tail_changes(self) -> None:
        """Publishes every instance change committed by any replica, in commit-id order."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._feed_nudge.wait(), self.config.change_poll_interval)
            self._feed_nudge.clear()
            try:
                changes = await self.repo.instance_changes_since(self._last_change_id)
            except Exception:
                log.warning("change feed poll failed", exc_info=True)
                continue
            if changes:
                with contextlib.suppress(Exception):
                    await self.refresh_gauges()
            for change_id, instance_id, change in changes:
                self._last_change_id = change_id
                self._cache.pop(instance_id, None)  # another replica may have made it
                if not self._subscribers:
                    continue
                found = await self.repo.get_instance(instance_id)
                if found is None:
                    continue
                record = await self.with_stuck(found[0])
                for queue in list(self._subscribers):
                    if queue.full():
                        queue.get_nowait()  # a slow watcher loses the oldest, never blocks the feed
                    queue.put_nowait(InstanceEvent(record, change))

    async def refresh_gauges(self) -> None:
        """Gauges read these snapshots: a scrape never queries the database."""
        self._gauge_stuck = await self.repo.stuck_counts()
        states: dict[str, int] = dict.fromkeys((s.value for s in InstanceState), 0)
        for state, count in (await self.repo.instance_state_counts()).items():
            states[state.value] = count
        self._gauge_states = states

    async def flush_touches(self) -> None:
        while True:
            await asyncio.sleep(self.config.touch_flush_interval)
            await self.flush_touches_once()

    async def flush_touches_once(self) -> None:
        if not self.touched and not self.receipts:
            return
        batch, self.touched = self.touched, {}
        receipts, self.receipts = self.receipts, {}
        try:
            await self.repo.touch_instances(batch, receipts)
        except Exception:
            log.warning("last_event_at flush failed; will retry", exc_info=True)
            for key, value in batch.items():
                self.touched[key] = max(value, self.touched.get(key, value))
            for key, value in receipts.items():
                self.receipts[key] = max(value, self.receipts.get(key, value))
