"""Evolution API shapes as its source has them (EvolutionAPI/evolution-api v2.3.6: the Baileys
channel service, channel.service.ts, the chat router; docs/providers.md, "Verified in the source")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.evolution import webhooks as evo_hooks
from adapters.evolution.client import EvolutionProvider
from adapters.simulator.dialects import EVOLUTION, DialectSimulator
from statemachine.domain import Credentials, MessageState
from statemachine.events import EventReason, Route
from tests.adapters.test_provider_dialects import PHONE, TOKEN, envelope, message, raw

RECIPIENT = "5515981121710"
# WhatsApp knows some Brazilian mobiles without the ninth digit: Evolution stores that JID.
KNOWN_AS = "551581121710@s.whatsapp.net"


@pytest.fixture
async def sim() -> AsyncIterator[DialectSimulator]:
    async with DialectSimulator(ack_after=0.01, delivered_after=0.02, read_after=0.03) as simulator:
        yield simulator


@pytest.mark.parametrize("code", [401, 402, 403, 406])
def test_a_close_it_will_not_reconnect_from_is_logged_out(code: int) -> None:
    """v2.3 posts connection.update `close` only for the codes it does not reconnect from,
    with the code as `statusReason` (connectionUpdate): logged out, like status.instance."""
    body = envelope("connection.update", {"instance": "inst", "state": "close", "statusReason": code})
    event = evo_hooks.parse(raw(body))
    assert (event.route, event.connected, event.failure_reason) == (Route.DISCONNECTION, False, "LOGGED_OUT")


def test_a_close_with_another_code_or_connecting_is_a_plain_disconnection() -> None:
    cases: list[dict[str, object]] = [
        {"state": "close", "statusReason": 428},
        {"state": "close"},
        {"state": "connecting"},
    ]
    for data in cases:
        event = evo_hooks.parse(raw(envelope("connection.update", data)))
        assert (event.route, event.failure_reason) == (Route.DISCONNECTION, ""), data


def test_a_receipt_of_a_received_message_is_not_a_status_of_ours() -> None:
    """messages.update with `fromMe: false` (the phone read a customer's message): kept, never
    parked as an unknown message's status nor read as a delivery by the stall rule."""
    receipts: list[dict[str, object]] = [
        {"keyId": "3EB0IN", "remoteJid": KNOWN_AS, "fromMe": False, "status": "READ"},
        {"key": {"id": "3EB0IN", "fromMe": False}, "status": "DELIVERY_ACK"},
    ]
    for data in receipts:
        event = evo_hooks.parse(raw(envelope("messages.update", data)))
        assert (event.route, event.reason, event.status) == (Route.PRESENCE, EventReason.RECORDED, None)
    ours = evo_hooks.parse(raw(envelope("messages.update", {"keyId": "3EB0", "fromMe": True, "status": "READ"})))
    assert (ours.route, ours.status) == (Route.MESSAGE_STATUS, MessageState.READ)


async def test_find_status_message_asks_by_the_message_id_alone(sim: DialectSimulator) -> None:
    """The chat's JID is WhatsApp's, not our recipient: asked by both, the statuses of a message
    sent to a number known without its ninth digit were never found."""
    sim.add_instance(EVOLUTION, "evo", TOKEN, phone=PHONE, behaviour="dropped_webhooks")
    sim.jids[RECIPIENT] = KNOWN_AS
    provider = EvolutionProvider()
    creds = Credentials("evo", TOKEN, provider="EVOLUTION", base_url=sim.root_url)
    try:
        sent = await provider.send(creds, message(RECIPIENT), timeout=2)
        assert sent.provider_message_id is not None
        for _ in range(100):  # bounded: the simulator stores its acks within ~30 ms
            if len(sim.instances["evo"].statuses.get(sent.provider_message_id, [])) == 3:
                break
            await asyncio.sleep(0.01)
        bodies = await provider.missed_statuses(creds, RECIPIENT, sent.provider_message_id, timeout=2)
        assert bodies is not None
        events = [evo_hooks.parse(body) for body in bodies]
        assert [(e.provider_message_id, e.status) for e in events] == [
            (sent.provider_message_id, MessageState.SENT),
            (sent.provider_message_id, MessageState.DELIVERED),
            (sent.provider_message_id, MessageState.READ),
        ]
    finally:
        await provider.aclose()
