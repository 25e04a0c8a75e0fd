"""Webhook ingest: every provider event stored with its route and reason, and applied once.

Connection events go through the instance machine, message statuses through the forward-only
message machine, both inside the store's transaction with their change-log entries; the webhook
span is linked to the send attempt that sent the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from opentelemetry.trace import Span, SpanContext, TraceFlags

from services.app.clock import utcnow
from services.app.health import Instances
from services.observability.telemetry import Telemetry
from statemachine.domain import MessageState, Reason
from statemachine.errors import InvalidPayload
from statemachine.events import EventReason, ProviderEvent, Route
from statemachine.ports import IngestResult, MessageChange, WebhookParser
from statemachine.store_ports import IngestStore

# Headers never stored with a raw event.
SECRET_HEADERS = ("authorization", "cookie", "x-webhook-secret", "x-api-key", "proxy-authorization")


# A status webhook (delivered, read, the server ack, a chat's status) or the ack of one of our sends
# (`webhookDelivery` with fromApi): W-API's receipts reach the bridge.
RECEIPT_ROUTES = frozenset({Route.MESSAGE_STATUS, Route.CHAT_STATUS})


class Ingest:
    def __init__(
        self, repo: IngestStore, parse_webhook: WebhookParser, telemetry: Telemetry, instances: Instances
    ) -> None:
        self.repo = repo
        self.parse_webhook = parse_webhook
        self.tracer = telemetry.tracer
        self.metrics = telemetry.metrics
        self.instances = instances
        # Told of each new inbound message (the event, its body, when): the send policy's contacts
        # and opt-outs (services/app/optouts.py, wired by the composition root).
        self.on_inbound: Callable[[ProviderEvent, bytes, datetime], Awaitable[None]] | None = None

    async def ingest(
        self,
        payload: bytes,
        headers: dict[str, str],
        received_at: datetime | None = None,
        *,
        parse: WebhookParser | None = None,
    ) -> IngestResult:
        """Stores and applies one provider event. A body we cannot use is stored, then refused.
        `parse` is the provider's dialect (default: W-API's)."""
        received_at = received_at or utcnow()
        event = (parse or self.parse_webhook)(payload)
        clean = {k.lower(): v[:512] for k, v in list(headers.items())[:64] if k.lower() not in SECRET_HEADERS}
        with self.tracer.start_as_current_span(
            "wapi.webhook", attributes={"wapi.route": event.route.value, "wapi.instance_id": event.instance_id or ""}
        ) as span:
            result = await self.repo.ingest(event, payload, clean, received_at)
            if result.reason == EventReason.UNKNOWN_MESSAGE and event.provider_message_id and not result.duplicate:
                # Parked: its message may have turned SENT while we looked. Re-check after our commit;
                # the sender checks after its own, so one of the two always applies it.
                # Applied here (the SENT committed meanwhile): linked to its send attempt like any status.
                result.message_changes.extend(await self.repo.apply_parked(event.provider_message_id))
            span.set_attribute("wapi.duplicate", result.duplicate)
            span.set_attribute("wapi.event_reason", str(result.reason))
            for change in result.instance_changes:
                self.instances.after_change(change)
            for message_change in result.message_changes:
                self._observe_message_change(span, message_change, received_at)
            self.metrics.webhook_events.add(
                1, {"route": event.route.value, "outcome": "duplicate" if result.duplicate else str(result.reason)}
            )
        if result.message_changes and event.instance_id:
            cached = self.instances.peek(event.instance_id)
            if cached is not None and cached.record.reason == Reason.DELIVERY_STALLED:
                # A delivery may have lifted the stall (the change itself is remembered above when
                # this replica made it); other instances keep their cached health.
                self.instances.forget(event.instance_id)
        if event.instance_id and not result.duplicate and event.route is not Route.UNROUTABLE:
            self.instances.note_event(event.instance_id, received_at)
            if event.route in RECEIPT_ROUTES or (event.route is Route.DELIVERY and event.from_api):
                self.instances.note_receipt(event.instance_id, received_at)
        if self.on_inbound and event.route is Route.RECEIVED and not result.duplicate:
            await self.on_inbound(event, payload, received_at)
        if event.route is Route.UNROUTABLE and event.reason in (EventReason.MALFORMED_JSON, EventReason.NOT_AN_OBJECT):
            raise InvalidPayload(str(event.reason), result.event_id)
        return result

    def _observe_message_change(self, span: Span, change: MessageChange, received_at: datetime) -> None:
        """Links the webhook span to the send attempt's span: Jaeger shows send → delivered → read."""
        span.set_attribute("wapi.message_id", change.message_id)
        if change.trace_id and change.span_id:
            span.add_link(
                SpanContext(
                    int(change.trace_id, 16),
                    int(change.span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                ),
                {"wapi.message_id": change.message_id, "wapi.status": str(change.change.to_state)},
            )
        if (
            change.change.applied
            and change.sent_at is not None
            and change.change.to_state in (MessageState.DELIVERED, MessageState.READ)
        ):
            self.metrics.delivery_latency.record(
                max(0.0, (received_at - change.sent_at).total_seconds()), {"status": str(change.change.to_state)}
            )
