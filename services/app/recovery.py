"""The operator's recovery loop: reconnect an instance, point W-API's webhooks at the bridge, and
replay what the bridge missed from W-API's webhook log.

Every action goes through the provider's instance operations, then through the one instance
machine (restart / pairing in progress are states of their own; only a connection event or a
probe WITH a phone makes it CONNECTED). One action per instance at a time, a per-instance rate
limit counted in the database (so it holds across replicas and restarts), and an audit row with
who asked for every action that reached W-API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from services.app.clock import utcnow
from services.app.health import Instances
from services.app.ingest import Ingest
from services.app.jobs import Jobs
from services.app.message_queries import MessageQueries
from services.app.principals import current_principal
from services.i18n import recovery_step
from statemachine.domain import (
    RECOVERY_PENDING,
    ActionOutcome,
    Credentials,
    InstanceRecord,
    InstanceState,
    LoggedEvent,
    MessageRecord,
    MessageState,
    Reason,
    RecoveryAction,
)
from statemachine.errors import InstanceNotFound, InvalidRequest, RecoveryFailed, RecoveryRefused
from statemachine.instance_machine import RECOVERY_REASONS, InstanceTrigger
from statemachine.phone import DEFAULT_REGION, canonical_phone
from statemachine.ports import InstanceOperations
from statemachine.store_ports import RecoveryStore
from statemachine.validation import Violation, validate_instance_id

log = logging.getLogger("wapi_guard.recovery")


WEBHOOKS_CONFIGURED = "CONFIGURED"
WEBHOOKS_FAILED = "FAILED"
WEBHOOKS_UNCONFIGURED = "UNCONFIGURED"
NOT_STALLED = "NOT_STALLED"  # the detail of a clear that found no delivery stall to lift
LOG_PER_PAGE = 50
LOG_MAX_PAGES = 40  # per instance and run: bounded even when the log is huge
RECONCILE_START_DELAY = 1.0
# Actions after which the session comes back with a phone: followed by short probes.
FOLLOWED_ACTIONS = frozenset({"qr_code", "pairing_code", "restart"})


def pairing_phone_violations(phone: str, region: str = DEFAULT_REGION) -> tuple[str, list[Violation]]:
    """The phone a pairing code is requested for, as canonical E.164 digits: the same rule as a
    recipient's (`statemachine.phone.canonical_phone`: international, or national in `region`)."""
    if not phone.strip():
        return "", [Violation("phone_number", "required: the phone to pair, e.g. +55 15 98112-1710")]
    digits, problem = canonical_phone(phone, region)
    if problem:
        return "", [Violation("phone_number", problem)]
    return digits, []


@dataclass(frozen=True, slots=True)
class RecoveryConfig:
    public_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    action_timeout: float = 10.0
    limit: int = 5
    window: float = 600.0
    reconcile_interval: float = 300.0
    stuck_after: float = 300.0
    phone_region: str = DEFAULT_REGION
    # Short probes after an action that waits for the phone (QR, pairing code, restart).
    follow_interval: float = 2.5
    follow_for: float = 120.0
    # Read-back of every instance's webhook URLs (one W-API request per instance; 0 disables).
    webhook_check_interval: float = 900.0


@dataclass(frozen=True, slots=True)
class ActionResult:
    health: InstanceRecord
    outcome: ActionOutcome
    next_step: str


@dataclass(frozen=True, slots=True)
class WebhookKindResult:
    kind: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class WebhooksResult:
    health: InstanceRecord
    kinds: list[WebhookKindResult]
    configured: bool
    url: str
    next_step: str


@dataclass(slots=True)
class Reconciliation:
    instance_id: str
    fetched: int = 0
    applied: int = 0
    duplicates: int = 0
    failed: int = 0
    pages: int = 0
    error: str = ""


class Recovery:
    def __init__(
        self,
        repo: RecoveryStore,
        instances: Instances,
        operations: InstanceOperations | None,
        config: RecoveryConfig | None = None,
        *,
        jobs: Jobs,
        messages: MessageQueries,
        ingest: Ingest,
    ) -> None:
        # The recovery audit, the webhook state and the log replay's reads (store_ports.RecoveryStore);
        # the health cache and views (instances); the sweep and the stuck list before a replay
        # (jobs, messages); the replay itself goes through the normal webhook path (ingest).
        self.repo = repo
        self.instances = instances
        self.jobs = jobs
        self.messages = messages
        self.ingest = ingest
        self.operations = operations
        self.config = config or RecoveryConfig()
        self._busy: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._followers: dict[str, asyncio.Task[None]] = {}
        # Providers that keep statuses (Evolution): pulled in the same round (provider_reconcile.py).
        self.pull_statuses: Callable[[str], Awaitable[object]] | None = None
        instances.on_reconnected = self._reapply_webhooks_later

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Replays missed events once at start-up (after downtime), then on a schedule."""
        if self.operations is not None and self.config.reconcile_interval > 0:
            self._tasks.append(asyncio.create_task(self._reconcile_forever(), name="webhook-log-reconciler"))
        if self.operations is not None and self.config.webhook_check_interval > 0:
            self._tasks.append(asyncio.create_task(self._check_webhooks_forever(), name="webhook-check"))

    async def aclose(self) -> None:
        tasks = [*self._tasks, *self._background, *self._followers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._background.clear()
        self._followers.clear()

    # --- the bridge URL ----------------------------------------------------------------------

    def bridge_url(self) -> str | None:
        if not self.config.public_url:
            return None
        base = self.config.public_url.rstrip("/") + "/webhooks/wapi"
        return f"{base}/{self.config.webhook_secret}" if self.config.webhook_secret else base

    def masked_bridge_url(self) -> str:
        url = self.bridge_url() or ""
        secret = self.config.webhook_secret
        return url.replace(secret, "***") if secret else url

    # --- actions -----------------------------------------------------------------------------

    async def qr_code(self, instance_id: str, locale: str = "pt-BR") -> ActionResult:
        async def act(ops: InstanceOperations, creds: Credentials) -> ActionOutcome:
            return await ops.qr_code(creds, timeout=self.config.action_timeout)

        return await self._run("qr_code", instance_id, act, locale)

    async def pairing_code(self, instance_id: str, phone: str, locale: str = "pt-BR") -> ActionResult:
        digits, violations = pairing_phone_violations(phone, self.config.phone_region)
        violations = validate_instance_id(instance_id) + violations
        if violations:
            raise InvalidRequest(violations)

        async def act(ops: InstanceOperations, creds: Credentials) -> ActionOutcome:
            return await ops.pairing_code(creds, digits, timeout=self.config.action_timeout)

        return await self._run("pairing_code", instance_id, act, locale)

    async def restart(self, instance_id: str, locale: str = "pt-BR") -> ActionResult:
        async def act(ops: InstanceOperations, creds: Credentials) -> ActionOutcome:
            return await ops.restart(creds, timeout=self.config.action_timeout)

        return await self._run("restart", instance_id, act, locale)

    async def disconnect(self, instance_id: str, locale: str = "pt-BR") -> ActionResult:
        async def act(ops: InstanceOperations, creds: Credentials) -> ActionOutcome:
            return await ops.disconnect(creds, timeout=self.config.action_timeout)

        return await self._run("disconnect", instance_id, act, locale)

    async def clear_stall(self, instance_id: str, locale: str = "pt-BR") -> ActionResult:
        """An operator's explicit clear of a delivery stall (the session was checked by hand).

        Nothing goes to W-API: the one instance machine lifts DEGRADED/DELIVERY_STALLED only
        (`clear_stall`), the transition names `operator:<who>` in the instance's history and the
        change log, and an audit row records the request whether or not there was a stall to clear
        (clearing twice is not an error). The stall evidence starts afresh from the clear.
        """
        violations = validate_instance_id(instance_id)
        if violations:
            raise InvalidRequest(violations)
        who = current_principal.get().name
        async with self._exclusive(instance_id):
            change = await self.repo.apply_instance_trigger(
                instance_id, InstanceTrigger.CLEAR_STALL, source=f"operator:{who}"
            )
            if change is None:
                raise InstanceNotFound(instance_id)
            record = change.instance
            if change.decision.changed:
                outcome = ActionOutcome(ok=True, message="delivery stall cleared")
                self.instances.after_change(change)
            else:
                outcome = ActionOutcome(
                    ok=True, detail=NOT_STALLED, message=f"not stalled ({record.state.value}/{record.reason})"
                )
            await self._audit(instance_id, "clear_stall", who, outcome)
        return ActionResult(record, outcome, self.instances.view(record, locale).next_step)

    async def _run(
        self,
        action: str,
        instance_id: str,
        act: Callable[[InstanceOperations, Credentials], Awaitable[ActionOutcome]],
        locale: str,
    ) -> ActionResult:
        violations = validate_instance_id(instance_id)
        if violations:
            raise InvalidRequest(violations)
        ops = self._ops(instance_id)
        who = current_principal.get().name
        async with self._exclusive(instance_id):
            found = await self.repo.get_instance(instance_id)
            if found is None:
                raise InstanceNotFound(instance_id)
            action_id = await self._reserve(instance_id, action, who)
            try:
                outcome = await act(ops, Credentials(instance_id, found[1]))
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.repo.finish_recovery_action(action_id, Reason.PROVIDER_ERROR.value, "interrupted")
                raise
            await self._finish(action_id, instance_id, action, who, outcome)
            if not outcome.ok:
                raise RecoveryFailed(outcome.failure or Reason.PROVIDER_ERROR, instance_id, action, outcome.detail)
            trigger = self._trigger_after(action, outcome)
            source = f"operator:{who}"
            record = found[0]
            if trigger is not None:
                change = await self.repo.apply_instance_trigger(
                    instance_id, InstanceTrigger(trigger), source=source, new_phone=outcome.phone
                )
                if change is None:
                    raise InstanceNotFound(instance_id)
                self.instances.after_change(change)
                record = change.instance
        if action in FOLLOWED_ACTIONS and record.state is not InstanceState.CONNECTED:
            self._follow_later(instance_id)
        return ActionResult(record, outcome, self._next_after(action, outcome, record, locale))

    def _follow_later(self, instance_id: str) -> None:
        """Probes the instance at a short interval after an action that waits for the phone, so a
        pairing shows as CONNECTED within seconds even when no connection webhook arrives (and
        without waiting for the periodic probe). One follower per instance: a new action restarts it."""
        if self.config.follow_interval <= 0:
            return
        previous = self._followers.pop(instance_id, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(self._follow(instance_id), name=f"recovery-follow-{instance_id}")
        self._followers[instance_id] = task
        task.add_done_callback(
            lambda done: self._followers.pop(instance_id, None) if self._followers.get(instance_id) is done else None
        )

    def _forget_follower(self, task: asyncio.Task[None]) -> None:
        for instance_id, follower in list(self._followers.items()):
            if follower is task:
                del self._followers[instance_id]

    async def _follow(self, instance_id: str) -> None:
        """Bounded: at most `follow_for` seconds, one probe per `follow_interval` (≈ 48 probes with the
        defaults, one request to W-API's status endpoint each); it stops at the first sign that the
        wait is over: CONNECTED (by a connection event or a probe with a phone), or a reason that is
        no longer a restart's or pairing's (disconnected by the operator, token refused, removed)."""
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.config.follow_for
        while loop.time() + self.config.follow_interval <= ends:
            await asyncio.sleep(self.config.follow_interval)
            try:
                found = await self.repo.get_instance(instance_id)
                if (
                    found is None
                    or found[0].state is InstanceState.CONNECTED
                    or found[0].reason not in RECOVERY_REASONS
                ):
                    return
                record = await self.instances.probe(instance_id, source="recovery_probe")
            except InstanceNotFound:
                return
            except Exception:
                log.warning("probe after a recovery action failed", extra={"instance_id": instance_id}, exc_info=True)
                continue
            if record.state is InstanceState.CONNECTED:
                return

    @staticmethod
    def _trigger_after(action: str, outcome: ActionOutcome) -> str | None:
        if action in ("qr_code", "pairing_code"):
            if outcome.connected:
                # W-API says it is already paired: only a phone makes that CONNECTED.
                return "report_connected"
            return "begin_pairing"
        if action == "restart":
            return "begin_restart"
        if action == "disconnect":
            return "request_disconnect"
        return None

    def _next_after(self, action: str, outcome: ActionOutcome, record: InstanceRecord, locale: str) -> str:
        if action == "pairing_code" and outcome.pairing_code:
            return recovery_step("pairing_code", locale, code=outcome.pairing_code)
        if action == "qr_code" and (outcome.png or outcome.qr_text):
            return recovery_step("qr_code", locale)
        return self.instances.view(record, locale).next_step

    def _ops(self, instance_id: str) -> InstanceOperations:
        if self.operations is None:
            raise RecoveryRefused(Reason.PROVIDER_UNAVAILABLE, instance_id, "the provider has no instance operations")
        return self.operations

    @contextlib.asynccontextmanager
    async def _exclusive(self, instance_id: str):  # type: ignore[no-untyped-def]
        """One recovery action per instance at a time (in this process)."""
        if instance_id in self._busy:
            raise RecoveryRefused(Reason.RECOVERY_IN_PROGRESS, instance_id)
        self._busy.add(instance_id)
        try:
            yield
        finally:
            self._busy.discard(instance_id)

    async def _reserve(self, instance_id: str, action: str, who: str) -> int:
        """The operator's per-instance limit, atomic across replicas: the audit row (PENDING) is
        counted and inserted in one locked transaction before W-API is asked. A refusal says how
        long to wait (google.rpc.RetryInfo)."""
        now = utcnow()
        reservation = await self.repo.reserve_recovery_action(
            RecoveryAction(instance_id, action, who, now, RECOVERY_PENDING),
            since=now - timedelta(seconds=self.config.window),
            limit=self.config.limit,
            window=self.config.window,
        )
        if reservation is None:
            raise InstanceNotFound(instance_id)
        if reservation.action_id is None:
            wait = max(1.0, math.ceil(reservation.retry_after))
            raise RecoveryRefused(
                Reason.RECOVERY_RATE_LIMITED,
                instance_id,
                f"at most {self.config.limit} per {self.config.window:g}s; retry in {wait:g}s",
                retry_after=wait,
            )
        return reservation.action_id

    async def _finish(self, action_id: int, instance_id: str, action: str, who: str, outcome: ActionOutcome) -> None:
        result = "OK" if outcome.ok else (outcome.failure or Reason.PROVIDER_ERROR).value
        await self.repo.finish_recovery_action(action_id, result, outcome.detail or outcome.message)
        log.info(
            "recovery action",
            extra={"instance_id": instance_id, "action": action, "requested_by": who, "outcome": result},
        )

    async def _audit(self, instance_id: str, action: str, who: str, outcome: ActionOutcome) -> None:
        result = "OK" if outcome.ok else (outcome.failure or Reason.PROVIDER_ERROR).value
        detail = outcome.detail or outcome.message
        await self.repo.record_recovery_action(RecoveryAction(instance_id, action, who, utcnow(), result, detail))
        log.info(
            "recovery action",
            extra={"instance_id": instance_id, "action": action, "requested_by": who, "outcome": result},
        )

    async def actions(self, instance_id: str) -> list[RecoveryAction]:
        return await self.repo.list_recovery_actions(instance_id)

    # --- webhook configuration ---------------------------------------------------------------

    async def configure_webhooks(
        self, instance_id: str, locale: str = "pt-BR", *, who: str | None = None
    ) -> WebhooksResult:
        """Sets all six kinds to the bridge URL, then reads back what W-API kept."""
        url = self.bridge_url()
        if url is None:
            raise RecoveryRefused(Reason.PUBLIC_URL_NOT_CONFIGURED, instance_id)
        ops = self._ops(instance_id)
        who = who or current_principal.get().name
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        creds = Credentials(instance_id, found[1])
        results: list[WebhookKindResult] = []
        for kind in ops.webhook_kinds:
            outcome = await ops.set_webhook(creds, kind, url, timeout=self.config.action_timeout)
            results.append(WebhookKindResult(kind, outcome.ok, "" if outcome.ok else self._mask(outcome.detail)))
        failed = [r for r in results if not r.ok]
        if not failed:
            results = await self._verify(ops, creds, url, results)
            failed = [r for r in results if not r.ok]
        await self._audit(
            instance_id,
            "configure_webhooks",
            who,
            ActionOutcome(
                ok=not failed,
                failure=Reason.PROVIDER_ERROR if failed else None,
                detail="; ".join(f"{r.kind}: {r.detail}" for r in failed),
            ),
        )
        return await self._webhooks_result(instance_id, results, locale)

    async def check_webhooks(self, instance_id: str, locale: str = "pt-BR") -> WebhooksResult:
        url = self.bridge_url()
        if url is None:
            raise RecoveryRefused(Reason.PUBLIC_URL_NOT_CONFIGURED, instance_id)
        ops = self._ops(instance_id)
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        results = [WebhookKindResult(kind, True) for kind in ops.webhook_kinds]
        results = await self._verify(ops, Credentials(instance_id, found[1]), url, results)
        return await self._webhooks_result(instance_id, results, locale)

    async def _verify(
        self, ops: InstanceOperations, creds: Credentials, url: str, results: list[WebhookKindResult]
    ) -> list[WebhookKindResult]:
        read = await ops.webhook_urls(creds, timeout=self.config.action_timeout)
        if not read.ok:
            return [WebhookKindResult(r.kind, False, f"cannot read back: {self._mask(read.detail)}") for r in results]
        checked = []
        for result in results:
            seen = read.webhook_urls.get(result.kind)
            if seen is None:
                checked.append(result)  # W-API does not show this kind: its own answer to the update stands
            elif seen != url:
                checked.append(WebhookKindResult(result.kind, False, f"W-API has {self._mask(seen)}"))
            else:
                checked.append(result)
        return checked

    async def _webhooks_result(self, instance_id: str, results: list[WebhookKindResult], locale: str) -> WebhooksResult:
        failed = [r for r in results if not r.ok]
        state = WEBHOOKS_FAILED if failed else WEBHOOKS_CONFIGURED
        detail = "; ".join(f"{r.kind}: {r.detail}" for r in failed)
        record = await self.repo.set_webhooks_state(instance_id, state, detail)
        if record is None:
            raise InstanceNotFound(instance_id)
        self.instances.remember(record)  # the preflight's cache (with --require-webhooks) at once
        record = await self.instances.with_stuck(record)
        step = recovery_step("webhooks_refused", locale) if failed else self.instances.view(record, locale).next_step
        return WebhooksResult(record, results, not failed, self.masked_bridge_url(), step)

    def _mask(self, text: str) -> str:
        secret = self.config.webhook_secret
        return text.replace(secret, "***") if secret else text

    async def after_registration(self, instance_id: str) -> None:
        """Registration points W-API's webhooks at the bridge when a public URL is configured."""
        if self.bridge_url() is None or self.operations is None:
            return
        try:
            await self.configure_webhooks(instance_id, who="registration")
        except Exception:
            log.warning("webhook set-up after registration failed", extra={"instance_id": instance_id}, exc_info=True)

    def _reapply_webhooks_later(self, instance_id: str) -> None:
        """A reconnection may have dropped W-API's webhook URLs: set them again."""
        if self.bridge_url() is None or self.operations is None:
            return
        task = asyncio.get_running_loop().create_task(self._reapply(instance_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reapply(self, instance_id: str) -> None:
        try:
            await self.configure_webhooks(instance_id, who="reconnection")
        except Exception:
            log.warning("re-applying webhooks after a reconnection failed", extra={"instance_id": instance_id})

    async def check_all_webhooks(self) -> int:
        """Reads back every instance's webhook URLs (W-API's fetch-instance, one request per instance,
        one instance at a time) and stores what it finds: CONFIGURED, or FAILED with what W-API has
        (pointing elsewhere, unreadable). Needs --public-url (the URL to compare with). Never on the
        send path; the verdict reads the stored result."""
        if self.bridge_url() is None or self.operations is None:
            return 0
        checked = 0
        for instance_id, _token in await self.repo.list_credentials():
            try:
                await self.check_webhooks(instance_id)
                checked += 1
            except InstanceNotFound:
                continue
            except Exception:
                log.warning("webhook read-back failed", extra={"instance_id": instance_id}, exc_info=True)
        return checked

    async def _check_webhooks_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.webhook_check_interval * random.uniform(0.8, 1.2))
            try:
                await self.check_all_webhooks()
            except Exception:
                log.warning("webhook check round failed", exc_info=True)

    # --- reconciliation of missed events -----------------------------------------------------

    async def reconcile(self, instance_id: str = "") -> tuple[list[Reconciliation], list[MessageRecord]]:
        """Replays W-API's webhook log since the last stored event, through the normal ingest path:
        dedupe makes it idempotent, and out-of-order statuses are already safe."""
        if instance_id:
            violations = validate_instance_id(instance_id)
            if violations:
                raise InvalidRequest(violations)
            found = await self.repo.get_instance(instance_id)
            if found is None:
                raise InstanceNotFound(instance_id)
            targets = [(instance_id, found[1])]
        else:
            targets = await self.repo.list_credentials()
        results = [await self._reconcile_one(i, token) for i, token in targets]
        if self.pull_statuses is not None:
            await self.pull_statuses(instance_id)
        await self.jobs.sweep_once()
        stuck, _token = await self.messages.list_messages(instance_id=instance_id, stuck_only=True, page_size=200)
        return results, stuck

    async def _reconcile_one(self, instance_id: str, token: str) -> Reconciliation:
        result = Reconciliation(instance_id)
        if self.operations is None:
            result.error = "the provider has no webhook log"
            return result
        since = await self.repo.last_event_received_at(instance_id)
        creds = Credentials(instance_id, token)
        # Newest first: read pages until one holds only events older than the last stored one
        # (with a margin for clock skew) or the log ends. Dedupe drops what is already stored.
        margin = timedelta(minutes=5)
        entries = []
        for page in range(1, LOG_MAX_PAGES + 1):
            got = await self.operations.webhook_logs(
                creds, page=page, per_page=LOG_PER_PAGE, timeout=self.config.action_timeout
            )
            if got.failure is not None:
                result.error = f"{got.failure.value}: {got.detail}"
                break
            result.pages = page
            entries.extend(got.entries)
            if not got.entries or (got.total_pages is not None and page >= got.total_pages):
                break
            if since is not None and _all_older(got.entries, since - margin):
                break
        # Oldest first, as W-API posted them.
        for entry in reversed(entries):
            result.fetched += 1
            # Already stored: skip it here, so a replay never counts as the provider re-posting it.
            if await self.repo.event_stored(self.ingest.parse_webhook(entry.payload).dedupe_key):
                result.duplicates += 1
                continue
            try:
                ingested = await self.ingest.ingest(entry.payload, {"x-wapiguard-replay": entry.log_id or "log"})
            except Exception:
                result.failed += 1
                continue
            if ingested.duplicate:
                result.duplicates += 1
            else:
                result.applied += 1
        if result.applied:
            log.info(
                "missed events replayed from the webhook log",
                extra={"instance_id": instance_id, "applied": result.applied, "duplicates": result.duplicates},
            )
        return result

    async def _reconcile_forever(self) -> None:
        await asyncio.sleep(RECONCILE_START_DELAY)
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.warning("webhook log reconciliation failed", exc_info=True)
            await asyncio.sleep(self.config.reconcile_interval * random.uniform(0.8, 1.2))


def _all_older(entries: list[LoggedEvent], cutoff: datetime) -> bool:
    """Whether every entry of a page was posted before `cutoff` (by its `moment`, when it has one)."""
    for entry in entries:
        try:
            moment = json.loads(entry.payload).get("moment")
        except (ValueError, AttributeError):
            return False
        if not isinstance(moment, int | float) or moment >= cutoff.timestamp():
            return False
    return True


__all__ = ["MessageState", "Reconciliation", "Recovery", "RecoveryConfig"]
