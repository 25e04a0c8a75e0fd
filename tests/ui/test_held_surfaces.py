"""Held messages on every list an operator reads: ListInstances (every listed instance, one grouped
count), the CLI's `instances` (table and JSON), the status page's cards, its "Held" chip and its
JSON snapshot — all counted from the hold's table, not from the recent messages the page lists."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import aiohttp
from google.protobuf.duration_pb2 import Duration

from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, send_pb2
from tests.ui.conftest import AVENTURA, INCOMPLETE, UiStack, cli


async def hold(stack: UiStack, instance_id: str, key: str, to: str) -> None:
    request = send_pb2.SendMessageRequest(
        instance_id=instance_id, to=to, idempotency_key=key, text=send_pb2.TextContent(body="Oi")
    )
    request.hold_for.CopyFrom(Duration(seconds=600))
    msg = await stack.send.SendMessage(request, timeout=10)
    assert msg.state == common_pb2.MESSAGE_STATE_HELD


async def test_every_list_shows_the_held_messages_of_each_instance(stack: UiStack) -> None:
    await stack.add_both()
    for i in range(3):
        await hold(stack, INCOMPLETE, f"held-{i}", f"55159811217{i:02d}")
    assert stack.app.held is not None
    queries: list[Sequence[str] | None] = []
    store = stack.app.held.store
    counts_by_instance = store.counts_by_instance

    async def counted(ids: Sequence[str] | None) -> dict[str, Counter[str]]:
        queries.append(ids)
        return await counts_by_instance(ids)

    store.counts_by_instance = counted  # type: ignore[method-assign,assignment]

    listed = await stack.health.ListInstances(instance_health_pb2.ListInstancesRequest(), timeout=10)
    by_id = {h.instance_id: h for h in listed.instances}
    assert by_id[INCOMPLETE].held_messages == 3
    assert [(r.reason, r.count) for r in by_id[INCOMPLETE].held_reasons] == [("SESSION_INCOMPLETE", 3)]
    assert (by_id[AVENTURA].held_messages, list(by_id[AVENTURA].held_reasons)) == (0, [])
    assert len(queries) == 1  # one grouped count for the whole list, not one per instance

    server = ("--server", stack.grpc_address)
    as_json = await cli("instances", "--json", *server)
    assert as_json.returncode == 0, as_json.stderr
    rows = {r["instance_id"]: r for r in json.loads(as_json.stdout)["instances"]}
    assert rows[INCOMPLETE]["held_messages"] == 3
    assert rows[INCOMPLETE]["held_reasons"] == [{"reason": "SESSION_INCOMPLETE", "count": 3}]
    assert rows[AVENTURA]["held_messages"] == 0
    table = await cli("instances", *server)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[5] == "ESPERA"
    line = next(x for x in table.stdout.splitlines() if INCOMPLETE in x)
    assert "3 SESSION_INCOMPLETE" in line

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.http_url}/status/api/snapshot?lang=en") as response:
            snap = await response.json()
        async with session.get(f"{stack.http_url}/status") as response:
            html = await response.text()
    assert snap["summary"]["held"] == 3
    cards = {c["instance_id"]: c for c in snap["instances"]}
    assert cards[INCOMPLETE]["held"]["count"] == 3
    assert cards[INCOMPLETE]["held"]["top_reason"] == "SESSION_INCOMPLETE"
    assert cards[INCOMPLETE]["held"]["reasons"] == [{"reason": "SESSION_INCOMPLETE", "count": 3}]
    assert cards[AVENTURA]["held"] == {"count": 0, "top_reason": None, "top_reason_text": None, "reasons": []}
    assert 'data-role="held" data-count="3" data-reason="SESSION_INCOMPLETE"' in html
    assert "Mensagens em espera" in html
    assert 'data-count="held">Em espera: <strong>3</strong>' in html


async def test_the_held_counts_read_only_the_held_rows_of_the_listed_instances(stack: UiStack) -> None:
    await stack.add_both()
    await hold(stack, INCOMPLETE, "one", "5515981121701")
    assert stack.app.held is not None
    assert await stack.app.held.of([]) == {}
    assert await stack.app.held.of([AVENTURA]) == {}
    both = await stack.app.held.of([AVENTURA, INCOMPLETE])
    assert (both[INCOMPLETE].count, both[INCOMPLETE].top_reason) == (1, "SESSION_INCOMPLETE")
    assert set(await stack.app.held.of(None)) == {INCOMPLETE}
