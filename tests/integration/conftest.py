from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.harness import Harness, start_harness, stop_harness


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url)
    try:
        yield harness
    finally:
        await stop_harness(harness)
