"""Recipients known not to be on WhatsApp, end to end: CheckRecipients through gRPC, the real W-API
client and the simulator's number check; the send path refuses a known-absent recipient at once."""

from __future__ import annotations

import grpc
import pytest

from services.api.wapiguard.v1 import common_pb2, recipients_pb2, recipients_pb2_grpc
from tests.e2e.stack import PHONE, Stack, text_request
from tests.integration.harness import rich_error

INSTANCE = "5RCPTS-CHECKS-CY0003"
PRESENT = "5515981121750"
ABSENT = "5515981121751"
Check = recipients_pb2.RecipientCheck


def service(stack: Stack) -> recipients_pb2_grpc.RecipientServiceAsyncStub:
    stub: recipients_pb2_grpc.RecipientServiceAsyncStub = recipients_pb2_grpc.RecipientServiceStub(stack.channel)
    return stub


def number_checks(stack: Stack) -> int:
    return sum(1 for r in stack.sim.requests if r.path == "/contacts/phone-exists")


async def test_a_recipient_the_provider_says_is_absent_is_refused_at_once(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    stack.sim.absent_numbers.add(ABSENT)
    answer = await service(stack).CheckRecipients(
        recipients_pb2.CheckRecipientsRequest(instance_id=INSTANCE, recipients=["(15) 98112-1750", ABSENT, "12"])
    )
    present, absent, invalid = answer.results
    assert (present.input, present.recipient, present.presence) == (
        "(15) 98112-1750",
        PRESENT,
        Check.PRESENCE_ON_WHATSAPP,
    )
    assert present.lid.endswith("@lid")
    assert not present.from_cache
    assert (absent.recipient, absent.presence) == (ABSENT, Check.PRESENCE_NOT_ON_WHATSAPP)
    assert (invalid.presence, invalid.error_reason, invalid.recipient) == (
        Check.PRESENCE_UNKNOWN,
        "INVALID_ARGUMENT",
        "",
    )
    assert number_checks(stack) == 2

    # Asked again: served from the cache, the provider is not asked.
    again = await service(stack).CheckRecipients(
        recipients_pb2.CheckRecipientsRequest(instance_id=INSTANCE, recipients=[PRESENT, ABSENT])
    )
    assert [r.from_cache for r in again.results] == [True, True]
    assert number_checks(stack) == 2

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.SendMessage(text_request(INSTANCE, to=ABSENT))
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ON_WHATSAPP")
    stored = await stack.message(rich.metadata["message_id"])
    assert (stored.state, stored.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, "NOT_ON_WHATSAPP")
    assert stack.sim.sends(INSTANCE) == []  # never sent, so never SENT-and-stuck, never stall evidence
    sent = await stack.submit(text_request(INSTANCE, to=PRESENT))
    assert sent.to == PRESENT
    assert number_checks(stack) == 2  # the send path never asks the provider


async def test_check_recipients_refuses_bad_requests(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    for request in (
        recipients_pb2.CheckRecipientsRequest(instance_id=INSTANCE),
        recipients_pb2.CheckRecipientsRequest(instance_id=INSTANCE, recipients=[PRESENT] * 51),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await service(stack).CheckRecipients(request)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service(stack).CheckRecipients(
            recipients_pb2.CheckRecipientsRequest(instance_id="UNKNWN-INSTNC-CY0009", recipients=[PRESENT])
        )
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
