"""A status that beat its send's SENT commit is parked; when the sweeper applies it later, the
send attempt's trace still gets it: a `wapi.status.late` span linked to the attempt."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.app.gateway_config import GatewayConfig
from services.app.jobs import Jobs
from services.observability.telemetry import Telemetry
from statemachine.domain import StateChange
from statemachine.ports import MessageChange

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"


class _Repo:
    def __init__(self, late: list[MessageChange]) -> None:
        self.late = late

    async def apply_parked(self, provider_message_id: str | None = None) -> list[MessageChange]:
        return self.late

    async def mark_stuck(self, cutoff: datetime, *, limit: int) -> list[Any]:
        return []

    async def stall_stuck_runs(self, instance_ids: list[str], threshold: int) -> list[Any]:
        return []

    async def atomically(self, work: Any) -> list[Any]:  # no stall to decide here
        return []


class _Instances:
    async def refresh_gauges(self) -> None:
        return None


async def test_a_parked_status_the_sweeper_applies_is_linked_to_its_send_attempt() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry({}, span_exporter=exporter)
    now = datetime.now(UTC)
    late = [
        MessageChange("msg-1", StateChange("SENT", "DELIVERED", "", "webhook", now), TRACE_ID, SPAN_ID, now),
        MessageChange("msg-2", StateChange("SENT", "READ", "", "webhook", now)),  # sent before tracing: no link
    ]
    jobs = Jobs(_Repo(late), GatewayConfig(), telemetry, _Instances())  # type: ignore[arg-type]
    await jobs.sweep_once()
    assert telemetry.tracer_provider is not None
    telemetry.tracer_provider.force_flush()
    spans = {
        str((s.attributes or {}).get("wapi.message_id")): s
        for s in exporter.get_finished_spans()
        if s.name == "wapi.status.late"
    }
    assert set(spans) == {"msg-1", "msg-2"}
    [link] = spans["msg-1"].links
    assert (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) == (TRACE_ID, SPAN_ID)
    assert (spans["msg-1"].attributes or {}).get("wapi.status") == "DELIVERED"
    assert spans["msg-2"].links == ()
