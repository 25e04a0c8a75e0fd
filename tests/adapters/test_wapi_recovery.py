"""The W-API adapter's operator actions against the simulator over loopback HTTP."""

from __future__ import annotations

import base64
import json

import pytest

from adapters.simulator import Simulator, WebhookReceiver
from adapters.wapi.client import WapiProvider
from adapters.wapi.contract import WEBHOOK_KINDS, parse_webhook_logs
from statemachine.domain import Credentials, Reason

from .conftest import INSTANCE, TOKEN

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_qr_code_of_a_disconnected_instance_is_png_and_text(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN, "disconnected")
    outcome = await provider.qr_code(Credentials(INSTANCE, TOKEN), timeout=2)
    assert outcome.ok
    assert not outcome.connected
    assert outcome.png.startswith(PNG_MAGIC)
    assert base64.b64decode(outcome.qr_text.split(",", 1)[1]) == outcome.png
    asked = [r.query.get("image") for r in sim.requests if r.path == "/instance/qr-code"]
    assert asked == ["disable", "enable"]


async def test_qr_code_of_a_paired_instance_says_connected(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN, "healthy", phone="5515981121710")
    outcome = await provider.qr_code(Credentials(INSTANCE, TOKEN), timeout=2)
    assert outcome.ok
    assert outcome.connected
    assert outcome.png == b""


async def test_pairing_code_then_typing_it_pairs_with_that_phone(
    sim: Simulator, provider: WapiProvider, receiver: WebhookReceiver
) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN, "session_incomplete")
    creds = Credentials(INSTANCE, TOKEN)
    outcome = await provider.pairing_code(creds, "5515981121710", timeout=2)
    assert outcome.ok
    assert len(outcome.pairing_code) == 9
    assert outcome.pairing_code[4] == "-"
    assert [r.query.get("phoneNumber") for r in sim.requests if r.path == "/instance/pairing-code"] == ["5515981121710"]
    assert (await provider.probe(creds, timeout=2)).phone is None  # not paired until typed
    with pytest.raises(ValueError, match="no pairing code"):
        await sim.type_pairing_code(INSTANCE, "WRNG-CODE")
    await sim.type_pairing_code(INSTANCE, outcome.pairing_code)
    probe = await provider.probe(creds, timeout=2)
    assert probe.connected
    assert probe.phone == "5515981121710"
    assert sim.webhook_posts[-1]["body"]["connectedPhone"] == "5515981121710"


async def test_pairing_code_for_a_bad_phone_is_a_provider_error(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN, "session_incomplete")
    outcome = await provider.pairing_code(Credentials(INSTANCE, TOKEN), "12", timeout=2)
    assert not outcome.ok
    assert outcome.failure is Reason.PROVIDER_ERROR


async def test_actions_with_a_wrong_token_are_token_invalid_and_never_echo_it(
    sim: Simulator, provider: WapiProvider
) -> None:
    sim.add_instance(INSTANCE, TOKEN, "session_incomplete")
    wrong = Credentials(INSTANCE, "wrong-token-abcdef-123456")
    for outcome in (
        await provider.restart(wrong, timeout=2),
        await provider.pairing_code(wrong, "5515981121710", timeout=2),
        await provider.set_webhook(wrong, "received", "https://x.example/h", timeout=2),
    ):
        assert outcome.failure is Reason.TOKEN_INVALID
        assert "wrong-token" not in outcome.detail


async def test_restart_and_disconnect(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN, "healthy")
    creds = Credentials(INSTANCE, TOKEN)
    restarted = await provider.restart(creds, timeout=2)
    assert restarted.ok
    assert restarted.message
    gone = await provider.disconnect(creds, timeout=2)
    assert gone.ok
    assert gone.message == "Deslogado com sucesso!"
    assert (await provider.probe(creds, timeout=2)).connected is False


async def test_webhook_urls_are_set_per_kind_and_read_back(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN, "healthy")
    creds = Credentials(INSTANCE, TOKEN)
    url = "https://guard.example.com/webhooks/wapi/s3cr3t"
    for kind in WEBHOOK_KINDS:
        assert (await provider.set_webhook(creds, kind, url, timeout=2)).ok
    assert sim.configured_webhooks(INSTANCE) == dict.fromkeys(WEBHOOK_KINDS, url)
    read = await provider.webhook_urls(creds, timeout=2)
    assert read.ok
    assert read.webhook_urls == dict.fromkeys(WEBHOOK_KINDS, url)


async def test_webhook_logs_page_through_every_posted_body(
    sim: Simulator, provider: WapiProvider, receiver: WebhookReceiver
) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN, "healthy")
    for n in range(7):
        await sim.emit(INSTANCE, "received", text=f"m{n}")
    creds = Credentials(INSTANCE, TOKEN)
    first = await provider.webhook_logs(creds, page=1, per_page=3, timeout=2)
    assert first.failure is None
    assert first.total_pages == 3
    assert len(first.entries) == 3
    texts = []
    for page in (1, 2, 3, 4):
        got = await provider.webhook_logs(creds, page=page, per_page=3, timeout=2)
        texts += [json.loads(e.payload)["msgContent"]["extendedTextMessage"]["text"] for e in got.entries]
    assert sorted(texts) == [f"m{n}" for n in range(7)]


async def test_webhook_logs_on_lite_are_refused(sim: Simulator, provider: WapiProvider) -> None:
    sim.add_instance(INSTANCE, TOKEN, "healthy", plan="LITE")
    page = await provider.webhook_logs(Credentials(INSTANCE, TOKEN), page=1, per_page=10, timeout=2)
    assert page.entries == []
    assert page.failure is Reason.PROVIDER_ERROR
    assert "PRO" in page.detail


def test_log_parser_accepts_string_bodies_and_other_list_keys() -> None:
    body = {"data": [{"_id": "a", "payload": '{"event":"webhookReceived","instanceId":"X"}'}, {"id": "b"}]}
    entries, pages = parse_webhook_logs(body)
    assert [(e.log_id, json.loads(e.payload)["instanceId"]) for e in entries] == [("a", "X")]
    assert pages is None


async def test_queued_send_answer_is_not_a_message_id(sim: Simulator, provider: WapiProvider) -> None:
    from statemachine.domain import MessageKind, OutboundMessage, Text

    sim.add_instance(INSTANCE, TOKEN, "accepted_queued")
    outcome = await provider.send(
        Credentials(INSTANCE, TOKEN), OutboundMessage(MessageKind.TEXT, "5515981121710", Text("oi")), timeout=2
    )
    assert outcome.provider_message_id is None
    assert not outcome.accepted
    assert outcome.queued
    assert outcome.queue_id
