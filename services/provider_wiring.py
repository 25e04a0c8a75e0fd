"""Composition of the per-instance provider registry: the three clients and their store."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.evolution import webhooks as evolution_webhooks
from adapters.evolution.client import EvolutionProvider
from adapters.persistence.providers import InstanceProviders
from adapters.zapi.client import ZapiProvider
from services.app.provider_reconcile import Ingest, StatusPuller
from services.app.providers import ProviderRegistry
from statemachine.ports import Provider
from statemachine.providers import ProviderKind
from statemachine.store_ports import StatusPullStore


def build_registry(wapi: Provider, engine: AsyncEngine | None, *, zapi_base_url: str = "") -> ProviderRegistry:
    """W-API (the given client: production or the simulator), Z-API and Evolution over HTTP.
    `zapi_base_url` points Z-API elsewhere (the simulator); an instance's own base URL wins."""
    zapi = ZapiProvider(zapi_base_url) if zapi_base_url else ZapiProvider()
    clients = {ProviderKind.WAPI: wapi, ProviderKind.ZAPI: zapi, ProviderKind.EVOLUTION: EvolutionProvider()}
    return ProviderRegistry(clients, InstanceProviders(engine) if engine is not None else None)


def status_puller(repo: StatusPullStore, registry: ProviderRegistry, ingest: Ingest, *, timeout: float) -> StatusPuller:
    """Missed-status reconciliation for the providers that keep statuses (Evolution)."""
    return StatusPuller(repo, registry, ingest, {ProviderKind.EVOLUTION: evolution_webhooks.parse}, timeout=timeout)
