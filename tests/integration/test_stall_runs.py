"""The sweep's stall check decides many instances in one read and stalls them in one transaction:
only an instance whose newest stuck messages have no delivery after them, and none of the
messages stuck before its latest stall ended."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.store import Repository
from adapters.wapi.webhooks import parse_webhook
from services.app.jobs import lift_contradicted_stalls, stall_stuck_runs
from statemachine.domain import InstanceState, MessageState, Plan, Reason, StateChange
from statemachine.instance_machine import InstanceTrigger
from tests.records import message_record

OLD = datetime.now(UTC) - timedelta(hours=1)


async def _sent(repo: Repository, instance_id: str, n: int, at: datetime) -> None:
    await repo.insert_message(
        message_record(
            id=f"{instance_id}-m{n}",
            instance_id=instance_id,
            state=MessageState.SENT,
            provider_message_id=f"{instance_id}-P{n}",
            idempotency_key=f"{instance_id}-k{n}",
            at=at,
            sent_at=at,
            history=[StateChange(MessageState.PENDING, MessageState.SENT, "PROVIDER_ACCEPTED", "send", at)],
            version=2,
        )
    )


async def test_one_check_stalls_exactly_the_instances_with_a_stuck_run(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine)
    try:
        for name in ("I-A", "I-B", "I-C"):
            await repo.upsert_instance(name, name, "tok", Plan.LITE)
            await repo.apply_instance_trigger(
                name, InstanceTrigger.REPORT_CONNECTED, source="probe", new_phone="5511999990000"
            )
            for n in range(3):
                await _sent(repo, name, n, OLD + timedelta(seconds=n))
        # I-B delivered something after its stuck messages were sent: no run.
        await _sent(repo, "I-B", 9, datetime.now(UTC))
        body = json.dumps(
            {"event": "webhookStatus", "instanceId": "I-B", "messageId": "I-B-P9", "status": "delivered"}
        ).encode()
        await repo.ingest(parse_webhook(body), body, {}, datetime.now(UTC))
        # I-C was stalled and cleared by an operator since: its old stuck messages no longer count.
        await repo.apply_instance_trigger("I-C", InstanceTrigger.REPORT_DELIVERY_STALLED, source="sweeper")
        await repo.apply_instance_trigger("I-C", InstanceTrigger.CLEAR_STALL, source="operator:test")

        assert len(await repo.mark_stuck(datetime.now(UTC) - timedelta(minutes=5))) == 9

        changes = await stall_stuck_runs(repo, ["I-A", "I-B", "I-C"], 3)
        assert [(c.instance.instance_id, c.decision.to_state, c.decision.reason) for c in changes] == [
            ("I-A", InstanceState.DEGRADED, Reason.DELIVERY_STALLED.value)
        ]
        assert await stall_stuck_runs(repo, ["I-A", "I-B", "I-C"], 3) == []  # already stalled: no new change
        states = {i.instance_id: (i.state, i.reason) for i in await repo.list_instances()}
        assert states["I-A"] == (InstanceState.DEGRADED, Reason.DELIVERY_STALLED.value)
        assert states["I-B"][0] is InstanceState.CONNECTED
        assert states["I-C"][0] is InstanceState.CONNECTED
        history = await repo.instance_history("I-A")
        assert [(h.to_state, h.source) for h in history[:1]] == [(InstanceState.DEGRADED.value, "sweeper")]
    finally:
        await repo.aclose()
        await engine.dispose()


async def test_a_delivery_that_raced_the_stall_lifts_it_at_the_next_sweep(database_url: str) -> None:
    """The delivery is written while the stall is being decided: it sees no stall to lift, the stall
    does not see it. The next sweep lifts that stall; a stall whose last delivery is older stays."""
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine)
    try:
        for name in ("R-RACED", "R-OLD"):
            await repo.upsert_instance(name, name, "tok", Plan.LITE)
            await repo.apply_instance_trigger(
                name, InstanceTrigger.REPORT_CONNECTED, source="probe", new_phone="5511999990000"
            )
        now = datetime.now(UTC)
        for name, received in (("R-RACED", now), ("R-OLD", now - timedelta(minutes=5))):
            await _sent(repo, name, 1, received - timedelta(seconds=1))
            body = json.dumps(
                {"event": "webhookStatus", "instanceId": name, "messageId": f"{name}-P1", "status": "delivered"}
            ).encode()
            await repo.ingest(parse_webhook(body), body, {}, received)
            # The racing stall commits after the delivery (which saw a CONNECTED instance).
            await repo.apply_instance_trigger(name, InstanceTrigger.REPORT_DELIVERY_STALLED, source="sweeper")

        lifted = await lift_contradicted_stalls(repo)

        assert [(c.instance.instance_id, c.decision.to_state) for c in lifted] == [("R-RACED", InstanceState.CONNECTED)]
        states = {i.instance_id: (i.state, i.reason) for i in await repo.list_instances()}
        assert states["R-RACED"][0] is InstanceState.CONNECTED
        assert states["R-OLD"] == (InstanceState.DEGRADED, Reason.DELIVERY_STALLED.value)
        assert await lift_contradicted_stalls(repo) == []  # once
        history = await repo.instance_history("R-RACED")
        assert (history[0].to_state, history[0].source) == (InstanceState.CONNECTED.value, "sweeper")
    finally:
        await repo.aclose()
        await engine.dispose()
