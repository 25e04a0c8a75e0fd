"""Which provider each instance lives on: the instances table's provider columns.

Kept out of the per-aggregate stores on purpose: the provider registry
(services/app/providers.py) is its only reader and writer. `client_token` is a secret: it is
read here and handed to the registry, never into a record, a log or an error.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.persistence.schema import instances
from statemachine.providers import ProviderConfig, ProviderKind


def _config(provider: str | None, base_url: str | None, client_token: str | None) -> ProviderConfig:
    try:
        kind = ProviderKind(provider or ProviderKind.WAPI.value)
    except ValueError:
        kind = ProviderKind.WAPI
    return ProviderConfig(kind, base_url or "", client_token or "")


class InstanceProviders:
    """Reads and writes the provider configuration of instances (short transactions), each with
    the row's `version` it was read at: a replica holding an older one reads it again."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self, instance_id: str) -> tuple[ProviderConfig, int] | None:
        query = select(instances.c.provider, instances.c.base_url, instances.c.client_token, instances.c.version).where(
            instances.c.id == instance_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (_config(row.provider, row.base_url, row.client_token), int(row.version))

    async def load_all(self) -> dict[str, tuple[ProviderConfig, int]]:
        """Every instance NOT on W-API (the default needs no entry)."""
        query = select(
            instances.c.id, instances.c.provider, instances.c.base_url, instances.c.client_token, instances.c.version
        ).where(instances.c.provider != ProviderKind.WAPI.value)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {r.id: (_config(r.provider, r.base_url, r.client_token), int(r.version)) for r in rows}

    async def save(self, instance_id: str, config: ProviderConfig) -> int | None:
        """Stores the configuration and bumps the row's version (the other replicas' cue to read
        it again); returns the new version (None: no such instance)."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(instances)
                    .where(instances.c.id == instance_id)
                    .values(
                        provider=config.kind.value,
                        base_url=config.base_url,
                        client_token=config.client_token,
                        version=instances.c.version + 1,
                    )
                    .returning(instances.c.version)
                )
            ).first()
        return None if row is None else int(row.version)
