"""Evolution API shapes read in its source (docs/providers.md, "Verified in the source"), end to
end through the bridge and gRPC against the simulator's Evolution dialect."""

from __future__ import annotations

import asyncio

from adapters.simulator.dialects import EVOLUTION
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2
from tests import polling
from tests.e2e.test_providers import RECIPIENT, STATE, start_stack, stop_stack, text


async def test_statuses_of_a_chat_whatsapp_knows_by_another_jid_are_reconciled(database_url: str) -> None:
    """The recipient is known to WhatsApp without its ninth digit; Evolution stored the acks
    under that chat JID and posted none: findStatusMessage, asked by the message id, finds them."""
    stack = await start_stack(EVOLUTION, database_url, stuck_after=0.3)
    try:
        stack.sim.jids[RECIPIENT] = "551581121710@s.whatsapp.net"
        await stack.add("evo-jid", "dropped_webhooks")
        sent = await stack.send.SendMessage(text("evo-jid", "k1"))
        await asyncio.sleep(0.5)
        await stack.app.jobs.sweep_once()
        await stack.health.ReconcileEvents(instance_health_pb2.ReconcileEventsRequest(instance_id="evo-jid"))
        done = await stack.message(sent.id)
        assert done.state == STATE.Value("MESSAGE_STATE_READ")
    finally:
        await stop_stack(stack)


async def test_a_close_it_will_not_reconnect_from_is_logged_out(database_url: str) -> None:
    stack = await start_stack(EVOLUTION, database_url)
    try:
        healthy = await stack.add("evo-out", "healthy")
        assert healthy.state == common_pb2.INSTANCE_STATE_CONNECTED
        await stack.sim.emit("evo-out", "logged_out_close", code=401)

        async def logged_out() -> common_pb2.InstanceHealth | None:
            health = await stack.state_of("evo-out")
            return health if health.reason == "LOGGED_OUT" else None

        health = await polling.eventually(logged_out, "LOGGED_OUT after connection.update close 401", 5.0)
        assert (health.state, health.can_send) == (common_pb2.INSTANCE_STATE_DISCONNECTED, False)
    finally:
        await stop_stack(stack)
