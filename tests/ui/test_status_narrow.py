"""The status page on a phone (390 px wide, headless Chromium): instances that need attention come
first, and every column of the tables (the reason, the Retry button) is on the screen, not cut off."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from statemachine.domain import Plan
from tests.ui.cdp import CHROMIUM, Chromium, Page
from tests.ui.conftest import ARTIFACTS, AVENTURA, INCOMPLETE, RECIPIENT, StackFactory, UiStack

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver); CI installs it",
)

WIDTH = 390
# Each table cell's box, and what it holds: the test checks what an operator's eye would.
BOXES = """[...document.querySelectorAll('#messages tbody tr')].map(tr => [...tr.children].map(td => {
  const r = td.getBoundingClientRect();
  return {left: r.left, right: r.right, width: r.width, text: td.textContent.trim(),
          button: !!td.querySelector('button')};
}))"""


async def open_page(browser: Chromium, url: str, width: int) -> Page:
    page = await browser.new_page()
    for domain in ("Runtime", "Page"):
        await page.send(f"{domain}.enable")
    await page.send(
        "Emulation.setDeviceMetricsOverride", width=width, height=844, deviceScaleFactor=1, mobile=width < 600
    )
    await page.send("Page.navigate", url=url)
    await page.wait_for("document.getElementById('live')?.dataset.live === 'live'", 15, "the live event stream")
    return page


async def failed_message(stack: UiStack) -> None:
    """A send through the SESSION_INCOMPLETE instance: refused, and stored FAILED."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.send_text(INCOMPLETE, "blocked-1")
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_attention_first_and_nothing_cut_off_at_390_px(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack()
    # The healthy instance's id sorts first; the page must still put the broken one on top.
    await stack.add(AVENTURA, "Aventura")
    await stack.add(INCOMPLETE, "Loja LITE", behaviour="session_incomplete", plan=Plan.LITE)
    await failed_message(stack)
    assert AVENTURA < INCOMPLETE
    browser = await Chromium.launch(CHROMIUM, tmp_path / "profile")
    try:
        page = await open_page(browser, f"{stack.http_url}/status?lang=en", WIDTH)
        order = await page.evaluate(
            "[...document.querySelectorAll('#instances [data-instance-id]')].map(c => c.id || c.dataset.instanceId)"
        )
        assert order == [INCOMPLETE, AVENTURA]
        await page.wait_for("document.querySelectorAll('#messages tbody tr').length === 1", what="the failed message")
        await page.screenshot(ARTIFACTS / "status-page-390px.png")

        # No sideways scrolling of the page, and every cell of the message row inside the screen.
        assert await page.evaluate("document.documentElement.scrollWidth") <= WIDTH
        [cells] = await page.evaluate(BOXES)
        assert all(c["width"] > 0 for c in cells), cells
        assert all(c["left"] >= 0 and c["right"] <= WIDTH for c in cells), cells
        texts = " ".join(c["text"] for c in cells)
        assert "Instance is connected without a valid session" in texts  # the reason
        assert any(c["button"] for c in cells)  # Retry
        assert RECIPIENT not in texts
        # Each stacked cell says which column it is.
        labels = await page.evaluate(
            "[...document.querySelectorAll('#messages tbody td')].map(td => getComputedStyle(td, '::before').content)"
        )
        assert '"Reason"' in labels

        wide = await open_page(browser, f"{stack.http_url}/status?lang=en", 1280)
        # On a wide screen the table stays a table: one row per message.
        heights = await wide.evaluate(BOXES)
        assert len({round(c["left"]) for c in heights[0]}) == len(heights[0])
        await wide.screenshot(ARTIFACTS / "status-page-1280px.png")
    finally:
        await browser.close()
