"""The use cases' settings (built from services.config.Settings by the composition root)."""

from __future__ import annotations

from dataclasses import dataclass, field

from statemachine.phone import DEFAULT_REGION
from statemachine.ports import RetentionPolicy
from statemachine.preflight import WebhookPolicy


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    send_timeout: float = 15.0
    probe_timeout: float = 10.0
    # Upper bound on how stale another replica's view of an instance can be in the preflight.
    health_cache_ttl: float = 2.0
    # Change-feed poll: also how fast a change made by another replica reaches watchers/caches.
    change_poll_interval: float = 0.5
    gateway_failure_threshold: int = 3
    probe_interval: float = 60.0
    probe_concurrency: int = 16
    touch_flush_interval: float = 1.0
    # A message SENT for longer than this without DELIVERED/READ is stuck (operational alert).
    stuck_after: float = 300.0
    # This many stuck messages in a row, with no delivery between them: DEGRADED/DELIVERY_STALLED.
    stall_threshold: int = 3
    sweep_interval: float = 15.0
    # Messages one sweep marks stuck at most; while a backlog remains the next sweep follows at
    # once (at most `sweep_continuations` in a row), so each sweep stays short.
    sweep_batch: int = 50
    sweep_continuations: int = 100
    # The learned stall test (statemachine.detection): its size per instance-day, how often the
    # sending instances are assessed (0 disables it), and how fresh their probed health is kept.
    stall_false_alarm_per_day: float = 1e-4
    detect_interval: float = 1.0
    active_probe_max_age: float = 3.0
    # PENDING longer than this (well past any send timeout) means a crash mid-send: OUTCOME_UNKNOWN.
    pending_grace: float = 60.0
    # Seconds between retention runs (0: never prune); what each table keeps.
    retention_interval: float = 3600.0
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    # Region whose national numbers recipients may be typed in (statemachine.phone.canonical_phone).
    phone_region: str = DEFAULT_REGION
    # Webhooks in the instance's verdict (statemachine.preflight.health_verdict), and what the next
    # step names: the bridge's public base URL (--public-url) and whether its path carries a secret.
    webhooks: WebhookPolicy = field(default_factory=WebhookPolicy)
    public_url: str | None = None
    webhook_secret_set: bool = False

    def pending_cutoff_seconds(self) -> float:
        """How long a PENDING message may wait for its answer before it is OUTCOME_UNKNOWN."""
        return max(self.pending_grace, self.send_timeout)
