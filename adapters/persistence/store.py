"""The SQL store: one class per aggregate (each its own module), combined here into the one object
the composition root builds over an engine. No use case sees it whole: each is typed by its own
ports (statemachine/store_ports.py: `SendingStore`, `IngestStore`, `JobsStore`, …).

| module | aggregate |
|---|---|
| `instances.py` | instances, their transitions (the one writer), touches |
| `recovery_audit.py` | operator recovery actions and their limit |
| `messages.py` | message insert (group commit), reads, pages, retry, the version compare-and-set |
| `send_outcomes.py` | PENDING → SENT / FAILED / QUEUED, parked statuses applied after SENT |
| `webhook_events.py` | webhook events and the statuses they carry |
| `delivery_history.py` | the stall test's delivery-history reads |
| `sweeps.py` | stuck marking, crash reconciliation, stuck runs, retention |
| `change_reads.py` | change-log reads (`webhook_store.py` holds the subscriptions) |
| `unit_of_work.py` | `atomically`: one transaction, the aggregates' stores inside it |

Plumbing: `store_base.py` (engine, transactions), `rows.py` (row mappers), `batching.py` (group
commit), `pg_fast.py` (the asyncpg lane's statements and leases), `status_lane.py`, `history.py`.
"""

from __future__ import annotations

from adapters.persistence.change_reads import ChangeReads
from adapters.persistence.delivery_history import DeliveryHistory
from adapters.persistence.instances import InstanceStore
from adapters.persistence.messages import MessageStore
from adapters.persistence.recovery_audit import RecoveryAudit
from adapters.persistence.send_outcomes import SendOutcomes
from adapters.persistence.sweeps import Sweeps
from adapters.persistence.unit_of_work import UnitOfWorkStore
from adapters.persistence.webhook_events import EventStore


class Repository(
    InstanceStore,
    RecoveryAudit,
    MessageStore,
    SendOutcomes,
    EventStore,
    DeliveryHistory,
    Sweeps,
    ChangeReads,
    UnitOfWorkStore,
):
    """Every aggregate's store over one engine (each `__init__`/`aclose` runs once, in MRO order)."""
