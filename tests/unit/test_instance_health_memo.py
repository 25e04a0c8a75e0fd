"""ListInstances builds each InstanceHealth once and rebuilds it when anything it shows changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.app.gateway_config import GatewayConfig
from services.app.health import HealthView, health_view
from services.rpc import mapping
from statemachine.domain import InstanceRecord, InstanceState, Plan

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def view(record: InstanceRecord, locale: str, now: datetime | None = None) -> HealthView:
    return health_view(record, locale, GatewayConfig(), NOW)


def pb(record: InstanceRecord, locale: str) -> object:
    return mapping.instance_pb(record, locale, view(record, locale))


def record(instance_id: str, **changes: object) -> InstanceRecord:
    base = InstanceRecord(
        instance_id=instance_id,
        name=f"Loja {instance_id}",
        plan=Plan.PRO,
        state=InstanceState.CONNECTED,
        reason="PHONE_CONFIRMED",
        phone_number="5511900000000",
        checked_at=NOW,
        last_event_at=NOW,
        state_changed_at=NOW,
        version=2,
        stuck_messages=0,
        webhooks_state="CONFIGURED",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_memo_answers_what_a_fresh_mapping_would() -> None:
    memo = mapping.InstanceHealthMemo()
    records = [record("a"), record("b", stuck_messages=4)]
    first = memo.many(records, "pt-BR", view)
    assert first == [pb(r, "pt-BR") for r in records]
    assert memo.many(records, "pt-BR", view) == first


def test_every_shown_field_change_is_seen() -> None:
    memo = mapping.InstanceHealthMemo()
    memo.many([record("a")], "pt-BR", view)
    changed = [
        record("a", state=InstanceState.SESSION_INCOMPLETE, reason="SESSION_INCOMPLETE"),
        record("a", stuck_messages=7),
        record("a", checked_at=NOW + timedelta(seconds=1)),
        record("a", last_event_at=NOW + timedelta(seconds=1)),
        record("a", name="Outra loja"),
        record("a", phone_number=None),
        record("a", webhooks_state="FAILED"),
        record("a", last_receipt_at=NOW),
        record("a", webhooks_detail="3 of 4 set"),
        record("a", plan=Plan.LITE),
    ]
    for after in changed:
        assert memo.many([after], "pt-BR", view) == [pb(after, "pt-BR")], after


def test_the_locale_is_part_of_what_is_shown() -> None:
    memo = mapping.InstanceHealthMemo()
    stalled = record("a", state=InstanceState.DEGRADED, reason="DELIVERY_STALLED")
    pt = memo.many([stalled], "pt-BR", view)[0]
    en = memo.many([stalled], "en", view)[0]
    assert en.reason_message != pt.reason_message
    assert en == pb(stalled, "en")


def test_instances_no_longer_listed_are_forgotten() -> None:
    memo = mapping.InstanceHealthMemo()
    memo.many([record(f"i{n}") for n in range(10)], "pt-BR", view)
    memo.many([record("i0")], "pt-BR", view)
    assert set(memo._entries) == {"i0"}


def test_the_webhook_verdict_is_part_of_what_is_shown() -> None:
    """The receipt evidence ages: the same record may read differently a day later."""
    memo = mapping.InstanceHealthMemo()
    wired = record("a", webhooks_state="UNCONFIGURED", last_receipt_at=NOW)
    assert memo.many([wired], "pt-BR", view)[0].reason == "PHONE_CONFIRMED"
    later = memo.many(
        [wired], "pt-BR", lambda r, loc, _now: health_view(r, loc, GatewayConfig(), NOW + timedelta(days=2))
    )
    assert (later[0].reason, later[0].can_send, later[0].delivery_confirmable) == ("WEBHOOKS_UNCONFIGURED", True, False)
