"""Missed-status reconciliation where the provider keeps the statuses (Evolution's
chat/findStatusMessage): for each of an instance's messages still QUEUED or SENT past the stuck
window, the statuses the provider stored go through the normal ingest path (dedupe makes it
idempotent, the machine keeps them forward-only). Evolution drops a status webhook when its own
message row is missing and never re-sends it; this is how such a status still arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from services.app.providers import ProviderRegistry
from statemachine.domain import Credentials, MessageState
from statemachine.ports import IngestResult, StatusReconciliation, WebhookParser
from statemachine.providers import ProviderKind
from statemachine.store_ports import StatusPullStore

log = logging.getLogger("wapi_guard.reconcile")

Ingest = Callable[..., Awaitable[IngestResult]]


@dataclass(slots=True)
class PulledStatuses:
    instance_id: str
    messages: int = 0
    fetched: int = 0
    applied: int = 0
    failed: int = 0


class StatusPuller:
    """One round over every instance of a provider that offers `StatusReconciliation`."""

    def __init__(
        self,
        repo: StatusPullStore,
        registry: ProviderRegistry,
        ingest: Ingest,
        parsers: Mapping[ProviderKind, WebhookParser],
        *,
        timeout: float,
        limit: int = 200,
    ) -> None:
        self.repo = repo
        self.registry = registry
        self.ingest = ingest
        self.parsers = parsers
        self.timeout = timeout
        self.limit = limit

    async def pull(self, instance_id: str = "") -> list[PulledStatuses]:
        results: list[PulledStatuses] = []
        for iid, kind in self.registry.instances_on(tuple(self.parsers)):
            if instance_id and iid != instance_id:
                continue
            client = self.registry.clients.get(kind)
            if not isinstance(client, StatusReconciliation):
                continue
            results.append(await self._one(iid, kind, client))
        return results

    async def _one(self, instance_id: str, kind: ProviderKind, client: StatusReconciliation) -> PulledStatuses:
        result = PulledStatuses(instance_id)
        found = await self.repo.get_instance(instance_id)
        if found is None:
            return result
        creds = self.registry.credentials(Credentials(instance_id, found[1]))
        stuck, _page = await self.repo.list_messages(
            instance_id=instance_id,
            states=(MessageState.QUEUED, MessageState.SENT),
            stuck_only=True,
            page_size=self.limit,
        )
        for msg in stuck:
            if not msg.provider_message_id or msg.state not in (MessageState.QUEUED, MessageState.SENT):
                continue
            result.messages += 1
            bodies = await client.missed_statuses(creds, msg.to, msg.provider_message_id, timeout=self.timeout)
            for body in bodies or []:
                result.fetched += 1
                try:
                    ingested = await self.ingest(
                        body, {"x-wapiguard-replay": "provider-statuses"}, parse=self.parsers[kind]
                    )
                except Exception:
                    result.failed += 1
                    continue
                if not ingested.duplicate and ingested.message_changes:
                    result.applied += 1
        if result.applied:
            log.info(
                "missed statuses pulled from the provider",
                extra={"instance_id": instance_id, "applied": result.applied},
            )
        return result
