"""Webhooks in the instance's verdict (issue 22, item 1), end to end over gRPC against the simulator.

A connected instance whose W-API webhooks are not known to reach the bridge is not plainly healthy:
InstanceHealth says WEBHOOKS_UNCONFIGURED with the next step; sends still pass unless
--require-webhooks, which blocks them like any other preflight block. Recent receipts prove the
webhooks wired whatever was configured; a read-back that finds the URLs pointing elsewhere undoes a
CONFIGURED state.
"""

from __future__ import annotations

import grpc
import httpx

from adapters.wapi.contract import WEBHOOK_KINDS
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import CONNECTED, FAILED, READ, SENT, Stack, eventually, text_request
from tests.e2e.test_recovery import with_public_url

INSTANCE = "HOOKS-ZTS923-GEAY6V"


def req(instance_id: str = INSTANCE) -> instance_health_pb2.InstanceRequest:
    return instance_health_pb2.InstanceRequest(instance_id=instance_id)


async def test_a_connected_instance_without_webhooks_says_delivery_cannot_be_confirmed(stack: Stack) -> None:
    h = await stack.add_instance(INSTANCE, "healthy", wired=False)
    assert (h.state, h.reason, h.can_send, h.delivery_confirmable) == (
        CONNECTED,
        "WEBHOOKS_UNCONFIGURED",
        True,
        False,
    )
    assert (h.webhooks_state, h.webhooks_evidence) == ("UNCONFIGURED", "UNCONFIGURED")
    assert "Connected with a confirmed phone" not in h.reason_message
    assert "entrega não pode ser confirmada" in h.reason_message
    assert f"wapi-guard webhooks configure {INSTANCE}" in h.next_step
    assert "/webhooks/wapi/<WAPIGUARD_WEBHOOK_SECRET>" in h.next_step
    assert stack.secret not in h.next_step
    listed = await stack.health.ListInstances(instance_health_pb2.ListInstancesRequest())
    assert [(i.reason, i.can_send) for i in listed.instances] == [("WEBHOOKS_UNCONFIGURED", True)]

    # By default the send passes; its receipts then prove the webhooks wired (the simulator posts
    # every instance's webhooks to this bridge).
    sent = await stack.submit(text_request(INSTANCE, key="passes"))
    assert sent.state == SENT
    await stack.wait_state(sent.id, READ)

    async def wired() -> common_pb2.InstanceHealth | None:
        health = await stack.get_health(INSTANCE)
        return health if health.delivery_confirmable else None

    h = await eventually(wired, "receipts prove the webhooks wired")
    assert (h.reason, h.webhooks_state, h.webhooks_evidence, h.next_step) == (
        "PHONE_CONFIRMED",
        "UNCONFIGURED",
        "RECEIPTS",
        "",
    )
    assert h.HasField("last_receipt_at")


async def test_require_webhooks_blocks_sends_until_they_are_configured(make_stack: StackFactory) -> None:
    stack = await with_public_url(make_stack, require_webhooks=True)
    stack.sim.set_webhook_url(None)  # only what wapi-guard configures at W-API is posted
    h = await stack.add_instance(INSTANCE, "healthy", probe=True, wired=False)
    assert h.webhooks_state == "CONFIGURED"  # --public-url: registration configured them
    # The operator (or a reconnection gone wrong) leaves W-API pointing elsewhere.
    async with httpx.AsyncClient(base_url=stack.sim.base_url) as client:  # as at W-API's panel
        for kind in WEBHOOK_KINDS:
            answer = await client.put(
                f"/webhook/update-webhook-{kind}",
                params={"instanceId": INSTANCE},
                headers={"Authorization": f"Bearer {stack.tokens[INSTANCE]}"},
                json={"value": "https://elsewhere.example/hook"},
            )
            assert answer.status_code == 200
    recovery = stack.app.recovery
    assert recovery is not None
    assert await recovery.check_all_webhooks() == 1  # the periodic read-back
    h = await stack.get_health(INSTANCE)
    assert (h.state, h.reason, h.can_send, h.webhooks_state) == (CONNECTED, "WEBHOOKS_UNCONFIGURED", False, "FAILED")
    assert "elsewhere.example" in h.webhooks_detail
    assert f"wapi-guard webhooks configure {INSTANCE}" in h.next_step
    assert stack.bridge_url in h.next_step  # the URL it will set

    refused = await stack.refused(text_request(INSTANCE, key="blocked"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WEBHOOKS_UNCONFIGURED")
    assert refused.stored is not None
    assert (refused.stored.state, refused.stored.failure_reason) == (FAILED, "WEBHOOKS_UNCONFIGURED")
    assert not [r for r in stack.sim.requests if r.path.startswith("/message/")]  # nothing reached W-API
    # The same key again replays that refusal as it was: blocked here, never "the provider failed".
    replayed = await stack.refused(text_request(INSTANCE, key="blocked"))
    assert (replayed.code, replayed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "WEBHOOKS_UNCONFIGURED")
    assert replayed.stored is not None
    assert replayed.stored.id == refused.stored.id

    configured = await stack.health.ConfigureWebhooks(req())
    assert configured.configured
    assert stack.sim.configured_webhooks(INSTANCE) == dict.fromkeys(WEBHOOK_KINDS, stack.webhook_url)
    assert (configured.health.reason, configured.health.can_send) == ("PHONE_CONFIRMED", True)
    sent = await stack.submit(text_request(INSTANCE, key="after"))
    assert sent.state == SENT


async def test_recent_receipts_unblock_an_instance_wired_by_hand(make_stack: StackFactory) -> None:
    stack = await make_stack(require_webhooks=True)  # no --public-url: nothing configured by us
    h = await stack.add_instance(INSTANCE, "healthy", wired=False)
    assert (h.reason, h.can_send) == ("WEBHOOKS_UNCONFIGURED", False)
    assert (await stack.refused(text_request(INSTANCE, key="before"))).reason == "WEBHOOKS_UNCONFIGURED"
    # W-API posts a status for this instance (a message sent from elsewhere): the bridge receives it.
    await stack.sim.emit(INSTANCE, "status", message_id="3EB0FFFFFFFFFFFFFFFF", status="delivered")
    sent = await stack.submit(text_request(INSTANCE, key="after"))  # the preflight's cache knows at once
    assert sent.state == SENT

    async def wired() -> common_pb2.InstanceHealth | None:  # the store at the next flush (~1 s)
        health = await stack.get_health(INSTANCE)
        return health if health.delivery_confirmable else None

    h = await eventually(wired, "the receipt recorded")
    assert (h.reason, h.can_send, h.webhooks_evidence) == ("PHONE_CONFIRMED", True, "RECEIPTS")
    sent = await stack.submit(text_request(INSTANCE, key="after-flush"))
    assert sent.state == SENT
