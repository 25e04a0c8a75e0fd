"""The send policy from the status page: the form on each card a viewer may act on, stored through
the same use case as the gRPC SetSendPolicy (same validation, same audit row naming the operator),
refused without auth, CSRF or the instance in the viewer's scope."""

from __future__ import annotations

import re

import aiohttp

from statemachine.send_policy import SendPolicy
from tests.ui.conftest import ADMIN, API_TOKENS, AVENTURA, INCOMPLETE, SCOPED, StackFactory, UiStack
from tests.ui.test_status_actions import basic, csrf_of

FORM = {
    "min_interval_seconds": "4",
    "jitter_seconds": "2.5",
    "max_per_minute": "12",
    "new_recipients_per_hour": "10",
    "new_recipients_per_day": "40",
    "warmup_start_per_day": "5",
    "warmup_days": "14",
    "quiet_start": "22:00",
    "quiet_end": "07:00",
    "time_zone": "America/Sao_Paulo",
    "release_requires_confirmation": "1",
    "optout_list": "loja-centro",
}


async def history(stack: UiStack, instance_id: str) -> list[tuple[str, object]]:
    """The operators' audit rows (by, max_per_minute after), oldest first (the connection's own
    PHONE_SEEN rows left out)."""
    assert stack.app.protection is not None
    rows = await stack.app.protection[0].history(instance_id)
    return [(c.by, c.after.get("max_per_minute")) for _, c in reversed(rows) if c.change == "SET"]


async def test_an_operator_sets_and_removes_a_policy_from_the_page(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add_both()
    url = f"{stack.http_url}/status/instances/{AVENTURA}/send-policy"
    headers = {**basic(ADMIN), "Origin": stack.http_url}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.http_url}/status", headers=basic(ADMIN)) as response:
            page = await response.text()
        assert page.count('data-action="send-policy"') == 2  # one form per card
        assert "Política de envio" in page
        token = await csrf_of(session, stack)
        async with session.post(url, data={**FORM, "csrf": token}, headers=headers) as response:
            assert response.status == 200, await response.text()
            saved = await response.text()
        assert 'id="policy-state" data-active="true"' in saved
        assert "Política ativa" in saved
        assert 'data-by="admin"' in saved
        assert '<dd data-field="quiet_start">22:00</dd>' in saved
        assert '<dd data-field="optout_list">loja-centro</dd>' in saved

        assert stack.app.protection is not None
        record = await stack.app.protection[0].get(AVENTURA)
        assert record is not None
        assert record.policy.max_per_minute == 12
        assert record.policy.jitter_seconds == 2.5
        assert record.policy.warmup_days == 14
        assert record.policy.time_zone == "America/Sao_Paulo"
        assert record.policy.release_requires_confirmation
        assert (record.optout_list, record.updated_by) == ("loja-centro", "admin")

        # The card now shows the policy in the form, and its budgets.
        async with session.get(f"{stack.http_url}/status", headers=basic(ADMIN)) as response:
            page = await response.text()
        card = page[page.index(f'data-instance-id="{AVENTURA}"') :]
        card = card[: card.index("</article>")]
        assert 'name="max_per_minute" type="number" min="0" step="1" inputmode="decimal" value="12"' in card
        assert 'name="release_requires_confirmation" type="checkbox" value="1" checked' in card
        assert "/12 envios no minuto" in card  # the budgets row follows the new limit

        async with session.post(url, data={"csrf": token, "clear": "1"}, headers=headers) as response:
            assert response.status == 200, await response.text()
            cleared = await response.text()
        assert 'data-active="false"' in cleared
        assert "Sem política" in cleared
    record = await stack.app.protection[0].get(AVENTURA)
    assert record is not None
    assert record.policy == SendPolicy()
    assert record.optout_list == "loja-centro"  # removing the limits keeps the opt-out list
    assert await history(stack, AVENTURA) == [("admin", 12), ("admin", 0)]


async def test_bad_input_shows_the_reason_and_stores_nothing(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add_both()
    url = f"{stack.http_url}/status/instances/{AVENTURA}/send-policy"
    headers = {**basic(ADMIN), "Origin": stack.http_url}
    async with aiohttp.ClientSession() as session:
        token = await csrf_of(session, stack)
        warmup_without_target = {"csrf": token, "warmup_days": "7"}
        async with session.post(url, data=warmup_without_target, headers=headers) as response:
            assert response.status == 400
            html = await response.text()
        assert 'data-reason="INVALID_ARGUMENT"' in html
        assert "(INVALID_ARGUMENT)" in html
        assert "policy.warmup_days: um aquecimento precisa de new_recipients_per_day (sua meta)" in html

        english = {"csrf": token, "lang": "en", "quiet_start": "25:00", "quiet_end": "07:00"}
        async with session.post(url, data=english, headers=headers) as response:
            assert response.status == 400
            html = await response.text()
        assert 'lang="en"' in html
        assert "policy.quiet_start: must be a local time HH:MM" in html

        words = {"csrf": token, "max_per_minute": "muitos", "time_zone": "Marte/Base", "optout_list": "a b"}
        async with session.post(url, data=words, headers=headers) as response:
            assert response.status == 400
            html = await response.text()
        assert "policy.max_per_minute: deve ser um número inteiro" in html
        assert 'data-field="optout_list"' in html

        zone = {"csrf": token, "max_per_minute": "5", "time_zone": "Marte/Base"}
        async with session.post(url, data=zone, headers=headers) as response:
            assert response.status == 400
            assert "não é um fuso horário IANA" in await response.text()
    assert stack.app.protection is not None
    record = await stack.app.protection[0].get(AVENTURA)
    assert record is None or (record.policy == SendPolicy() and record.updated_by == "connection")
    assert await history(stack, AVENTURA) == []


async def test_viewers_who_may_not_act_get_no_form_and_are_refused(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add_both()
    other = f"{stack.http_url}/status/instances/{AVENTURA}/send-policy"
    own = f"{stack.http_url}/status/instances/{INCOMPLETE}/send-policy"
    origin = {"Origin": stack.http_url}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.http_url}/status", headers=basic(SCOPED)) as response:
            page = await response.text()
        forms = re.findall(r'action="/status/instances/([^/"]+)/send-policy"', page)
        assert forms == [INCOMPLETE]  # the scoped token acts on its own instance only
        scoped = await csrf_of(session, stack, SCOPED)
        admin = await csrf_of(session, stack, ADMIN)
        form = {**FORM, "csrf": scoped}
        async with session.post(other, data=form, headers={**basic(SCOPED), **origin}) as response:
            assert response.status == 403
        async with session.post(own, data=form, headers=origin) as response:
            assert response.status == 401  # no credentials
        async with session.post(own, data={**FORM, "csrf": admin}, headers={**basic(SCOPED), **origin}) as response:
            assert response.status == 403  # another viewer's form
        evil = {**basic(SCOPED), "Origin": "https://evil.example"}
        async with session.post(own, data=form, headers=evil) as response:
            assert response.status == 403
        assert stack.app.protection is not None
        assert await history(stack, AVENTURA) == []
        assert await history(stack, INCOMPLETE) == []
        async with session.post(own, data=form, headers={**basic(SCOPED), **origin}) as response:
            assert response.status == 200, await response.text()
    assert await history(stack, INCOMPLETE) == [("crm", 12)]


async def test_a_page_without_actions_offers_no_policy_form(stack: UiStack) -> None:
    await stack.add_both()
    async with aiohttp.ClientSession() as session, session.get(f"{stack.http_url}/status") as response:
        page = await response.text()
    actions = 'data-action="restart"' in page
    assert ('data-action="send-policy"' in page) == actions
