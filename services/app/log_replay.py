"""Recovery's replay of the provider's webhook log: what the bridge missed goes through the normal
ingest path (part of Recovery, services/app/recovery.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import datetime, timedelta

from services.app.recovery_types import (
    LOG_MAX_PAGES,
    LOG_PER_PAGE,
    RECONCILE_START_DELAY,
    Reconciliation,
    RecoveryParts,
)
from statemachine.domain import (
    Credentials,
    LoggedEvent,
    MessageRecord,
)
from statemachine.errors import InstanceNotFound, InvalidRequest
from statemachine.validation import validate_instance_id

log = logging.getLogger("wapi_guard.recovery")


class LogReplay(RecoveryParts):
    # --- reconciliation of missed events -----------------------------------------------------

    async def reconcile(self, instance_id: str = "") -> tuple[list[Reconciliation], list[MessageRecord]]:
        """Replays W-API's webhook log since the last stored event, through the normal ingest path:
        dedupe makes it idempotent, and out-of-order statuses are already safe."""
        if instance_id:
            violations = validate_instance_id(instance_id)
            if violations:
                raise InvalidRequest(violations)
            found = await self.repo.get_instance(instance_id)
            if found is None:
                raise InstanceNotFound(instance_id)
            targets = [(instance_id, found[1])]
        else:
            targets = await self.repo.list_credentials()
        results = [await self._reconcile_one(i, token) for i, token in targets]
        if self.pull_statuses is not None:
            await self.pull_statuses(instance_id)
        await self.jobs.sweep_once()
        stuck, _token = await self.messages.list_messages(instance_id=instance_id, stuck_only=True, page_size=200)
        return results, stuck

    async def _reconcile_one(self, instance_id: str, token: str) -> Reconciliation:
        result = Reconciliation(instance_id)
        if self.operations is None:
            result.error = "the provider has no webhook log"
            return result
        since = await self.repo.last_event_received_at(instance_id)
        creds = Credentials(instance_id, token)
        # Newest first: read pages until one holds only events older than the last stored one
        # (with a margin for clock skew) or the log ends. Dedupe drops what is already stored.
        margin = timedelta(minutes=5)
        entries = []
        for page in range(1, LOG_MAX_PAGES + 1):
            got = await self.operations.webhook_logs(
                creds, page=page, per_page=LOG_PER_PAGE, timeout=self.config.action_timeout
            )
            if got.failure is not None:
                result.error = f"{got.failure.value}: {got.detail}"
                break
            result.pages = page
            entries.extend(got.entries)
            if not got.entries or (got.total_pages is not None and page >= got.total_pages):
                break
            if since is not None and _all_older(got.entries, since - margin):
                break
        # Oldest first, as W-API posted them.
        for entry in reversed(entries):
            result.fetched += 1
            # Already stored: skip it here, so a replay never counts as the provider re-posting it.
            if await self.repo.event_stored(self.ingest.parse_webhook(entry.payload).dedupe_key):
                result.duplicates += 1
                continue
            try:
                ingested = await self.ingest.ingest(entry.payload, {"x-wapiguard-replay": entry.log_id or "log"})
            except Exception:
                result.failed += 1
                continue
            if ingested.duplicate:
                result.duplicates += 1
            else:
                result.applied += 1
        if result.applied:
            log.info(
                "missed events replayed from the webhook log",
                extra={"instance_id": instance_id, "applied": result.applied, "duplicates": result.duplicates},
            )
        return result

    async def _reconcile_forever(self) -> None:
        await asyncio.sleep(RECONCILE_START_DELAY)
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.warning("webhook log reconciliation failed", exc_info=True)
            await asyncio.sleep(self.config.reconcile_interval * random.uniform(0.8, 1.2))


def _all_older(entries: list[LoggedEvent], cutoff: datetime) -> bool:
    """Whether every entry of a page was posted before `cutoff` (by its `moment`, when it has one)."""
    for entry in entries:
        try:
            moment = json.loads(entry.payload).get("moment")
        except (ValueError, AttributeError):
            return False
        if not isinstance(moment, int | float) or moment >= cutoff.timestamp():
            return False
    return True
