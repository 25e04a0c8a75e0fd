"""Thin gRPC servicers: proto → domain, call the use case, domain → proto."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from services.api.wapiguard.v1 import (
    common_pb2,
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)
from services.app.health import Instances
from services.app.ingest import Ingest
from services.app.message_queries import MessageQueries
from services.app.optouts import OptOuts
from services.app.principals import PermissionDenied, allowed, authorize, current_principal
from services.app.recovery import NOT_STALLED, ActionResult, Recovery, WebhooksResult
from services.app.send_policy import SendPolicies
from services.app.sending import Sending
from services.rpc import mapping
from services.rpc.errors import abort, grpc_errors, locale_of, status_for
from services.rpc.send_policy_servicer import budgets_pb
from statemachine.domain import InstanceRecord, MessageRecord, Plan
from statemachine.errors import InvalidPayload, InvalidRequest, MessageNotFound
from statemachine.validation import Violation

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
MAX_BATCH = 500


class SendServicer(send_pb2_grpc.SendServiceServicer):
    def __init__(self, sending: Sending, messages: MessageQueries) -> None:
        self.sending = sending
        self.messages = messages

    @grpc_errors
    async def SendMessage(self, request: send_pb2.SendMessageRequest, context: Ctx) -> common_pb2.Message:
        authorize(request.instance_id.strip())
        send = mapping.send_request(request)
        return mapping.message_pb(await self.sending.send(send, time_remaining=context.time_remaining()))

    async def _own_message(self, message_id: str) -> MessageRecord:
        """Another instance's message is answered like an unknown one, so ids and owners do not leak."""
        msg = await self.messages.get_message(message_id)
        if not current_principal.get().may_use(msg.instance_id):
            raise MessageNotFound(message_id)
        return msg

    @grpc_errors
    async def GetMessage(self, request: send_pb2.GetMessageRequest, context: Ctx) -> common_pb2.Message:
        return mapping.message_pb(await self._own_message(request.message_id))

    @grpc_errors
    async def ListMessages(self, request: send_pb2.ListMessagesRequest, context: Ctx) -> send_pb2.ListMessagesResponse:
        states = [mapping.MESSAGE_STATE_FROM_PB[s] for s in request.states if s in mapping.MESSAGE_STATE_FROM_PB]
        scope = current_principal.get().instances
        if scope is not None and not request.instance_id:
            if len(scope) != 1:
                raise PermissionDenied("*")
            request.instance_id = next(iter(scope))
        authorize(request.instance_id)
        rows, token = await self.messages.list_messages(
            instance_id=request.instance_id,
            states=states,
            stuck_only=request.stuck_only,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return send_pb2.ListMessagesResponse(messages=[mapping.message_pb(m) for m in rows], next_page_token=token)

    @grpc_errors
    async def RetryMessage(self, request: send_pb2.RetryMessageRequest, context: Ctx) -> common_pb2.Message:
        await self._own_message(request.message_id)
        return mapping.message_pb(await self.sending.retry(request.message_id, time_remaining=context.time_remaining()))


class WebhookServicer(webhook_pb2_grpc.WebhookServiceServicer):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    @staticmethod
    def _only_unscoped() -> None:
        if current_principal.get().instances is not None:
            raise PermissionDenied("*")

    @grpc_errors
    async def IngestEvent(
        self, request: webhook_pb2.IngestEventRequest, context: Ctx
    ) -> webhook_pb2.IngestEventResponse:
        self._only_unscoped()
        received = mapping.received_at(request)
        return mapping.ingest_pb(await self.ingest.ingest(request.payload, dict(request.headers), received))

    @grpc_errors
    async def IngestEvents(
        self, request: webhook_pb2.IngestEventsRequest, context: Ctx
    ) -> webhook_pb2.IngestEventsResponse:
        self._only_unscoped()
        if len(request.events) > MAX_BATCH:
            raise InvalidRequest([Violation("events", f"at most {MAX_BATCH} events per batch")])
        results = []
        for item in request.events:
            try:
                received = mapping.received_at(item)
                results.append(mapping.ingest_pb(await self.ingest.ingest(item.payload, dict(item.headers), received)))
            except InvalidPayload as bad:
                results.append(
                    webhook_pb2.IngestEventResponse(
                        event_id=bad.event_id,
                        route=mapping.ROUTE_TO_PB["UNROUTABLE"],
                        reason=bad.event_reason,
                    )
                )
            except InvalidRequest:
                # This item's envelope is unusable (e.g. received_at out of range); the others go on.
                results.append(
                    webhook_pb2.IngestEventResponse(
                        route=mapping.ROUTE_TO_PB["UNROUTABLE"], reason="INVALID_RECEIVED_AT"
                    )
                )
        return webhook_pb2.IngestEventsResponse(results=results)


class InstanceHealthServicer(instance_health_pb2_grpc.InstanceHealthServiceServicer):
    def __init__(
        self,
        instances: Instances,
        recovery: Recovery,
        send_policies: SendPolicies | None = None,
        opt_outs: OptOuts | None = None,
    ) -> None:
        self.instances = instances
        self.recovery = recovery
        self.send_policies = send_policies
        self.opt_outs = opt_outs
        self._listed = mapping.InstanceHealthMemo()

    def _health_pb(self, record: InstanceRecord, locale: str) -> common_pb2.InstanceHealth:
        return self._protection(mapping.instance_pb(record, locale, self.instances.view(record, locale)))

    def _protection(self, pb: common_pb2.InstanceHealth) -> common_pb2.InstanceHealth:
        """The send policy's budgets and the opt-out count, from this replica's copies."""
        if self.send_policies is not None:
            budgets, optout_list = self.send_policies.budgets_here(pb.instance_id)
            pb.send_budgets.CopyFrom(budgets_pb(budgets))
            pb.optout_list = optout_list
        if self.opt_outs is not None:
            pb.opt_outs = self.opt_outs.size_here(pb.instance_id)
        return pb

    async def _fresh_protection(self, instance_id: str | None) -> None:
        if self.send_policies is not None:
            await self.send_policies.view(instance_id)
        if self.opt_outs is not None and instance_id:
            await self.opt_outs.warm(instance_id)

    # --- operator recovery -------------------------------------------------------------------

    @grpc_errors
    async def RemoveInstance(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.RemoveInstanceResponse:
        instance_id = request.instance_id.strip()
        authorize(instance_id)
        removed = await self.instances.remove(instance_id)
        return instance_health_pb2.RemoveInstanceResponse(instance_id=instance_id, removed=removed)

    @grpc_errors
    async def GetQrCode(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.QrCodeResponse:
        instance_id, locale = _authorized_instance(request, context)
        result = await self.recovery.qr_code(instance_id, locale)
        return instance_health_pb2.QrCodeResponse(
            health=self._health_pb(result.health, locale),
            png=result.outcome.png,
            base64=result.outcome.qr_text,
            already_connected=result.outcome.connected,
            next_step=result.next_step,
        )

    @grpc_errors
    async def RequestPairingCode(
        self, request: instance_health_pb2.RequestPairingCodeRequest, context: Ctx
    ) -> instance_health_pb2.PairingCodeResponse:
        instance_id, locale = _authorized_instance(request, context)
        result = await self.recovery.pairing_code(instance_id, request.phone_number, locale)
        return instance_health_pb2.PairingCodeResponse(
            health=self._health_pb(result.health, locale),
            pairing_code=result.outcome.pairing_code,
            already_connected=result.outcome.connected,
            next_step=result.next_step,
        )

    @grpc_errors
    async def RestartInstance(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.RecoveryResponse:
        instance_id, locale = _authorized_instance(request, context)
        return self._recovery_pb(await self.recovery.restart(instance_id, locale), locale)

    @grpc_errors
    async def DisconnectInstance(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.RecoveryResponse:
        instance_id, locale = _authorized_instance(request, context)
        return self._recovery_pb(await self.recovery.disconnect(instance_id, locale), locale)

    @grpc_errors
    async def ClearStall(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.ClearStallResponse:
        instance_id, locale = _authorized_instance(request, context)
        result = await self.recovery.clear_stall(instance_id, locale)
        return instance_health_pb2.ClearStallResponse(
            health=self._health_pb(result.health, locale),
            cleared=result.outcome.detail != NOT_STALLED,
            next_step=result.next_step,
        )

    def _recovery_pb(self, result: ActionResult, locale: str) -> instance_health_pb2.RecoveryResponse:
        return instance_health_pb2.RecoveryResponse(
            health=self._health_pb(result.health, locale),
            provider_message=result.outcome.message,
            next_step=result.next_step,
        )

    @grpc_errors
    async def ConfigureWebhooks(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.WebhooksResponse:
        instance_id, locale = _authorized_instance(request, context)
        return self._webhooks_pb(await self.recovery.configure_webhooks(instance_id, locale), locale)

    @grpc_errors
    async def CheckWebhooks(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.WebhooksResponse:
        instance_id, locale = _authorized_instance(request, context)
        return self._webhooks_pb(await self.recovery.check_webhooks(instance_id, locale), locale)

    def _webhooks_pb(self, result: WebhooksResult, locale: str) -> instance_health_pb2.WebhooksResponse:
        return instance_health_pb2.WebhooksResponse(
            health=self._health_pb(result.health, locale),
            kinds=[instance_health_pb2.WebhookKindResult(kind=k.kind, ok=k.ok, detail=k.detail) for k in result.kinds],
            configured=result.configured,
            url=result.url,
            next_step=result.next_step,
        )

    @grpc_errors
    async def ReconcileEvents(
        self, request: instance_health_pb2.ReconcileEventsRequest, context: Ctx
    ) -> instance_health_pb2.ReconcileEventsResponse:
        instance_id = request.instance_id.strip()
        if instance_id:
            authorize(instance_id)
        elif current_principal.get().instances is not None:
            raise PermissionDenied("*")
        results, stuck = await self.recovery.reconcile(instance_id)
        return instance_health_pb2.ReconcileEventsResponse(
            instances=[
                instance_health_pb2.InstanceReconciliation(
                    instance_id=r.instance_id,
                    fetched=r.fetched,
                    applied=r.applied,
                    duplicates=r.duplicates,
                    failed=r.failed,
                    pages=r.pages,
                    error=r.error,
                )
                for r in results
            ],
            stuck=[mapping.message_pb(m) for m in stuck],
        )

    @grpc_errors
    async def ListRecoveryActions(
        self, request: instance_health_pb2.InstanceRequest, context: Ctx
    ) -> instance_health_pb2.ListRecoveryActionsResponse:
        instance_id = request.instance_id.strip()
        authorize(instance_id)
        actions = await self.recovery.actions(instance_id)
        return instance_health_pb2.ListRecoveryActionsResponse(
            actions=[
                instance_health_pb2.RecoveryAction(
                    instance_id=a.instance_id,
                    action=a.action,
                    requested_by=a.requested_by,
                    at=mapping.ts(a.at),
                    outcome=a.outcome,
                    detail=a.detail,
                )
                for a in actions
            ]
        )

    # --- health ------------------------------------------------------------------------------

    @grpc_errors
    async def RegisterInstance(
        self, request: instance_health_pb2.RegisterInstanceRequest, context: Ctx
    ) -> common_pb2.InstanceHealth:
        authorize(request.instance_id.strip())
        if request.plan == common_pb2.PLAN_UNSPECIFIED:
            plan = Plan.PRO
        elif request.plan in mapping.PLAN_FROM_PB:
            plan = mapping.PLAN_FROM_PB[request.plan]
        else:
            raise InvalidRequest([Violation("plan", f"unknown plan {request.plan}; use PLAN_PRO or PLAN_LITE")])
        instance_id = request.instance_id.strip()
        if request.provider not in (common_pb2.PROVIDER_UNSPECIFIED, *mapping.PROVIDER_FROM_PB):
            raise InvalidRequest([Violation("provider", f"unknown provider {request.provider}")])
        record = await self.instances.register(
            instance_id,
            request.name,
            request.token,
            plan,
            probe=not request.skip_probe,
            provider=mapping.PROVIDER_FROM_PB.get(request.provider),
            base_url=request.base_url,
            client_token=request.client_token,
        )
        if request.new_number and self.send_policies is not None:
            await self.send_policies.declare_new_number(instance_id, by=current_principal.get().name)
        if self.recovery.bridge_url() is not None:
            await self.recovery.after_registration(instance_id)
            record = await self.instances.health(instance_id)
        return self._health_pb(record, locale_of(context))

    @grpc_errors
    async def GetInstanceHealth(
        self, request: instance_health_pb2.GetInstanceHealthRequest, context: Ctx
    ) -> common_pb2.InstanceHealth:
        authorize(request.instance_id.strip())
        record = await self.instances.health(request.instance_id.strip(), refresh=request.refresh)
        await self._fresh_protection(record.instance_id)
        return self._health_pb(record, locale_of(context))

    @grpc_errors
    async def ListInstances(
        self, request: instance_health_pb2.ListInstancesRequest, context: Ctx
    ) -> instance_health_pb2.ListInstancesResponse:
        states = [mapping.INSTANCE_STATE_FROM_PB[s] for s in request.states if s in mapping.INSTANCE_STATE_FROM_PB]
        scope = current_principal.get().instances
        records = await self.instances.list_instances(refresh=request.refresh and scope is None, states=states)
        visible = set(allowed(r.instance_id for r in records))  # once: per record it was O(n²)
        records = [r for r in records if r.instance_id in visible]
        response = instance_health_pb2.ListInstancesResponse()
        await self._fresh_protection(None)
        listed = self._listed.many(records, locale_of(context), self.instances.view)
        response.instances.extend(self._protection(pb) for pb in listed)  # copies: the memo stays intact
        return response

    async def WatchInstances(
        self, request: instance_health_pb2.WatchInstancesRequest, context: Ctx
    ) -> AsyncIterator[instance_health_pb2.InstanceHealthEvent]:
        locale = locale_of(context)
        try:
            wanted = list(request.instance_ids)
            scope = current_principal.get().instances
            if scope is not None:
                wanted = [i for i in wanted if i in scope] if wanted else sorted(scope)
                if not wanted:
                    raise PermissionDenied("*")
            async for item in self.instances.subscribe(wanted, include_current=request.include_current):
                event = instance_health_pb2.InstanceHealthEvent(health=self._health_pb(item.instance, locale))
                if item.change is not None:
                    event.change.CopyFrom(mapping.instance_change_pb(item.instance.instance_id, item.change))
                yield event
        except Exception as error:
            status = status_for(error, locale)
            if status is None:
                raise
            await abort(context, status)


def _authorized_instance(request: Any, context: Ctx) -> tuple[str, str]:
    """The instance an operator request names, once the caller may act on it, and their locale."""
    instance_id = request.instance_id.strip()
    authorize(instance_id)
    return instance_id, locale_of(context)
