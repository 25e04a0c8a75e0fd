"""Opt-outs end to end: a customer's keyword through the W-API bridge, the API, the send refusal
(before the provider, stored FAILED, on the event feed) and the audited removal."""

from __future__ import annotations

import grpc
import pytest

from adapters.persistence.schema import opt_out_audit
from services.api.wapiguard.v1 import common_pb2, events_pb2, events_pb2_grpc, optouts_pb2, optouts_pb2_grpc, send_pb2
from tests.e2e.stack import PHONE, Stack, text_request
from tests.integration.harness import rich_error

INSTANCE = "9Q4OPT-OUTSXX-CY0002"
CUSTOMER = "5515981121742"


def opt_outs(stack: Stack) -> optouts_pb2_grpc.OptOutServiceAsyncStub:
    stub: optouts_pb2_grpc.OptOutServiceAsyncStub = optouts_pb2_grpc.OptOutServiceStub(stack.channel)
    return stub


async def refused(stack: Stack, to: str = CUSTOMER) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.SendMessage(text_request(INSTANCE, to=to))
    return caught.value


async def test_a_customer_who_answers_sair_is_never_messaged_again(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    await stack.submit(text_request(INSTANCE, to=CUSTOMER))
    # Sentences that merely contain a keyword, and group messages, opt nobody out.
    await stack.sim.emit(INSTANCE, "received", sender=CUSTOMER, text="quero sair mais cedo hoje")
    await stack.sim.emit(INSTANCE, "received", sender="120363025555555555@g.us", text="SAIR")
    await stack.submit(text_request(INSTANCE, to=CUSTOMER, body="segunda"))

    await stack.sim.emit(INSTANCE, "received", sender=CUSTOMER, text="  Sáir! ")
    error = await refused(stack)
    rich = rich_error(error)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RECIPIENT_OPTED_OUT")
    assert rich.localized
    assert len(stack.sim.sends(INSTANCE)) == 2  # the provider never saw the third
    stored = await stack.message(rich.metadata["message_id"])
    assert (stored.state, stored.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, "RECIPIENT_OPTED_OUT")
    # Retrying it is refused the same way while the opt-out stands.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=stored.id))
    assert rich_error(caught.value).reason == "RECIPIENT_OPTED_OUT"

    events: events_pb2_grpc.EventServiceAsyncStub = events_pb2_grpc.EventServiceStub(stack.channel)
    page = await events.ListEvents(events_pb2.ListEventsRequest(from_oldest=True, page_size=500))
    failed = [e for e in page.events if e.HasField("message_failed") and e.message_id == stored.id]
    assert failed
    assert failed[0].message_failed.failure_reason == "RECIPIENT_OPTED_OUT"

    listed = await opt_outs(stack).ListOptOuts(optouts_pb2.ListOptOutsRequest(instance_id=INSTANCE))
    assert [(o.recipient, o.source, o.created_by) for o in listed.opt_outs] == [(CUSTOMER, "KEYWORD", "customer")]
    # Other recipients and other instances are unaffected.
    await stack.submit(text_request(INSTANCE, to="5515981121743"))


async def test_api_opt_outs_are_canonical_and_their_removal_is_audited(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    added = await opt_outs(stack).AddOptOut(
        optouts_pb2.AddOptOutRequest(instance_id=INSTANCE, recipient="(15) 98112-1742", note="reclamação no SAC")
    )
    assert (added.recipient, added.changed) == (CUSTOMER, True)
    again = await opt_outs(stack).AddOptOut(optouts_pb2.AddOptOutRequest(instance_id=INSTANCE, recipient=CUSTOMER))
    assert not again.changed
    assert rich_error(await refused(stack)).reason == "RECIPIENT_OPTED_OUT"
    assert stack.sim.sends(INSTANCE) == []

    removed = await opt_outs(stack).RemoveOptOut(
        optouts_pb2.RemoveOptOutRequest(instance_id=INSTANCE, recipient="+55 15 98112-1742", note="pediu para voltar")
    )
    assert removed.changed
    sent = await stack.submit(text_request(INSTANCE, to=CUSTOMER))
    assert sent.state in (common_pb2.MESSAGE_STATE_SENT, common_pb2.MESSAGE_STATE_DELIVERED)
    audit = await stack.rows(opt_out_audit)
    assert [(a["action"], a["source"], a["detail"], a["by"]) for a in audit] == [
        ("ADDED", "API", "reclamação no SAC", "anonymous"),
        ("REMOVED", "API", "pediu para voltar", "anonymous"),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await opt_outs(stack).AddOptOut(optouts_pb2.AddOptOutRequest(instance_id=INSTANCE, recipient="12"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
