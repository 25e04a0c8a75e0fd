"""OpenTelemetry traces and metrics, configured the OpenTelemetry way (OTEL_* variables).

Tracing is off unless an OTLP endpoint or exporter is configured: then the no-op tracer costs
next to nothing on the hot path and no gRPC interceptor is installed. Metrics always exist
(Prometheus scrape at /metrics on the HTTP port) and also go out over OTLP when configured.
Everything here is per App, not process-global, so tests can run several Apps side by side.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, Tracer
from prometheus_client import CollectorRegistry, generate_latest

TRACER_NAME = "wapi_guard"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
DELIVERY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


# Tracing off: one shared, reusable context manager stands for every span.
NO_SPAN: contextlib.nullcontext[Span] = contextlib.nullcontext(INVALID_SPAN)


class NullTracer(NoOpTracer):
    """Tracing off costs nothing on the hot path: OTel's no-op tracer still builds a generator
    context manager and attaches a context per span (~10 µs each, measured in the benchmark)."""

    def start_as_current_span(self, *args: object, **kwargs: object) -> contextlib.nullcontext[Span]:  # type: ignore[override]
        return NO_SPAN


def use_span(span: Span, *, end_on_exit: bool) -> contextlib.AbstractContextManager[Span]:
    """`trace.use_span` without error recording (the core sets span status itself), free when off."""
    if span is INVALID_SPAN:
        return NO_SPAN
    return trace.use_span(span, end_on_exit=end_on_exit, record_exception=False, set_status_on_exception=False)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def tracing_configured(env: Mapping[str, str]) -> bool:
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def metrics_otlp_configured(env: Mapping[str, str]) -> bool:
    """OTLP metrics only when asked for (OTEL_METRICS_EXPORTER=otlp): Jaeger, the usual OTLP
    endpoint here, takes traces only; Prometheus can always scrape /metrics."""
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return False
    return "otlp" in env.get("OTEL_METRICS_EXPORTER", "").lower().split(",")


def _resource(env: Mapping[str, str]) -> Resource:
    attributes: dict[str, str] = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "wapi-guard"
    return Resource.create(attributes)


def _span_exporter(env: Mapping[str, str]) -> SpanExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).lower()
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

    return GrpcExporter()


def _metric_exporter(env: Mapping[str, str]) -> MetricExporter:
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).lower()
    if protocol.startswith("http"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

        return HttpExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

    return GrpcExporter()


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
    prune_duration: Histogram = field(init=False)
    gauges: dict[str, Callable[[], Iterable[tuple[float, dict[str, str]]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        m = self.meter
        self.sends = FastCounter(m, "wapiguard.sends", "Send attempts by outcome and reason")
        self.blocked = FastCounter(m, "wapiguard.sends.blocked", "Sends blocked before the provider")
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

    def _observe(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            source = self.gauges.get(name)
            return [Observation(value, attrs) for value, attrs in (source() if source else [])]

        return callback


class Telemetry:
    def __init__(self, env: Mapping[str, str] | None = None, *, span_exporter: SpanExporter | None = None) -> None:
        env = os.environ if env is None else env
        resource = _resource(env)
        self.tracing = span_exporter is not None or tracing_configured(env)
        self.tracer_provider: TracerProvider | None = None
        if self.tracing:
            self.tracer_provider = TracerProvider(resource=resource)
            self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter or _span_exporter(env)))
            self.tracer: Tracer = self.tracer_provider.get_tracer(TRACER_NAME)
        else:
            self.tracer = NullTracer()
        self.registry = CollectorRegistry()
        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        if metrics_otlp_configured(env):
            readers.append(PeriodicExportingMetricReader(_metric_exporter(env)))
        views = [
            View(
                instrument_name="wapiguard.provider.duration",
                aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS),
            ),
            View(
                instrument_name="wapiguard.delivery.duration",
                aggregation=ExplicitBucketHistogramAggregation(DELIVERY_BUCKETS),
            ),
        ]
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers, views=views)
        self.metrics = Metrics(self.meter_provider.get_meter(TRACER_NAME))

    def server_interceptors(self) -> list[object]:
        """The OTel gRPC server interceptor, only when tracing is on (health checks excluded)."""
        if self.tracer_provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

        return [
            aio_server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=self.tracer_provider,
                filter_=filters.negate(
                    filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
                ),
            )
        ]

    def prometheus_text(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def shutdown(self) -> None:
        """Flushes the last spans and metrics (graceful shutdown)."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(5000)
            self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=5000)


def current_trace_ids() -> tuple[str, str]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
