"""Recipients and pairing phones as people type them, through gRPC, the real W-API client and the
simulator: national numbers get their country code, impossible ones are refused before anything is
stored, chat ids pass as given, and what W-API receives is what is stored (E.164 digits, no '+').
"""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select

from adapters.persistence.schema import messages
from services.api.wapiguard.v1 import instance_health_pb2, send_pb2
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import CONNECTED, PHONE, Stack, text_request, unbounded
from tests.integration.harness import rich_error

INSTANCE = "3B6XIW-ZTS923-GEAY6V"
CANONICAL = "5515981121710"


async def count_messages(stack: Stack) -> int:
    async with unbounded(stack.app.store).engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(messages))).scalar_one())


def sent_to(stack: Stack, instance_id: str = INSTANCE) -> list[str]:
    return [str(s["body"]["phone"]) for s in stack.sim.sends(instance_id)]


async def connected(stack: Stack, instance_id: str = INSTANCE) -> None:
    h = await stack.add_instance(instance_id, "healthy", phone=PHONE)
    assert h.state == CONNECTED


@pytest.mark.parametrize(
    "typed",
    ["15981121710", "15 98112-1710", "(15) 98112-1710", "+55 15 98112-1710", "5515981121710", " 015 98112 1710 "],
)
async def test_a_national_or_formatted_number_is_stored_and_sent_as_e164_digits(stack: Stack, typed: str) -> None:
    await connected(stack)
    sent = await stack.submit(text_request(INSTANCE, to=typed))
    assert sent.to == CANONICAL
    stored = await stack.send.GetMessage(send_pb2.GetMessageRequest(message_id=sent.id))
    assert stored.to == CANONICAL
    assert sent_to(stack) == [CANONICAL]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("12025550123", "12025550123"),  # international digits without '+', as callers always sent
        ("+1 202-555-0123", "12025550123"),
        ("447911123456", "447911123456"),
        ("553181121710", "553181121710"),  # a Brazilian mobile without the ninth digit: kept as given
        ("5531981121710", "5531981121710"),  # and with it: kept as given too
    ],
)
async def test_international_numbers_and_the_ninth_digit_are_kept_as_given(
    stack: Stack, typed: str, expected: str
) -> None:
    await connected(stack)
    sent = await stack.submit(text_request(INSTANCE, to=typed))
    assert (sent.to, sent_to(stack)) == (expected, [expected])


@pytest.mark.parametrize(
    "typed",
    [
        "0000000000000",
        "1111111111",
        "12345678",  # a BR number without its area code
        "159811217",  # too short
        "55159811217101234",  # too long
        "+55 15 1234",
        "+999 123456789",  # no such country code
        "0000000000000@s.whatsapp.net",
        "abc",
    ],
)
async def test_an_impossible_number_is_a_field_violation_and_nothing_is_stored(stack: Stack, typed: str) -> None:
    await connected(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.SendMessage(text_request(INSTANCE, to=typed))
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.violations) == {"to"}
    assert await count_messages(stack) == 0
    assert stack.sim.sends(INSTANCE) == []


@pytest.mark.parametrize(
    "chat",
    [
        "120363043051234567@g.us",
        "176488829694091@lid",
        "120363012345678901@newsletter",
        "5515981121710@s.whatsapp.net",
        "5515981121710@c.us",
    ],
)
async def test_chat_ids_pass_as_given(stack: Stack, chat: str) -> None:
    await connected(stack)
    sent = await stack.submit(text_request(INSTANCE, to=chat))
    assert (sent.to, sent_to(stack)) == (chat, [chat])


async def test_a_contact_cards_phone_is_canonical_too(stack: Stack) -> None:
    await connected(stack)
    request = send_pb2.SendMessageRequest(
        instance_id=INSTANCE, to="15981121710", contact=send_pb2.ContactContent(name="Ana", phone="(11) 98765-4321")
    )
    sent = await stack.submit(request)
    assert sent.to == CANONICAL
    (send,) = stack.sim.sends(INSTANCE)
    assert send["body"]["contactPhone"] == "5511987654321"


async def test_the_same_number_typed_two_ways_is_one_idempotent_message(stack: Stack) -> None:
    await connected(stack)
    first = await stack.submit(text_request(INSTANCE, to="15 98112-1710", key="order-9"))
    again = await stack.send.SendMessage(text_request(INSTANCE, to="+5515981121710", key="order-9"))
    assert again.id == first.id
    assert len(stack.sim.sends(INSTANCE)) == 1


async def test_the_default_region_is_a_setting(make_stack: StackFactory) -> None:
    stack = await make_stack(default_phone_region="PT")
    await connected(stack)
    sent = await stack.submit(text_request(INSTANCE, to="912 345 678"))
    assert (sent.to, sent_to(stack)) == ("351912345678", ["351912345678"])
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a Brazilian national number is not Portuguese
        await stack.send.SendMessage(text_request(INSTANCE, to="(15) 98112-1710"))
    assert set(rich_error(caught.value).violations) == {"to"}


@pytest.mark.parametrize("typed", ["15 98112-1710", "(15) 98112-1710", "+55 15 98112-1710"])
async def test_the_pairing_phone_is_canonical(stack: Stack, typed: str) -> None:
    await stack.add_instance("PAIR-1", "session_incomplete", phone=PHONE)
    answer = await stack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id="PAIR-1", phone_number=typed)
    )
    assert answer.pairing_code
    pairing = [r for r in stack.sim.requests if r.path == "/instance/pairing-code"]
    assert [r.query["phoneNumber"] for r in pairing] == [CANONICAL]


@pytest.mark.parametrize("typed", ["0000000000000", "98112-1710", "+55 15 1234"])
async def test_an_impossible_pairing_phone_is_a_field_violation(stack: Stack, typed: str) -> None:
    await stack.add_instance("PAIR-2", "session_incomplete", phone=PHONE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.health.RequestPairingCode(
            instance_health_pb2.RequestPairingCodeRequest(instance_id="PAIR-2", phone_number=typed)
        )
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.violations) == {"phone_number"}
    assert [r for r in stack.sim.requests if r.path == "/instance/pairing-code"] == []
