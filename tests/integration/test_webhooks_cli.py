"""`wapi-guard subscriptions …` through the real entry point against a real server on loopback."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.integration.harness import start_harness, stop_harness
from tests.ui.conftest import cli


async def test_create_list_disable_and_deliveries(database_url: str) -> None:
    posts: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        posts.append((dict(request.headers), await request.read()))
        return web.Response(status=500 if len(posts) == 1 else 200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    h = await start_harness(database_url, webhook_retry_schedule="0.05,0.05")
    server = ("--server", f"127.0.0.1:{h.app.grpc_port}")
    try:
        await h.register("INST-A")
        created = await cli(
            "subscriptions", "create", "--url", url, "--type", "instance.health_changed", "--json", *server
        )
        assert created.returncode == 0, created.stderr
        sub = json.loads(created.stdout)
        assert sub["secret"].startswith("whsec_")
        assert sub["types"] == ["instance.health_changed"]
        await h.connect("INST-A")
        deadline = time.monotonic() + 15
        while len(posts) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        headers, body = posts[-1]
        payload = Webhook(sub["secret"]).verify(body, {k.lower(): v for k, v in headers.items()})
        assert payload["type"] == "instance.health_changed"

        listed = await cli("subscriptions", *server)
        assert listed.returncode == 0, listed.stderr
        assert sub["id"] in listed.stdout
        assert "HTTP 500" in listed.stdout  # the last error is shown
        assert sub["secret"] not in listed.stdout  # the secret only at creation
        # Localized like the other operator commands: pt-BR by default, English with --lang en.
        listed_en = await cli("subscriptions", *server, "--lang", "en")
        assert listed.stdout.split()[:3] == ["ID", "DESTINO", "ATIVA"]
        assert "  sim  " in listed.stdout
        assert listed_en.stdout.split()[:3] == ["ID", "URL", "ENABLED"]
        assert "  yes  " in listed_en.stdout
        rotated = await cli("subscriptions", "rotate-secret", sub["id"], *server)
        assert rotated.stdout.startswith("novo segredo (mostrado só agora): whsec_"), rotated.stdout

        deliveries = await cli("subscriptions", "deliveries", sub["id"], "--json", *server)
        rows = json.loads(deliveries.stdout)
        assert [(r["state"], r["attempts"]) for r in rows] == [("succeeded", 2)]

        disabled = await cli("subscriptions", "disable", sub["id"], "--json", *server)
        assert json.loads(disabled.stdout)["enabled"] is False
        missing = await cli("subscriptions", "disable", *server)
        assert missing.returncode == 2
        assert "informe o id da assinatura" in missing.stderr
    finally:
        await stop_harness(h)
        await runner.cleanup()
