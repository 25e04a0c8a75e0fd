"""Composition of the hold (docs/holds.md): its store, its use case wired into the send path, the
dispatcher task, and the wake-up when an instance is CONNECTED again on any replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from adapters.persistence.holds import HoldRepository
from services.app.health import Instances
from services.app.held_counts import HeldCounts
from services.app.holds import Holds
from services.app.sending import Sending
from services.config import Settings
from statemachine.domain import InstanceState

log = logging.getLogger("wapi_guard.holds")


async def start_holds(
    settings: Settings, engine: Any, sending: Sending, instances: Instances
) -> tuple[Holds, asyncio.Task[None]]:
    """The hold, wired and its dispatcher started; the returned task watches reconnections."""
    holds = Holds(
        HoldRepository(engine),
        sending,
        batch=settings.hold_batch,
        interval=settings.hold_interval,
        recheck=timedelta(seconds=settings.hold_recheck),
    )
    sending.holds = holds
    holds.start()
    watcher = asyncio.create_task(_watch_reconnections(instances, holds), name="hold-wake")
    return holds, watcher


def held_counts(engine: Any) -> HeldCounts:
    """The held counts of the lists (ListInstances, the status page): the hold's own table."""
    return HeldCounts(HoldRepository(engine))


async def _watch_reconnections(instances: Instances, holds: Holds) -> None:
    """Every committed instance change (this replica's or another's): CONNECTED wakes its holds."""
    while True:
        try:
            async for event in instances.subscribe():
                if event.instance.state is InstanceState.CONNECTED:
                    holds.wake(event.instance.instance_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("hold wake-up watch failed; restarting", exc_info=True)
            await asyncio.sleep(1.0)


async def stop_holds(holds: Holds, watcher: asyncio.Task[None]) -> None:
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await holds.aclose()
