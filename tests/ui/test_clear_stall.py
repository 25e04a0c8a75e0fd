"""An operator's explicit clear of a delivery stall, from the command line and from the status page:
authenticated, CSRF-checked on the page, audited with who asked, and offered only on a stalled
instance; a clear without a stall changes nothing."""

from __future__ import annotations

import json

import aiohttp

from adapters.persistence.schema import instance_transitions
from adapters.persistence.store import Repository
from statemachine.instance_machine import InstanceTrigger
from tests.ui.conftest import ADMIN, API_TOKENS, AVENTURA, SCOPED, StackFactory, UiStack, cli
from tests.ui.test_status_actions import basic, csrf_of


async def stall(stack: UiStack) -> None:
    change = await stack.app.store.apply_instance_trigger(
        AVENTURA, InstanceTrigger.REPORT_DELIVERY_STALLED, source="detector"
    )
    assert change is not None
    assert change.decision.changed
    stack.app.instances.after_change(change)


def repository(stack: UiStack) -> Repository:
    repo = stack.app.store
    repo = getattr(repo, "inner", repo)  # the use cases' store is bounded per request
    assert isinstance(repo, Repository)
    return repo


async def operator_sources(stack: UiStack) -> list[tuple[str, str, str]]:
    async with repository(stack).engine.connect() as conn:
        rows = await conn.execute(
            instance_transitions.select()
            .where(instance_transitions.c.instance_id == AVENTURA)
            .order_by(instance_transitions.c.id)
        )
        return [(r.from_state, r.to_state, r.source) for r in rows if r.source.startswith("operator:")]


async def test_clear_stall_from_the_command_line(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add(AVENTURA, "Aventura")
    await stall(stack)
    server = ("--server", stack.grpc_address)

    denied = await cli("clear-stall", AVENTURA, *server, env={"WAPIGUARD_TOKEN": SCOPED})
    assert denied.returncode == 5  # a token scoped to another instance
    cleared = await cli("clear-stall", AVENTURA, *server, env={"WAPIGUARD_TOKEN": ADMIN})
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert "DELIVERY_STALLED" in cleared.stdout
    assert "removido" in cleared.stdout
    assert "CONNECTED" in cleared.stdout
    again = await cli("clear-stall", AVENTURA, *server, "--json", "--lang", "en", env={"WAPIGUARD_TOKEN": ADMIN})
    assert again.returncode == 1  # nothing to clear
    answer = json.loads(again.stdout)
    assert (answer["cleared"], answer["instance"]["state"]) == (False, "CONNECTED")
    assert await operator_sources(stack) == [("DEGRADED", "CONNECTED", "operator:admin")]
    actions = await repository(stack).list_recovery_actions(AVENTURA)
    assert [(a.action, a.requested_by) for a in actions] == [("clear_stall", "admin"), ("clear_stall", "admin")]
    for output in (denied, cleared, again):
        for secret in stack.secrets:
            assert secret not in output.stdout + output.stderr


async def test_clear_stall_from_the_status_page_only_on_a_stalled_instance(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add(AVENTURA, "Aventura")
    url = f"{stack.http_url}/status/instances/{AVENTURA}/clear-stall"
    origin = {"Origin": stack.http_url}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.http_url}/status", headers=basic(ADMIN)) as response:
            assert 'data-action="clear-stall"' not in await response.text()  # not stalled: not offered
        await stall(stack)
        async with session.get(f"{stack.http_url}/status", headers=basic(ADMIN)) as response:
            assert 'data-action="clear-stall"' in await response.text()
        token = await csrf_of(session, stack)
        async with session.post(url, data={"csrf": "0" * 64}, headers={**basic(ADMIN), **origin}) as response:
            assert response.status == 403
        assert (await stack.app.store.get_instance(AVENTURA))[0].reason == "DELIVERY_STALLED"  # type: ignore[index]

        async with session.post(url, data={"csrf": token}, headers={**basic(ADMIN), **origin}) as response:
            assert response.status == 200
            html = await response.text()
        assert 'data-cleared="true"' in html
        assert 'data-state="CONNECTED"' in html
        async with session.post(url, data={"csrf": token}, headers={**basic(ADMIN), **origin}) as response:
            assert 'data-cleared="false"' in await response.text()
    assert await operator_sources(stack) == [("DEGRADED", "CONNECTED", "operator:admin")]
