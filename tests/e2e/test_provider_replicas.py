"""A re-registration that moves an instance to another provider reaches every replica without a
restart: each replica's provider registry reads the instance's provider again once it sees the
instance row at a newer version (the preflight's cache, a probe)."""

from __future__ import annotations

import itertools
import secrets

import grpc

from adapters.simulator.dialects import ZAPI
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2
from services.bootstrap import App
from tests import polling
from tests.e2e.test_providers import PHONE, STATE, ProviderStack, start_stack, stop_stack, text


async def test_a_provider_change_made_through_one_replica_routes_the_others_sends(database_url: str) -> None:
    a = await start_stack(ZAPI, database_url, health_cache_ttl=0.2)
    b_app: App | None = None
    try:
        b_app = await App.start(a.app.settings)
        b = ProviderStack(b_app, a.sim, a.secret, grpc.aio.insecure_channel(f"127.0.0.1:{b_app.grpc_port}"), ZAPI)
        try:
            token = secrets.token_urlsafe(12)
            # On A: a W-API instance (A's registry remembers it as W-API).
            registered = await a.health.RegisterInstance(
                instance_health_pb2.RegisterInstanceRequest(instance_id="MOVED", token=token, skip_probe=True)
            )
            assert registered.provider == common_pb2.PROVIDER_WAPI
            # The customer moves the number to Z-API and re-registers through B (which probes it there).
            a.sim.add_instance(ZAPI, "MOVED", token, behaviour="healthy", phone=PHONE, webhook_url=a.webhook_url())
            moved = await b.health.RegisterInstance(
                instance_health_pb2.RegisterInstanceRequest(
                    instance_id="MOVED", token=token, provider=common_pb2.PROVIDER_ZAPI
                )
            )
            assert (moved.provider, moved.state) == (common_pb2.PROVIDER_ZAPI, common_pb2.INSTANCE_STATE_CONNECTED)

            keys = itertools.count()

            async def sent_through_a() -> object:
                try:  # a new key each time: a blocked attempt is stored with its key
                    return await a.send.SendMessage(text("MOVED", f"via-a-{next(keys)}"))
                except grpc.aio.AioRpcError:
                    return None  # A's preflight still holds the old health for a moment

            sent = await polling.eventually(sent_through_a, "a send through A", 5.0)
            assert sent.state == STATE.Value("MESSAGE_STATE_QUEUED")  # type: ignore[attr-defined]
            # It went through the Z-API dialect (W-API's routes are not even served here).
            assert [s["messageId"] for s in a.sim.instances["MOVED"].sends] == [sent.provider_message_id]  # type: ignore[attr-defined]
        finally:
            await b.channel.close()
    finally:
        if b_app is not None:
            await b_app.stop()
        await stop_stack(a)
