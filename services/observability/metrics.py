"""The service's metric instruments (OpenTelemetry; exported on /metrics and, when asked, over OTLP).

Counters on the hot path are dict increments (`FastCounter`); gauges read snapshots the use cases
keep up to date (`Metrics.gauges`), so a scrape never queries the database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DELIVERY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class FastCounter:
    """A monotonic counter whose hot-path `add` is a dict increment.

    OTel's synchronous Counter.add costs ~10 µs per call (attribute cleaning, hashing, view
    matching; measured in the benchmark's profile); here the totals are kept per attribute set
    and handed to OTel as an observable counter when a reader collects (Prometheus scrape, OTLP
    export). Same exported metric: a cumulative monotonic sum (`*_total` on /metrics).
    """

    def __init__(self, meter: Meter, name: str, description: str) -> None:
        self._totals: dict[tuple[tuple[str, str], ...], float] = {}
        meter.create_observable_counter(name, [self._observe], description=description)

    def add(self, amount: float, attributes: Mapping[str, str] | None = None) -> None:
        key = tuple(sorted(attributes.items())) if attributes else ()
        self._totals[key] = self._totals.get(key, 0) + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        # list(): an OTLP export runs on its own thread while the loop keeps counting.
        return [Observation(total, dict(key)) for key, total in list(self._totals.items())]


@dataclass
class Metrics:
    """The service's instruments. Names follow OpenTelemetry semantic style (dots → Prometheus _)."""

    meter: Meter
    sends: FastCounter = field(init=False)
    blocked: FastCounter = field(init=False)
    provider_latency: Histogram = field(init=False)
    delivery_latency: Histogram = field(init=False)
    webhook_events: FastCounter = field(init=False)
    stuck_alerts: FastCounter = field(init=False)
    state_changes: FastCounter = field(init=False)
    pruned: FastCounter = field(init=False)
    webhook_timeouts: FastCounter = field(init=False)
    webhook_refused: FastCounter = field(init=False)
    webhook_fan_out_failures: FastCounter = field(init=False)
    prune_duration: Histogram = field(init=False)
    holds: FastCounter = field(init=False)
    paced: FastCounter = field(init=False)
    suppressed: FastCounter = field(init=False)
    gauges: dict[str, Callable[[], Iterable[tuple[float, dict[str, str]]]]] = field(default_factory=dict)

    def _protection_counters(self, m: Meter) -> None:
        self.paced = FastCounter(m, "wapiguard.sends.paced", "Sends the send policy refused for now, by reason")
        self.suppressed = FastCounter(m, "wapiguard.sends.suppressed", "Sends refused: opted out / not on WhatsApp")
        self.holds = FastCounter(m, "wapiguard.sends.holds", "Held sends: held/released/expired/cancelled")

    def note_blocked(self, reason: str) -> None:
        """A send the preflight refused: blocked, and suppressed when its recipient is the reason."""
        self.blocked.add(1, {"reason": reason})
        if reason in ("RECIPIENT_OPTED_OUT", "NOT_ON_WHATSAPP"):
            self.suppressed.add(1, {"reason": reason})

    def note_paced(self, reason: str) -> None:
        """A send the instance's send policy refused for now."""
        self.sends.add(1, {"outcome": "paced", "reason": reason})
        self.paced.add(1, {"reason": reason})

    def __post_init__(self) -> None:
        m = self.meter
        self.sends = FastCounter(m, "wapiguard.sends", "Send attempts by outcome and reason")
        self.blocked = FastCounter(m, "wapiguard.sends.blocked", "Sends blocked before the provider")
        self._protection_counters(m)
        self.provider_latency = m.create_histogram(
            "wapiguard.provider.duration", unit="s", description="W-API call latency by operation and outcome"
        )
        self.delivery_latency = m.create_histogram(
            "wapiguard.delivery.duration", unit="s", description="Time from SENT to DELIVERED / READ"
        )
        self.webhook_events = FastCounter(m, "wapiguard.webhook.events", "Webhook events by route")
        self.stuck_alerts = FastCounter(m, "wapiguard.messages.stuck.alerts", "Stuck-message alerts")
        self.state_changes = FastCounter(m, "wapiguard.instance.state_changes", "Instance changes")
        self.pruned = FastCounter(m, "wapiguard.retention.pruned", "Rows deleted by retention, by table")
        self.webhook_timeouts = FastCounter(
            m, "wapiguard.webhooks.timeouts", "Outbound webhook attempts cut at --webhook-timeout, per subscription"
        )
        self.webhook_refused = FastCounter(
            m,
            "wapiguard.webhooks.refused",
            "Outbound webhook attempts not made: target address refused or outside the creator's scope",
        )
        self.webhook_fan_out_failures = FastCounter(
            m, "wapiguard.webhooks.fan_out_failures", "Failed fan-out rounds of one subscription (isolated)"
        )
        self.prune_duration = m.create_histogram(
            "wapiguard.retention.duration", unit="s", description="Duration of one retention run"
        )
        m.create_observable_gauge(
            "wapiguard.messages.stuck", [self._observe("stuck")], description="Messages currently stuck in SENT"
        )
        m.create_observable_gauge("wapiguard.instances", [self._observe("instances")], description="Instances by state")
        m.create_observable_gauge(
            "wapiguard.webhooks.lag",
            [self._observe("webhook_lag_seconds")],
            unit="s",
            description="Age of the oldest pending outbound webhook delivery, per subscription",
        )
        m.create_observable_gauge(
            "wapiguard.webhooks.pending",
            [self._observe("webhook_pending")],
            description="Outbound webhook deliveries waiting, per subscription",
        )
        m.create_observable_gauge(
            "wapiguard.webhooks.consecutive_failures",
            [self._observe("webhook_consecutive_failures")],
            description="Failed outbound webhook attempts since the last success, per subscription",
        )

        m.create_observable_gauge(
            "wapiguard.events.streams",
            [self._observe("event_streams")],
            description="Event streams (Subscribe) open on this process",
        )
        m.create_observable_counter(
            "wapiguard.events.subscribers_cut_off",
            [self._observe("event_cut_offs")],
            description="Event streams closed as too slow (not reading while events waited)",
        )

    def _observe(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            source = self.gauges.get(name)
            return [Observation(value, attrs) for value, attrs in (source() if source else [])]

        return callback
