"""The OptOutService servicer: thin, proto ↔ domain (services/app/optouts.py holds the use cases)."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from services.api.wapiguard.v1 import optouts_pb2, optouts_pb2_grpc
from services.app.optouts import OptOuts
from services.app.principals import authorize, current_principal
from services.rpc.errors import grpc_errors
from services.rpc.mapping import ts
from statemachine.optout import OptOut

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def opt_out_pb(row: OptOut, instance_id: str) -> optouts_pb2.OptOut:
    """`instance_id`: the instance asked about (the row's own key may be a shared list's)."""
    return optouts_pb2.OptOut(
        instance_id=instance_id,
        recipient=row.recipient,
        source=row.source.value,
        detail=row.detail,
        created_at=ts(row.created_at),
        created_by=row.created_by,
    )


class OptOutServicer(optouts_pb2_grpc.OptOutServiceServicer):
    def __init__(self, opt_outs: OptOuts) -> None:
        self.opt_outs = opt_outs

    @grpc_errors
    async def AddOptOut(self, request: optouts_pb2.AddOptOutRequest, context: Ctx) -> optouts_pb2.OptOutChange:
        instance_id = request.instance_id.strip()
        authorize(instance_id)
        row, added = await self.opt_outs.add(
            instance_id, request.recipient, note=request.note, by=current_principal.get().name
        )
        return optouts_pb2.OptOutChange(instance_id=instance_id, recipient=row.recipient, changed=added)

    @grpc_errors
    async def RemoveOptOut(self, request: optouts_pb2.RemoveOptOutRequest, context: Ctx) -> optouts_pb2.OptOutChange:
        instance_id = request.instance_id.strip()
        authorize(instance_id)
        recipient = self.opt_outs.canonical(request.recipient)
        removed = await self.opt_outs.remove(instance_id, recipient, note=request.note, by=current_principal.get().name)
        return optouts_pb2.OptOutChange(instance_id=instance_id, recipient=recipient, changed=removed)

    @grpc_errors
    async def ListOptOuts(
        self, request: optouts_pb2.ListOptOutsRequest, context: Ctx
    ) -> optouts_pb2.ListOptOutsResponse:
        instance_id = request.instance_id.strip()
        authorize(instance_id)
        rows, token = await self.opt_outs.list(instance_id, page_size=request.page_size, page_token=request.page_token)
        return optouts_pb2.ListOptOutsResponse(
            opt_outs=[opt_out_pb(r, instance_id) for r in rows], next_page_token=token
        )
