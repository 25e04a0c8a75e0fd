"""/metrics names every instance in its labels: behind the status page's auth unless opened."""

from __future__ import annotations

import base64

import httpx

from tests.ui.conftest import ADMIN, API_TOKENS, AVENTURA, SCOPED, StackFactory


async def scrape(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.get(f"{url}/metrics", headers=headers or {})


async def test_metrics_need_an_unscoped_token_when_auth_is_on(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add(AVENTURA, "Aventura")

    anonymous = await scrape(stack.http_url)
    assert anonymous.status_code == 401
    assert "www-authenticate" in anonymous.headers
    assert AVENTURA not in anonymous.text
    assert (await scrape(stack.http_url, {"Authorization": "Bearer not-a-token-of-ours"})).status_code == 401

    # A token scoped to one instance would see the others' ids in the labels.
    assert (await scrape(stack.http_url, {"Authorization": f"Bearer {SCOPED}"})).status_code == 403

    scraped = await scrape(stack.http_url, {"Authorization": f"Bearer {ADMIN}"})
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert "wapiguard_" in scraped.text
    basic = base64.b64encode(f"prometheus:{ADMIN}".encode()).decode()
    assert (await scrape(stack.http_url, {"Authorization": f"Basic {basic}"})).status_code == 200


async def test_open_metrics_flag_serves_scrapers_without_a_token(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS, metrics_open=True)
    scraped = await scrape(stack.http_url)
    assert scraped.status_code == 200
    assert "wapiguard_" in scraped.text
    # Only /metrics is opened: the status page still wants a token.
    async with httpx.AsyncClient(timeout=5.0) as client:
        assert (await client.get(f"{stack.http_url}/status/api/snapshot")).status_code == 401


async def test_metrics_stay_open_when_the_api_itself_is_open(make_stack: StackFactory) -> None:
    stack = await make_stack()
    assert (await scrape(stack.http_url)).status_code == 200
