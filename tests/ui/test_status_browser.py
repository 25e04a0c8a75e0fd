"""The status page in headless Chromium (driven over the DevTools protocol), following one instance live:
Online → Sessão incompleta → Online → Entrega parada, without a reload, behind HTTP Basic auth."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from statemachine.domain import Plan
from tests.ui.cdp import CHROMIUM, CDPError, Chromium, Page
from tests.ui.conftest import (
    ADMIN,
    API_TOKENS,
    ARTIFACTS,
    AVENTURA,
    INCOMPLETE,
    MASKED,
    RECIPIENT,
    StackFactory,
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver); CI installs it",
)

CARD = f"document.querySelector('[data-instance-id=\"{AVENTURA}\"]')"
LABEL = f"{CARD}?.querySelector('[data-role=label]')?.textContent"
STATE = f"{CARD}?.dataset.state"
# Remembers every label the card shows, and marks this document: a reload would lose both.
WATCH = f"""(() => {{
  window.__sameDocument = true;
  window.__labels = [];
  const read = () => {{
    const text = {LABEL};
    if (text && window.__labels[window.__labels.length - 1] !== text) window.__labels.push(text);
  }};
  read();
  new MutationObserver(read).observe(document.getElementById('instances'),
    {{childList: true, subtree: true, characterData: true}});
  return true;
}})()"""


async def open_status_page(browser: Chromium, url: str, password: str) -> tuple[Page, list[str], list[str]]:
    """A page that answers the Basic challenge like an operator typing a token, in a pt-BR browser."""
    page = await browser.new_page()
    challenges: list[str] = []
    problems: list[str] = []

    async def paused(params: dict[str, Any]) -> None:
        with contextlib.suppress(CDPError):
            await page.send("Fetch.continueRequest", requestId=params["requestId"])

    async def auth(params: dict[str, Any]) -> None:
        challenges.append(params["authChallenge"]["scheme"] + " " + params["authChallenge"]["realm"])
        answer = {"response": "ProvideCredentials", "username": "operador", "password": password}
        with contextlib.suppress(CDPError):
            await page.send("Fetch.continueWithAuth", requestId=params["requestId"], authChallengeResponse=answer)

    async def exception(params: dict[str, Any]) -> None:
        problems.append(f"exception: {params['exceptionDetails'].get('text')}")

    async def log_entry(params: dict[str, Any]) -> None:
        entry = params["entry"]
        if entry.get("level") == "error" or entry.get("source") == "security":
            problems.append(f"{entry.get('source')}: {entry.get('text')}")

    page.on("Fetch.requestPaused", paused)
    page.on("Fetch.authRequired", auth)
    page.on("Runtime.exceptionThrown", exception)
    page.on("Log.entryAdded", log_entry)
    await page.send("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])
    for domain in ("Runtime", "Log", "Network", "Page"):
        await page.send(f"{domain}.enable")
    await page.send("Network.setExtraHTTPHeaders", headers={"Accept-Language": "pt-BR,pt;q=0.9,en;q=0.5"})
    await page.send("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)
    await page.send("Page.navigate", url=url)
    return page, challenges, problems


async def test_status_page_follows_an_instance_live(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack(api_tokens=API_TOKENS, stuck_after=0.2)
    await stack.add(AVENTURA, "Aventura")
    await stack.add(INCOMPLETE, "Loja LITE", behaviour="session_incomplete", plan=Plan.LITE)
    browser = await Chromium.launch(CHROMIUM, tmp_path / "profile")
    try:
        page, challenges, problems = await open_status_page(browser, f"{stack.http_url}/status", ADMIN)
        await page.wait_for("document.getElementById('live')?.dataset.live === 'live'", 15, "the live event stream")
        assert await page.evaluate("document.documentElement.lang") == "pt-BR"
        assert await page.evaluate(LABEL) == "Online"
        assert await page.evaluate(STATE) == "CONNECTED"
        assert await page.evaluate("document.getElementById('live').textContent") == "Ao vivo"
        assert await page.evaluate(WATCH)
        await page.screenshot(ARTIFACTS / "status-page-1-online.png")

        # The session loses its phone: a webhook through the bridge; the card follows, no reload.
        await stack.sim.emit(AVENTURA, "connected_without_phone")
        await page.wait_for(f"{LABEL} === 'Sessão incompleta'", what="'Sessão incompleta'")
        assert await page.evaluate(STATE) == "SESSION_INCOMPLETE"
        assert await page.evaluate(f"{CARD}.classList.contains('tone-orange')")
        assert "Instância conectada sem sessão válida" in await page.evaluate(f"{CARD}.textContent")
        await page.screenshot(ARTIFACTS / "status-page-2-session-incomplete.png")

        # Reconnected with a phone, then the session silently stalls: W-API accepts, nothing arrives.
        await stack.sim.emit(AVENTURA, "connected")
        await page.wait_for(f"{LABEL} === 'Online'", what="'Online' again")
        stack.sim.set_behaviour(AVENTURA, "silent_stall")
        for i in range(3):
            await stack.send_text(AVENTURA, f"stall-{i}", ADMIN)
        await asyncio.sleep(0.3)
        assert len(await stack.app.jobs.sweep_once()) == 3
        await page.wait_for(f"{LABEL} === 'Entrega parada'", what="'Entrega parada'")
        assert await page.evaluate(STATE) == "DEGRADED"
        assert await page.evaluate(f"{CARD}.classList.contains('tone-red')")
        assert await page.evaluate(f"{CARD}.querySelector('[data-role=stuck]').textContent") == "3"

        # The stuck messages are listed, recipients masked.
        stuck_rows = "document.querySelectorAll('#messages tr[data-stuck=\"true\"]')"
        await page.wait_for(f"{stuck_rows}.length === 3", what="three stuck messages")
        recipients = await page.evaluate(f"[...{stuck_rows}].map(r => r.querySelector('[data-role=to]').textContent)")
        assert recipients == [MASKED] * 3
        assert "Parada (sem entrega)" in await page.evaluate(f"{stuck_rows}[0].textContent")
        assert RECIPIENT not in await page.evaluate("document.documentElement.outerHTML")
        latest = "document.querySelector('#changes tbody tr')"
        assert await page.evaluate(f"{latest}.dataset.toState") == "DEGRADED"
        assert "varredura" in await page.evaluate(f"{latest}.textContent")

        # Same document all along, and the card showed each state in turn.
        assert await page.evaluate("window.__sameDocument") is True
        labels = await page.evaluate("window.__labels")
        assert labels == ["Online", "Sessão incompleta", "Online", "Entrega parada"]
        assert await page.evaluate("document.getElementById('live').dataset.live") == "live"
        assert await page.evaluate("document.querySelector('#updated time').textContent") in ("agora", "há 1 s")
        assert challenges
        assert challenges[0].lower() == "basic wapi-guard"
        assert problems == []  # no script error, no CSP violation
        shot = await page.screenshot(ARTIFACTS / "status-page.png")
        assert shot.stat().st_size > 10_000
    finally:
        await browser.close()


async def test_an_instance_without_confirmed_webhooks_is_not_online_on_the_page(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """Connected, but W-API's webhooks were never configured (no --public-url) and no receipt came:
    not 'Online' but a badge saying delivery cannot be confirmed, with the next step; the first
    receipts prove the webhooks wired and the card reads 'Online'."""
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add(AVENTURA, "Aventura", wired=False)
    browser = await Chromium.launch(CHROMIUM, tmp_path / "profile")
    try:
        page, _challenges, problems = await open_status_page(browser, f"{stack.http_url}/status", ADMIN)
        await page.wait_for("document.getElementById('live')?.dataset.live === 'live'", 15, "the live event stream")
        assert await page.evaluate(LABEL) == "Online, entrega sem confirmação"
        assert await page.evaluate(STATE) == "CONNECTED"
        assert await page.evaluate(f"{CARD}.dataset.reason") == "WEBHOOKS_UNCONFIGURED"
        assert await page.evaluate(f"{CARD}.classList.contains('tone-orange')")
        step = await page.evaluate(f"{CARD}.querySelector('[data-role=\"next-step\"]')?.textContent")
        assert step is not None
        assert f"wapi-guard webhooks configure {AVENTURA}" in step
        assert "/webhooks/wapi/<WAPIGUARD_WEBHOOK_SECRET>" in step
        sends = await page.evaluate(f"{CARD}.querySelector('[data-role=sends]').textContent")
        assert sends == "liberados, sem confirmação de entrega"
        count = "document.querySelector('[data-count=\"{}\"] strong').textContent"
        assert (await page.evaluate(count.format("online")), await page.evaluate(count.format("attention"))) == (
            "0",
            "1",
        )
        assert stack.secret not in await page.evaluate("document.documentElement.outerHTML")
        await page.screenshot(ARTIFACTS / "status-page-webhooks-unconfigured.png")

        sent = await stack.send_text(AVENTURA, "first", ADMIN)  # sends pass by default
        assert sent.provider_message_id
        await stack.app.instances.flush_touches_once()

        async def reloaded_label() -> str:
            await page.send("Page.reload")
            await page.wait_for(f"{CARD} !== null", 15, "the instance card after reload")
            return str(await page.evaluate(LABEL))

        for _ in range(20):  # the simulator's delivery receipt arrives within ~0.1 s
            if await reloaded_label() == "Online":
                break
            await asyncio.sleep(0.25)
            await stack.app.instances.flush_touches_once()
        assert await page.evaluate(LABEL) == "Online"
        assert await page.evaluate(f"{CARD}.dataset.webhooks") == "RECEIPTS"
        assert await page.evaluate(f"{CARD}.querySelector('[data-role=\"next-step\"]')") is None
        assert (await page.evaluate(count.format("online")), await page.evaluate(count.format("attention"))) == (
            "1",
            "0",
        )
        assert problems == []
    finally:
        await browser.close()
