"""Status page actions (QR code, pairing code, restart, retry): same auth as the page, CSRF-checked,
pt-BR by default — over HTTP, and the whole recovery loop in headless Chromium."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import aiohttp
import pytest

from statemachine.domain import Plan
from tests.ui.cdp import CHROMIUM, Chromium
from tests.ui.conftest import ADMIN, API_TOKENS, ARTIFACTS, INCOMPLETE, SCOPED, StackFactory, UiStack
from tests.ui.test_status_browser import open_status_page

PHONE = "5515981121710"


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"operador:{token}".encode()).decode()}


async def csrf_of(session: aiohttp.ClientSession, stack: UiStack, token: str = ADMIN) -> str:
    async with session.get(f"{stack.http_url}/status", headers=basic(token)) as response:
        html = await response.text()
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "no action forms on the page"
    return match.group(1)


def pairing_requests(stack: UiStack) -> int:
    return len([r for r in stack.sim.requests if r.path == "/instance/pairing-code"])


async def test_actions_need_auth_a_csrf_token_and_the_same_origin(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add(INCOMPLETE, "Loja LITE", behaviour="session_incomplete", plan=Plan.LITE)
    url = f"{stack.http_url}/status/instances/{INCOMPLETE}/pairing-code"
    origin = {"Origin": stack.http_url}
    async with aiohttp.ClientSession() as session:
        token = await csrf_of(session, stack)
        form = {"csrf": token, "phone": PHONE}
        async with session.post(url, data=form, headers=origin) as response:
            assert response.status == 401  # no credentials
        async with session.post(url, data={"phone": PHONE}, headers={**basic(ADMIN), **origin}) as response:
            assert response.status == 403
            assert "formulário expirado ou de outra origem" in await response.text()
        async with session.post(url, data={**form, "csrf": "0" * 64}, headers={**basic(ADMIN), **origin}) as response:
            assert response.status == 403
        evil = {**basic(ADMIN), "Origin": "https://evil.example"}
        async with session.post(url, data=form, headers=evil) as response:
            assert response.status == 403
        cross = {**basic(ADMIN), "Sec-Fetch-Site": "cross-site"}
        async with session.post(url, data=form, headers=cross) as response:
            assert response.status == 403
        async with session.post(url, json=form, headers={**basic(ADMIN), **origin}) as response:
            assert response.status == 403  # not a form post
        assert pairing_requests(stack) == 0  # nothing reached W-API

        async with session.post(url, data=form, headers={**basic(ADMIN), **origin}) as response:
            assert response.status == 200
            html = await response.text()
        code = re.search(r'<output id="pairing-code">([A-Z0-9-]+)</output>', html)
        assert code
        assert 'lang="pt-BR"' in html
        assert "Próximo passo" in html
        assert pairing_requests(stack) == 1

        # A token scoped to this instance may act on it; its CSRF token is its own.
        scoped = await csrf_of(session, stack, SCOPED)
        assert scoped != token
        async with session.post(url, data=form, headers={**basic(SCOPED), **origin}) as response:
            assert response.status == 403
        bad_phone = {"csrf": scoped, "phone": "12"}
        async with session.post(url, data=bad_phone, headers={**basic(SCOPED), **origin}) as response:
            assert response.status == 400
            assert "phone_number" in await response.text()
        for secret in stack.secrets:
            assert secret not in html


@pytest.mark.parametrize("typed", ["15 98112-1710", "(15) 98112-1710"])
async def test_the_pairing_form_sends_a_national_number_with_its_country_code(
    make_stack: StackFactory, typed: str
) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add(INCOMPLETE, "Loja LITE", behaviour="session_incomplete", plan=Plan.LITE)
    url = f"{stack.http_url}/status/instances/{INCOMPLETE}/pairing-code"
    headers = {**basic(ADMIN), "Origin": stack.http_url}
    async with aiohttp.ClientSession() as session:
        form = {"csrf": await csrf_of(session, stack), "phone": typed}
        async with session.post(url, data=form, headers=headers) as response:
            assert response.status == 200, await response.text()
        refused = {**form, "phone": "0000000000000"}
        async with session.post(url, data=refused, headers=headers) as response:
            assert response.status == 400
            assert "phone_number" in await response.text()
    sent = [r.query["phoneNumber"] for r in stack.sim.requests if r.path == "/instance/pairing-code"]
    assert sent == [PHONE]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Debian's chromium at {CHROMIUM}")
async def test_status_page_drives_the_recovery_loop_in_chromium(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add(INCOMPLETE, "Loja LITE", behaviour="session_incomplete", plan=Plan.LITE)
    with pytest.raises(Exception):  # noqa: B017, PT011 - blocked: SESSION_INCOMPLETE, stored FAILED
        await stack.send_text(INCOMPLETE, "antes", ADMIN)
    card = f"document.querySelector('[data-instance-id=\"{INCOMPLETE}\"]')"
    browser = await Chromium.launch(CHROMIUM, tmp_path / "profile")
    try:
        page, _challenges, problems = await open_status_page(browser, f"{stack.http_url}/status", ADMIN)
        await page.wait_for("document.getElementById('live')?.dataset.live === 'live'", 15, "the live stream")
        await page.wait_for(f"{card}?.dataset.state === 'SESSION_INCOMPLETE'", what="session incomplete card")
        assert await page.evaluate(f"!!{card}.querySelector('form[data-action=pairing-code]')")
        assert (
            await page.evaluate(f"{card}.querySelector('form[data-action=pairing-code] button').textContent")
            == "Código de pareamento"
        )
        await page.screenshot(ARTIFACTS / "status-actions-1-incomplete.png")

        await page.evaluate(
            f"(() => {{ const f = {card}.querySelector('form[data-action=pairing-code]');"
            f" f.querySelector('input[name=phone]').value = '{PHONE}'; f.requestSubmit(); return true; }})()"
        )
        code = await page.wait_for("document.getElementById('pairing-code')?.textContent", what="the pairing code")
        assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", code)
        assert await page.evaluate("document.getElementById('state').dataset.reason") == "PAIRING_IN_PROGRESS"
        assert code in await page.evaluate("document.getElementById('next-step').textContent")
        await page.wait_for("document.readyState === 'complete'", what="the result page loaded")
        await page.screenshot(ARTIFACTS / "status-actions-2-pairing-code.png")

        await stack.sim.type_pairing_code(INCOMPLETE, code)  # the operator types it on the phone
        await page.evaluate("document.getElementById('back').click()")
        await page.wait_for(f"{card}?.dataset.state === 'CONNECTED'", 15, "the card Online after pairing")
        retry = "document.querySelector('#messages form[data-action=retry]')"
        await page.wait_for(f"!!{retry}", what="a retry button on the blocked message")
        await page.evaluate(f"{retry}.requestSubmit()")
        state = await page.wait_for("document.getElementById('retried')?.dataset.state", what="the retry answer")
        assert state in ("SENT", "DELIVERED", "READ")
        await page.wait_for("document.readyState === 'complete'", what="the result page loaded")
        shot = await page.screenshot(ARTIFACTS / "status-actions-3-retried.png")
        assert shot.stat().st_size > 5_000
        assert problems == []  # no script error, no CSP violation (form-action 'self')
    finally:
        await browser.close()
