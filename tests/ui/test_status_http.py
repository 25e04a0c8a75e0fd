"""The status page and its API over plain HTTP: auth, the JSON snapshot, languages, masking, no secrets,
live events, and a clean shutdown with a viewer still connected."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.simulator.dialects import ZAPI
from statemachine.domain import Plan
from statemachine.providers import ProviderKind
from tests.ui.conftest import (
    ADMIN,
    API_TOKENS,
    AVENTURA,
    INCOMPLETE,
    MASKED,
    RECIPIENT,
    SCOPED,
    StackFactory,
    UiStack,
)

PAGES = ("/status", "/status/api/snapshot", "/status/api/events")


def basic(token: str, user: str = "operador") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict]]:
    """(event name, data) pairs of a text/event-stream response."""
    name, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            yield name, json.loads(data)
            name, data = "message", ""


async def first_snapshot(client: httpx.AsyncClient, path: str = "/status/api/events", **kw) -> dict:
    async with client.stream("GET", path, **kw) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for name, data in sse_events(response):
            if name == "snapshot":
                return data
    raise AssertionError("no snapshot event")


async def stalled_stack(make_stack: StackFactory, **settings) -> UiStack:
    """Aventura (healthy) with one failed and three stuck messages; LITE with a session but no phone."""
    stack = await make_stack(stuck_after=0.2, **settings)
    await stack.add_both()
    stack.sim.set_behaviour(AVENTURA, "silent_stall")
    token = ADMIN if "api_tokens" in settings else None
    for i in range(3):
        await stack.send_text(AVENTURA, f"stall-{i}", token)
    with pytest.raises(Exception, match="SESSION_INCOMPLETE"):
        await stack.send_text(INCOMPLETE, "blocked-1", token)
    await asyncio.sleep(0.3)
    # This sweep or the one that follows the connection's missed-event recovery marks them.
    await stack.app.jobs.sweep_once()
    stuck, _next = await stack.app.messages.list_messages(instance_id=AVENTURA, stuck_only=True)
    assert len(stuck) == 3
    return stack


async def test_snapshot_page_and_languages(make_stack: StackFactory) -> None:
    stack = await stalled_stack(make_stack)
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=5) as client:
        snap = (await client.get("/status/api/snapshot")).json()
        page = await client.get("/status")
        english = await client.get("/status?lang=en")
        by_header = (await client.get("/status/api/snapshot", headers={"Accept-Language": "en-US,en;q=0.9"})).json()
        pt_header = (await client.get("/status/api/snapshot", headers={"Accept-Language": "pt-BR,en;q=0.5"})).json()
        forced = (await client.get("/status/api/snapshot?lang=pt-BR", headers={"Accept-Language": "en"})).json()
        assets = [await client.get(f"/status/static/{name}") for name in ("status.css", "status.js")]

    # JSON snapshot: the truth per instance, in the operator's words (pt-BR by default).
    assert snap["lang"] == "pt-BR"
    instances = {i["instance_id"]: i for i in snap["instances"]}
    aventura, lite = instances[AVENTURA], instances[INCOMPLETE]
    assert (aventura["state"], aventura["reason"], aventura["label"]) == (
        "DEGRADED",
        "DELIVERY_STALLED",
        "Entrega parada",
    )
    assert aventura["tone"] == "red"
    assert aventura["can_send"] is False
    assert aventura["stuck_messages"] == 3
    assert aventura["reason_text"].startswith("Mensagens enviadas não estão sendo entregues")
    assert aventura["phone_number"] == "5511999990000"
    assert aventura["checked_at"]
    assert aventura["state_changed_at"]
    assert (lite["label"], lite["tone"], lite["phone_number"]) == ("Sessão incompleta", "orange", None)
    assert snap["summary"] == {"instances": 2, "online": 0, "attention": 2, "stuck": 3, "failed": 1, "held": 0}

    messages = snap["messages"]
    assert [m["stuck"] for m in messages] == [True, True, True, False]  # stuck first, then failures
    assert {m["to"] for m in messages} == {MASKED}
    assert messages[0]["label"] == "Parada (sem entrega)"
    assert messages[0]["instance_name"] == "Aventura"
    assert messages[3]["reason"] == "SESSION_INCOMPLETE"
    assert messages[3]["label"] == "Falhou"
    assert all(m["attempts"] == 1 and m["age_seconds"] >= 0 for m in messages)

    changes = snap["changes"]
    assert changes[0]["instance_id"] == AVENTURA
    assert changes[0]["to_label"] == "Entrega parada"
    assert (changes[0]["from_label"], changes[0]["source"], changes[0]["source_label"]) == (
        "Online",
        "sweeper",
        "varredura",
    )

    # HTML: cards with data attributes, labels and reasons; recipients masked everywhere.
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert f'data-instance-id="{AVENTURA}" data-state="DEGRADED" data-reason="DELIVERY_STALLED"' in html
    assert f'data-instance-id="{INCOMPLETE}" data-state="SESSION_INCOMPLETE"' in html
    assert ">Entrega parada<" in html
    assert ">Sessão incompleta<" in html
    assert "Mensagens paradas" in html
    assert html.count(MASKED) == 4
    assert RECIPIENT not in html

    assert english.status_code == 200
    assert '<html lang="en"' in english.text
    assert ">Delivery stalled<" in english.text
    assert ">Session incomplete<" in english.text
    assert "Stuck and failed messages" in english.text
    assert "Sessão incompleta" not in english.text
    assert by_header["lang"] == "en"
    assert {i["label"] for i in by_header["instances"]} == {
        "Delivery stalled",
        "Session incomplete",
    }
    assert by_header["instances"][0]["reason_text"].startswith("Sent messages are not being delivered")
    assert pt_header["lang"] == "pt-BR"
    assert forced["lang"] == "pt-BR"
    assert [a.status_code for a in assets] == [200, 200]
    assert assets[0].headers["content-type"].startswith("text/css")


async def test_labels_for_every_state(make_stack: StackFactory) -> None:
    stack = await make_stack(probe_timeout=0.3)
    await stack.add(AVENTURA, "Aventura", behaviour="timeout")  # probe times out → DEGRADED/TIMEOUT_OR_GATEWAY
    await stack.add(INCOMPLETE, "Loja", behaviour="token_invalid")  # → DISCONNECTED/TOKEN_INVALID
    await stack.app.instances.register("NEVER-PROBED-1", "Nova", "wapi-instance-token-new-0003", Plan.PRO, probe=False)
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=5) as client:
        pt = {i["instance_id"]: i for i in (await client.get("/status/api/snapshot")).json()["instances"]}
        en = {i["instance_id"]: i for i in (await client.get("/status/api/snapshot?lang=en")).json()["instances"]}
    assert (pt[AVENTURA]["label"], pt[AVENTURA]["tone"]) == ("Degradada (timeout/gateway)", "yellow")
    assert (pt[INCOMPLETE]["label"], pt[INCOMPLETE]["tone"]) == ("Desconectada", "grey")
    assert pt[INCOMPLETE]["reason_text"] == "Token da instância inválido ou expirado. Atualize o token na W-API."
    assert (pt["NEVER-PROBED-1"]["label"], pt["NEVER-PROBED-1"]["state"]) == ("Desconhecida", "UNKNOWN")
    assert pt["NEVER-PROBED-1"]["reason_text"] == "Registrada; aguardando a primeira verificação."
    assert [en[i]["label"] for i in (AVENTURA, INCOMPLETE, "NEVER-PROBED-1")] == [
        "Degraded (timeout/gateway)",
        "Disconnected",
        "Unknown",
    ]


async def test_tokens_basic_bearer_scopes_and_no_secrets(make_stack: StackFactory) -> None:
    stack = await stalled_stack(make_stack, api_tokens=API_TOKENS)
    bodies: list[str] = []
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=5) as client:
        for path in PAGES:
            for headers in (
                {},
                bearer("wrong-token-0123456789"),
                basic("wrong-token-0123456789"),
                {"Authorization": "Basic %%%"},
            ):
                denied = await client.get(path, headers=headers)
                assert denied.status_code == 401, (path, headers)
                assert denied.headers["www-authenticate"].startswith('Basic realm="wapi-guard"')
                bodies.append(denied.text)
        # A browser logs in with Basic (any user, password = API token); scripts use Bearer.
        page = await client.get("/status", headers=basic(ADMIN))
        snap = await client.get("/status/api/snapshot", headers=bearer(ADMIN))
        english = await client.get("/status/api/snapshot?lang=en", headers=basic(ADMIN, user=""))
        events = await first_snapshot(client, headers=basic(ADMIN))
        assets = [await client.get(f"/status/static/{n}") for n in ("status.css", "status.js")]  # public: no data
        # A scoped token sees only its instance, everywhere.
        scoped_page = await client.get("/status", headers=basic(SCOPED))
        scoped_snap = await client.get("/status/api/snapshot", headers=bearer(SCOPED))
        scoped_events = await first_snapshot(client, headers=bearer(SCOPED))
    for response in (page, snap, english, scoped_page, scoped_snap, *assets):
        assert response.status_code == 200
        bodies.append(response.text)
    bodies += [json.dumps(events, ensure_ascii=False), json.dumps(scoped_events, ensure_ascii=False)]

    assert {i["instance_id"] for i in snap.json()["instances"]} == {AVENTURA, INCOMPLETE}
    assert AVENTURA in events["html"]["instances"]
    assert INCOMPLETE in events["html"]["instances"]
    scoped = scoped_snap.json()
    assert [i["instance_id"] for i in scoped["instances"]] == [INCOMPLETE]
    assert {m["instance_id"] for m in scoped["messages"]} == {INCOMPLETE}
    assert {c["instance_id"] for c in scoped["changes"]} == {INCOMPLETE}
    assert AVENTURA not in scoped_page.text
    assert "Aventura" not in scoped_page.text
    assert all(AVENTURA not in html for html in scoped_events["html"].values())

    # Never a token, a secret or a full recipient number in any answer.
    for body in bodies:
        for secret in stack.secrets:
            assert secret not in body
        assert RECIPIENT not in body
    assert MASKED in snap.text
    assert MASKED in page.text
    assert MASKED in events["html"]["messages"]


async def test_event_stream_is_live_and_shutdown_does_not_wait_for_it(make_stack: StackFactory) -> None:
    stack = await make_stack(shutdown_grace=8)  # the bridge would wait this long for an open stream
    await stack.add(AVENTURA, "Aventura")
    seen: list[str] = []
    async with (
        httpx.AsyncClient(base_url=stack.http_url, timeout=10) as client,
        client.stream("GET", "/status/api/events") as response,
    ):
        events = sse_events(response)
        async with asyncio.timeout(10):
            async for name, data in events:
                if name == "snapshot" and "instances" in data["html"]:
                    seen.append(data["html"]["instances"])
                    if 'data-state="CONNECTED"' in seen[-1]:
                        break
            await stack.sim.emit(AVENTURA, "connected_without_phone")  # through the webhook bridge
            async for name, data in events:
                if name == "snapshot" and "instances" in data["html"]:
                    seen.append(data["html"]["instances"])
                    break
        assert 'data-state="SESSION_INCOMPLETE"' in seen[-1]
        assert ">Sessão incompleta<" in seen[-1]
        # Stopping the server with a viewer connected: the stream ends, shutdown does not hang.
        started = time.monotonic()
        async with asyncio.timeout(10):
            await stack.stop()
        assert time.monotonic() - started < 3


async def test_database_trouble_is_said_not_hidden(stack: UiStack, monkeypatch: pytest.MonkeyPatch) -> None:
    await stack.add(AVENTURA, "Aventura")
    instances = stack.app.instances
    healthy = instances.list_instances

    async def broken(**_kw):
        raise OSError("database unreachable")

    async with (
        httpx.AsyncClient(base_url=stack.http_url, timeout=10) as client,
        client.stream("GET", "/status/api/events") as response,
    ):
        events = sse_events(response)
        async with asyncio.timeout(10):
            name, _ = await anext(events)
            assert name == "snapshot"
            monkeypatch.setattr(instances, "list_instances", broken)
            await stack.sim.emit(AVENTURA, "connected_without_phone")  # a change wakes the stream now
            async for name, data in events:
                if name == "unavailable":
                    assert "banco de dados" in data["message"]
                    break
            page = await client.get("/status")
            snap = await client.get("/status/api/snapshot?lang=en")
            assert page.status_code == 503
            assert "banco de dados inacessível" in page.text
            assert snap.status_code == 503
            assert snap.json()["error"] == "unavailable"
            monkeypatch.setattr(instances, "list_instances", healthy)
            await stack.sim.emit(AVENTURA, "connected")
            async for name, data in events:
                if name == "snapshot" and 'data-state="CONNECTED"' in data["html"].get("instances", ""):
                    break


async def test_each_instance_shows_its_provider(make_stack: StackFactory) -> None:
    """A Z-API instance next to a W-API one: the card and the JSON snapshot say which API each
    lives on, in the provider's own name (the operator's first question when a session breaks)."""
    stack = await make_stack()
    await stack.add(AVENTURA, "Aventura")
    zapi_id = "3C1F0A9E2B7D4E61A5B8C0D2E4F6A8B1"
    stack.sim.dialects.add_instance(ZAPI, zapi_id, "zapi-instance-token-0003", phone="5511987654321")
    await stack.app.instances.register(
        zapi_id,
        "Loja Z-API",
        "zapi-instance-token-0003",
        Plan.PRO,
        provider=ProviderKind.ZAPI,
        base_url=stack.sim.dialects.root_url,  # the Z-API dialect answers on the simulator's port
    )
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=5) as client:
        snap = (await client.get("/status/api/snapshot")).json()
        html = (await client.get("/status")).text
        english = (await client.get("/status?lang=en")).text

    instances = {i["instance_id"]: i for i in snap["instances"]}
    assert (instances[zapi_id]["provider"], instances[zapi_id]["provider_label"]) == ("ZAPI", "Z-API")
    assert (instances[AVENTURA]["provider"], instances[AVENTURA]["provider_label"]) == ("WAPI", "W-API")
    zapi_card = html.split(f'data-instance-id="{zapi_id}"')[1].split("</article>")[0]
    aventura_card = html.split(f'data-instance-id="{AVENTURA}"')[1].split("</article>")[0]
    assert 'data-provider="ZAPI"' in zapi_card
    assert '<dt>Provedor</dt><dd data-role="provider">Z-API</dd>' in zapi_card
    assert '<dd data-role="provider">W-API</dd>' in aventura_card
    assert '<dt>Provider</dt><dd data-role="provider">Z-API</dd>' in english
    assert "zapi-instance-token-0003" not in html + json.dumps(snap)


async def test_each_card_shows_what_protects_its_number(make_stack: StackFactory) -> None:
    """A row per instance card and an object in the JSON: the send policy's budgets used of their
    limits, the warm-up day and the opt-out count (pt-BR and en)."""
    from statemachine.send_policy import SendPolicy

    stack = await make_stack()
    await stack.add_both()
    assert stack.app.protection is not None
    policies, opt_outs, _ = stack.app.protection
    await policies.set(
        AVENTURA,
        SendPolicy(max_per_minute=40, new_recipients_per_day=200, warmup_start_per_day=20, warmup_days=14),
        by="test",
    )
    await stack.send_text(AVENTURA, "protected-1")
    await opt_outs.add(AVENTURA, "5515981121799", note="pediu", by="test")
    async with httpx.AsyncClient(base_url=stack.http_url, timeout=5) as client:
        snap = (await client.get("/status/api/snapshot")).json()
        html = (await client.get("/status")).text
        english = (await client.get("/status?lang=en")).text
    shield = {i["instance_id"]: i["protection"] for i in snap["instances"]}
    assert shield[AVENTURA]["policy_active"]
    assert (shield[AVENTURA]["new_recipients_today"], shield[AVENTURA]["new_recipients_today_budget"]) == (1, 20)
    assert (shield[AVENTURA]["warmup_day"], shield[AVENTURA]["warmup_days"], shield[AVENTURA]["opt_outs"]) == (0, 14, 1)
    assert (shield[INCOMPLETE]["policy_active"], shield[INCOMPLETE]["opt_outs"]) == (False, 0)
    card = html.split(f'data-instance-id="{AVENTURA}"')[1].split("</article>")[0]
    assert (
        '<dt>Proteção do número</dt><dd data-role="protection">5/40 envios no minuto · 1/20 novos hoje · '
        "aquecimento dia 0/14 · 1 descadastrados</dd>"
    ) in card
    other = html.split(f'data-instance-id="{INCOMPLETE}"')[1].split("</article>")[0]
    assert '<dd data-role="protection">sem política de envio · 0 descadastrados</dd>' in other
    assert "<dt>Number protection</dt>" in english
    assert "1/20 new today · warm-up day 0/14 · 1 opted out" in english
