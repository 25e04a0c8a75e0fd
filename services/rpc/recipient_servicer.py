"""The RecipientService servicer: thin, proto ↔ domain (services/app/recipients.py holds the use case)."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from services.api.wapiguard.v1 import recipients_pb2, recipients_pb2_grpc
from services.app.principals import authorize
from services.app.recipients import Recipients
from services.rpc.errors import grpc_errors
from services.rpc.mapping import ts
from statemachine.recipients import NumberCheck

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Presence = recipients_pb2.RecipientCheck


def check_pb(given: str, check: NumberCheck) -> recipients_pb2.RecipientCheck:
    presence = {
        True: Presence.PRESENCE_ON_WHATSAPP,
        False: Presence.PRESENCE_NOT_ON_WHATSAPP,
        None: Presence.PRESENCE_UNKNOWN,
    }[check.exists]
    invalid = check.failure is not None and check.failure.value == "INVALID_ARGUMENT"
    return recipients_pb2.RecipientCheck(
        input=given,
        recipient="" if invalid else check.recipient,
        presence=presence,
        whatsapp_number=check.canonical,
        lid=check.lid,
        from_cache=check.from_cache,
        checked_at=ts(check.checked_at),
        error_reason=check.failure.value if check.failure else "",
        error_detail=check.detail,
    )


class RecipientServicer(recipients_pb2_grpc.RecipientServiceServicer):
    def __init__(self, recipients: Recipients) -> None:
        self.recipients = recipients

    @grpc_errors
    async def CheckRecipients(
        self, request: recipients_pb2.CheckRecipientsRequest, context: Ctx
    ) -> recipients_pb2.CheckRecipientsResponse:
        instance_id = request.instance_id.strip()
        authorize(instance_id)
        given = list(request.recipients)
        checks = await self.recipients.check(instance_id, given)
        return recipients_pb2.CheckRecipientsResponse(
            results=[check_pb(g, c) for g, c in zip(given, checks, strict=True)]
        )
