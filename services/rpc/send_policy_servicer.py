"""The SendPolicyService servicer: thin, proto ↔ domain (services/app/send_policy.py holds the use case)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, time
from typing import Any, TypeAlias

import grpc

from services.api.wapiguard.v1 import common_pb2, send_policy_pb2, send_policy_pb2_grpc
from services.app.clock import utcnow
from services.app.principals import authorize, current_principal
from services.app.send_policy import SendPolicies
from services.rpc.errors import grpc_errors
from services.rpc.mapping import ts as _ts
from statemachine.errors import InstanceNotFound, InvalidRequest
from statemachine.optout import list_name_problem
from statemachine.send_policy import Budgets, PolicyChange, PolicyRecord, SendPolicy, budgets, daily_new_budget
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


def budgets_pb(b: Budgets) -> common_pb2.SendBudgets:
    return common_pb2.SendBudgets(
        policy_active=b.active,
        sends_this_minute=b.sends_this_minute,
        max_per_minute=b.max_per_minute,
        sends_left_this_minute=b.sends_left,
        new_recipients_this_hour=b.new_this_hour,
        new_recipients_per_hour=b.new_per_hour,
        new_recipients_left_this_hour=b.new_left_this_hour,
        new_recipients_today=b.new_today,
        new_recipients_today_budget=b.today_budget,
        new_recipients_left_today=b.new_left_today,
        warmup_day=b.warmup_day,
        warmup_days=b.warmup_days,
    )


def state_pb(instance_id: str, record: PolicyRecord | None) -> send_policy_pb2.SendPolicyState:
    if record is None:
        return send_policy_pb2.SendPolicyState(
            instance_id=instance_id, policy=policy_pb(SendPolicy()), budgets=budgets_pb(Budgets())
        )
    now = utcnow()
    c = record.counters
    b = budgets(record.policy, c, now, record.warmup_anchor)
    return send_policy_pb2.SendPolicyState(
        instance_id=instance_id,
        policy=policy_pb(record.policy),
        active=record.policy.active,
        warmup_anchor=_ts(record.warmup_anchor),
        new_recipients_today_budget=daily_new_budget(record.policy, now, record.warmup_anchor),
        new_recipients_today=b.new_today,
        new_recipients_this_hour=b.new_this_hour,
        sends_this_minute=b.sends_this_minute,
        next_send_at=_ts(c.next_send_at if c.next_send_at and c.next_send_at > now else None),
        updated_at=_ts(record.updated_at),
        updated_by=record.updated_by,
        optout_list=record.optout_list or "",
        warmup_phone=record.warmup_phone or "",
        budgets=budgets_pb(b),
    )


def change_pb(change: PolicyChange) -> send_policy_pb2.SendPolicyChange:
    return send_policy_pb2.SendPolicyChange(
        instance_id=change.instance_id,
        at=_ts(change.at),
        by=change.by,
        change=change.change,
        before_json=json.dumps(change.before, sort_keys=True) if change.before is not None else "",
        after_json=json.dumps(change.after, sort_keys=True),
    )


def _instance_id(value: str) -> str:
    instance_id = value.strip()
    if problems := validate_instance_id(instance_id):
        raise InvalidRequest(problems)
    authorize(instance_id)
    return instance_id


class SendPolicyServicer(send_policy_pb2_grpc.SendPolicyServiceServicer):
    def __init__(
        self,
        policies: SendPolicies,
        instance: Callable[[str], Awaitable[object | None]],
        lists_changed: Callable[[], None] | None = None,
    ) -> None:
        self.policies = policies
        self.instance = instance  # the registered instance, or None
        self.lists_changed = lists_changed  # this replica's opt-outs re-read which list is whose

    @grpc_errors
    async def SetSendPolicy(
        self, request: send_policy_pb2.SetSendPolicyRequest, context: Ctx
    ) -> send_policy_pb2.SendPolicyState:
        instance_id = _instance_id(request.instance_id)
        if await self.instance(instance_id) is None:
            raise InstanceNotFound(instance_id)
        anchor = request.warmup_anchor.ToDatetime(UTC) if request.HasField("warmup_anchor") else None
        optout_list = request.optout_list.strip() if request.HasField("optout_list") else None
        if optout_list and (problem := list_name_problem(optout_list)):
            raise InvalidRequest([Violation("optout_list", problem)])
        record = await self.policies.set(
            instance_id,
            policy_from_pb(request.policy),
            by=current_principal.get().name,
            warmup_anchor=anchor,
            optout_list=optout_list,
        )
        if self.lists_changed is not None and optout_list is not None:
            self.lists_changed()
        return state_pb(instance_id, record)

    @grpc_errors
    async def ListSendPolicyChanges(
        self, request: send_policy_pb2.ListSendPolicyChangesRequest, context: Ctx
    ) -> send_policy_pb2.ListSendPolicyChangesResponse:
        instance_id = _instance_id(request.instance_id)
        if await self.instance(instance_id) is None:
            raise InstanceNotFound(instance_id)
        token = request.page_token.strip()
        if token and not token.isdigit():
            raise InvalidRequest([Violation("page_token", "not a page token of this list")])
        size = request.page_size or 50
        rows = await self.policies.history(instance_id, limit=size, before_id=int(token or 0))
        return send_policy_pb2.ListSendPolicyChangesResponse(
            changes=[change_pb(change) for _, change in rows],
            next_page_token=str(rows[-1][0]) if len(rows) == size else "",
        )

    @grpc_errors
    async def GetSendPolicy(
        self, request: send_policy_pb2.GetSendPolicyRequest, context: Ctx
    ) -> send_policy_pb2.SendPolicyState:
        instance_id = _instance_id(request.instance_id)
        if await self.instance(instance_id) is None:
            raise InstanceNotFound(instance_id)
        return state_pb(instance_id, await self.policies.get(instance_id))
