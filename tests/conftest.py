"""Shared fixtures: a real database (SQLite file, or Postgres via WAPIGUARD_TEST_DATABASE_URL)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.schema import metadata

POSTGRES_URL = os.environ.get("WAPIGUARD_TEST_DATABASE_URL", "")


def pytest_report_header(config: pytest.Config) -> str:
    return f"wapi-guard test database: {POSTGRES_URL or 'SQLite (temporary file per test)'}"


_fresh_schema: set[str] = set()


async def reset_postgres(url: str) -> None:
    """Truncates every table; the first time in a run, the schema is rebuilt from the migrations,
    so a database left behind by another checkout (another revision of the same number, or tables
    a later migration creates) cannot fail the run."""
    engine = create_engine(url)
    try:
        if url not in _fresh_schema:
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
            _fresh_schema.add(url)
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
    finally:
        await engine.dispose()


@pytest.fixture
async def database_url(tmp_path: Path) -> AsyncIterator[str]:
    """A clean, migrated database for one test."""
    if POSTGRES_URL:
        await reset_postgres(POSTGRES_URL)
        yield POSTGRES_URL
    else:
        yield f"sqlite+aiosqlite:///{tmp_path / 'wapi-guard-test.db'}"
