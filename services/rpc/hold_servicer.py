"""The hold's RPCs on the SendService (CancelMessage, ReleaseHeld) and its part of InstanceHealth
(held_messages, held_reasons). Thin: proto → the hold use case (services/app/holds.py) → proto."""

from __future__ import annotations

from collections import Counter

from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, send_pb2
from services.app.health import Instances
from services.app.held_counts import Held, HeldCounts
from services.app.holds import Holds
from services.app.message_queries import MessageQueries
from services.app.optouts import OptOuts
from services.app.principals import authorize, current_principal
from services.app.recovery import Recovery
from services.app.send_policy import SendPolicies
from services.app.sending import Sending
from services.rpc import mapping
from services.rpc.errors import grpc_errors
from services.rpc.servicers import Ctx, InstanceHealthServicer, SendServicer
from statemachine.errors import InvalidRequest
from statemachine.validation import Violation

TOP_REASONS = 5


class HoldingSendServicer(SendServicer):
    """SendService with the hold's RPCs."""

    def __init__(self, sending: Sending, messages: MessageQueries, holds: Holds | None) -> None:
        super().__init__(sending, messages)
        self.holds = holds

    def _holds(self) -> Holds:
        if self.holds is None:  # pragma: no cover - the composition root always wires it
            raise InvalidRequest([Violation("hold", "holds are not enabled on this server")])
        return self.holds

    @grpc_errors
    async def CancelMessage(self, request: send_pb2.CancelMessageRequest, context: Ctx) -> common_pb2.Message:
        await self._own_message(request.message_id)
        cancelled = await self._holds().cancel(request.message_id, by=current_principal.get().name)
        return mapping.message_pb(cancelled)

    @grpc_errors
    async def ReleaseHeld(self, request: send_pb2.ReleaseHeldRequest, context: Ctx) -> send_pb2.ReleaseHeldResponse:
        instance_id = request.instance_id.strip()
        if not instance_id:
            raise InvalidRequest([Violation("instance_id", "required")])
        authorize(instance_id)
        return send_pb2.ReleaseHeldResponse(released=await self._holds().release_held(instance_id))


def add_held_of(health: common_pb2.InstanceHealth, held: Held) -> common_pb2.InstanceHealth:
    """InstanceHealth with the held messages of a list's grouped count (services/app/held_counts.py)."""
    health.held_messages = held.count
    health.held_reasons.extend(common_pb2.HeldReason(reason=r, count=n) for r, n in held.reasons)
    return health


def add_held(health: common_pb2.InstanceHealth, counts: Counter[str]) -> common_pb2.InstanceHealth:
    """InstanceHealth with its held count and top reasons."""
    health.held_messages = sum(counts.values())
    health.held_reasons.extend(
        common_pb2.HeldReason(reason=reason, count=count) for reason, count in counts.most_common(TOP_REASONS)
    )
    return health


class HoldingInstanceHealthServicer(InstanceHealthServicer):
    """InstanceHealthService whose GetInstanceHealth carries the instance's held messages (one
    grouped count over its held rows only), and ListInstances every listed instance's (one grouped
    count over the held rows of all of them, never one query per instance)."""

    def __init__(
        self,
        instances: Instances,
        recovery: Recovery,
        send_policies: SendPolicies,
        holds: Holds | None,
        opt_outs: OptOuts | None = None,
        held: HeldCounts | None = None,
    ) -> None:
        super().__init__(instances, recovery, send_policies, opt_outs)
        self.holds = holds
        self.held = held

    @grpc_errors
    async def ListInstances(
        self, request: instance_health_pb2.ListInstancesRequest, context: Ctx
    ) -> instance_health_pb2.ListInstancesResponse:
        response = await super().ListInstances(request, context)
        if self.held is not None and response.instances:
            scope = current_principal.get().instances
            ids = None if scope is None else [h.instance_id for h in response.instances]
            held = await self.held.of(ids)
            for health in response.instances:
                if (found := held.get(health.instance_id)) is not None:
                    add_held_of(health, found)
        return response

    @grpc_errors
    async def GetInstanceHealth(
        self, request: instance_health_pb2.GetInstanceHealthRequest, context: Ctx
    ) -> common_pb2.InstanceHealth:
        health = await super().GetInstanceHealth(request, context)
        if self.holds is not None:
            add_held(health, await self.holds.counts(health.instance_id))
        return health
