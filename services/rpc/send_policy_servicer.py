"""The SendPolicyService servicer: thin, proto ↔ domain (services/app/send_policy.py holds the use case)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, time
from typing import Any, TypeAlias

import grpc

from services.api.wapiguard.v1 import send_policy_pb2, send_policy_pb2_grpc
from services.app.clock import utcnow
from services.app.principals import authorize, current_principal
from services.app.send_policy import SendPolicies
from services.rpc.errors import grpc_errors
from services.rpc.mapping import ts as _ts
from statemachine.errors import InstanceNotFound, InvalidRequest
from statemachine.send_policy import MINUTE, PolicyRecord, SendPolicy, daily_new_budget
from statemachine.validation import Violation, validate_instance_id

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _clock(field: str, value: str) -> time | None:
    if not value:
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise InvalidRequest([Violation(f"policy.{field}", "must be a local time HH:MM")]) from None


def policy_from_pb(pb: send_policy_pb2.SendPolicy) -> SendPolicy:
    return SendPolicy(
        min_interval_seconds=pb.min_interval_seconds,
        jitter_seconds=pb.jitter_seconds,
        max_per_minute=pb.max_per_minute,
        new_recipients_per_hour=pb.new_recipients_per_hour,
        new_recipients_per_day=pb.new_recipients_per_day,
        warmup_start_per_day=pb.warmup_start_per_day,
        warmup_days=pb.warmup_days,
        quiet_start=_clock("quiet_start", pb.quiet_start),
        quiet_end=_clock("quiet_end", pb.quiet_end),
        time_zone=pb.time_zone or "UTC",
        release_requires_confirmation=pb.release_requires_confirmation,
    )


def policy_pb(policy: SendPolicy) -> send_policy_pb2.SendPolicy:
    return send_policy_pb2.SendPolicy(
        min_interval_seconds=policy.min_interval_seconds,
        jitter_seconds=policy.jitter_seconds,
        max_per_minute=policy.max_per_minute,
        new_recipients_per_hour=policy.new_recipients_per_hour,
        new_recipients_per_day=policy.new_recipients_per_day,
        warmup_start_per_day=policy.warmup_start_per_day,
        warmup_days=policy.warmup_days,
        quiet_start=policy.quiet_start.strftime("%H:%M") if policy.quiet_start else "",
        quiet_end=policy.quiet_end.strftime("%H:%M") if policy.quiet_end else "",
        time_zone=policy.time_zone,
        release_requires_confirmation=policy.release_requires_confirmation,
    )


def state_pb(instance_id: str, record: PolicyRecord | None) -> send_policy_pb2.SendPolicyState:
    if record is None:
        return send_policy_pb2.SendPolicyState(instance_id=instance_id, policy=policy_pb(SendPolicy()))
    now = utcnow()
    c = record.counters
    hour_start = now.replace(minute=0, second=0, microsecond=0)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    minute_start = now.replace(second=0, microsecond=0)
    return send_policy_pb2.SendPolicyState(
        instance_id=instance_id,
        policy=policy_pb(record.policy),
        active=record.policy.active,
        warmup_anchor=_ts(record.warmup_anchor),
        new_recipients_today_budget=daily_new_budget(record.policy, now, record.warmup_anchor),
        new_recipients_today=c.day_new if c.day_start == day_start else 0,
        new_recipients_this_hour=c.hour_new if c.hour_start == hour_start else 0,
        sends_this_minute=c.minute_count if c.minute_start == minute_start and now - minute_start < MINUTE else 0,
        next_send_at=_ts(c.next_send_at if c.next_send_at and c.next_send_at > now else None),
        updated_at=_ts(record.updated_at),
        updated_by=record.updated_by,
    )


def _instance_id(value: str) -> str:
    instance_id = value.strip()
    if problems := validate_instance_id(instance_id):
        raise InvalidRequest(problems)
    authorize(instance_id)
    return instance_id


class SendPolicyServicer(send_policy_pb2_grpc.SendPolicyServiceServicer):
    def __init__(self, policies: SendPolicies, instance: Callable[[str], Awaitable[object | None]]) -> None:
        self.policies = policies
        self.instance = instance  # the registered instance, or None

    @grpc_errors
    async def SetSendPolicy(
        self, request: send_policy_pb2.SetSendPolicyRequest, context: Ctx
    ) -> send_policy_pb2.SendPolicyState:
        instance_id = _instance_id(request.instance_id)
        if await self.instance(instance_id) is None:
            raise InstanceNotFound(instance_id)
        anchor = request.warmup_anchor.ToDatetime(UTC) if request.HasField("warmup_anchor") else None
        record = await self.policies.set(
            instance_id, policy_from_pb(request.policy), by=current_principal.get().name, warmup_anchor=anchor
        )
        return state_pb(instance_id, record)

    @grpc_errors
    async def GetSendPolicy(
        self, request: send_policy_pb2.GetSendPolicyRequest, context: Ctx
    ) -> send_policy_pb2.SendPolicyState:
        instance_id = _instance_id(request.instance_id)
        if await self.instance(instance_id) is None:
            raise InstanceNotFound(instance_id)
        return state_pb(instance_id, await self.policies.get(instance_id))
