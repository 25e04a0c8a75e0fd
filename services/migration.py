"""The one way the schema is migrated, next to the composition root: `serve` (unless
--no-migrate), `serve --workers N` (once, in the parent, before the workers start with
--no-migrate) and `wapi-guard migrate` all call `migrate`."""

from __future__ import annotations

from adapters.persistence.db import async_url, create_engine
from adapters.persistence.migrate import upgrade_to_head
from services.config import Settings
from services.rpc.startup import step


async def migrate(settings: Settings, url: str | None = None) -> None:
    """Own engine, no statement timeout: a migration's DDL may legitimately take long. `url`: the
    async URL when the caller already resolved it (otherwise from the settings, with the one-line
    error naming the accepted forms)."""
    url = url or async_url(settings.database_url)
    migrations = create_engine(url, pool_size=1, connect_timeout=settings.db_connect_timeout)
    try:
        await step("migrations", url, settings.db_connect_timeout, upgrade_to_head(migrations))
    finally:
        await migrations.dispose()
