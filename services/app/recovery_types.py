"""Operator recovery's vocabulary and the parts its modules share: results, the configuration,
the pairing phone's rule, and `RecoveryParts`, what Recovery (recovery.py), its webhook set-up
(recovery_webhooks.py) and its log replay (log_replay.py) all hold."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.app.clock import utcnow
from services.app.health import Instances
from services.app.ingest import Ingest
from services.app.jobs import Jobs
from services.app.message_queries import MessageQueries
from statemachine.domain import (
    ActionOutcome,
    InstanceRecord,
    Reason,
    RecoveryAction,
)
from statemachine.errors import RecoveryRefused
from statemachine.phone import DEFAULT_REGION, canonical_phone
from statemachine.ports import InstanceOperations
from statemachine.store_ports import RecoveryStore
from statemachine.validation import Violation

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


class RecoveryParts:
    """What every part of Recovery holds (set by Recovery.__init__), and the two steps they share:
    the provider's instance operations (refused without them) and the audit of an action."""

    repo: RecoveryStore
    instances: Instances
    jobs: Jobs
    messages: MessageQueries
    ingest: Ingest
    operations: InstanceOperations | None
    config: RecoveryConfig
    _tasks: list[asyncio.Task[None]]
    _background: set[asyncio.Task[None]]
    # Providers that keep statuses (Evolution): pulled in the same round (provider_reconcile.py).
    pull_statuses: Callable[[str], Awaitable[object]] | None

    def _ops(self, instance_id: str) -> InstanceOperations:
        if self.operations is None:
            raise RecoveryRefused(Reason.PROVIDER_UNAVAILABLE, instance_id, "the provider has no instance operations")
        return self.operations

    async def _audit(self, instance_id: str, action: str, who: str, outcome: ActionOutcome) -> None:
        result = "OK" if outcome.ok else (outcome.failure or Reason.PROVIDER_ERROR).value
        detail = outcome.detail or outcome.message
        await self.repo.record_recovery_action(RecoveryAction(instance_id, action, who, utcnow(), result, detail))
        log.info(
            "recovery action",
            extra={"instance_id": instance_id, "action": action, "requested_by": who, "outcome": result},
        )
