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
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import timedelta

from services.app.clock import utcnow
from services.app.health import Instances
from services.app.ingest import Ingest
from services.app.jobs import Jobs
from services.app.log_replay import LogReplay
from services.app.message_queries import MessageQueries
from services.app.principals import current_principal
from services.app.recovery_types import (
    FOLLOWED_ACTIONS,
    LOG_MAX_PAGES,
    LOG_PER_PAGE,
    NOT_STALLED,
    RECONCILE_START_DELAY,
    WEBHOOKS_CONFIGURED,
    WEBHOOKS_FAILED,
    WEBHOOKS_UNCONFIGURED,
    ActionResult,
    Reconciliation,
    RecoveryConfig,
    WebhookKindResult,
    WebhooksResult,
    pairing_phone_violations,
)
from services.app.recovery_webhooks import WebhookSetup
from services.i18n import recovery_step
from statemachine.domain import (
    RECOVERY_PENDING,
    ActionOutcome,
    Credentials,
    InstanceRecord,
    InstanceState,
    MessageState,
    Reason,
    RecoveryAction,
)
from statemachine.errors import InstanceNotFound, InvalidRequest, RecoveryFailed, RecoveryRefused
from statemachine.instance_machine import RECOVERY_REASONS, InstanceTrigger
from statemachine.ports import InstanceOperations
from statemachine.store_ports import RecoveryStore
from statemachine.validation import validate_instance_id

log = logging.getLogger("wapi_guard.recovery")


class Recovery(WebhookSetup, LogReplay):
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

    async def actions(self, instance_id: str) -> list[RecoveryAction]:
        return await self.repo.list_recovery_actions(instance_id)


__all__ = [
    "FOLLOWED_ACTIONS",
    "LOG_MAX_PAGES",
    "LOG_PER_PAGE",
    "NOT_STALLED",
    "RECONCILE_START_DELAY",
    "WEBHOOKS_CONFIGURED",
    "WEBHOOKS_FAILED",
    "WEBHOOKS_UNCONFIGURED",
    "ActionResult",
    "MessageState",
    "Reconciliation",
    "Recovery",
    "RecoveryConfig",
    "WebhookKindResult",
    "WebhooksResult",
    "pairing_phone_violations",
]
