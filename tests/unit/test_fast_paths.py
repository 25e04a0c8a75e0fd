"""The hand-made fast paths of the hot path give exactly what the library calls they replace."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

from adapters.persistence.history import history_json as _history_to_json
from services.app.content import content_to_dict
from services.observability.metrics import FastCounter
from services.rpc.mapping import ts
from statemachine.domain import (
    Contact,
    Document,
    Location,
    Media,
    MessageKind,
    MessageState,
    OutboundMessage,
    Reaction,
    StateChange,
    Text,
)

aware = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(timezone(timedelta(hours=-3)))
)


@given(aware)
def test_timestamp_conversion_matches_protobuf(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    assert ts(value) == expected
    assert ts(value.replace(tzinfo=None)) == Timestamp(
        seconds=expected.seconds - 3 * 3600, nanos=expected.nanos
    )  # naive means UTC


def test_content_copy_matches_asdict_for_every_kind() -> None:
    contents: list[Text | Media | Document | Location | Contact | Reaction] = [
        Text("olá"),
        Media("https://x/y.jpg", "c", "image/jpeg"),
        Document("https://x/y.pdf", "y.pdf", "c", "application/pdf", "pdf"),
        Location(-23.5, -46.6, "n", "a"),
        Contact("Ana", "5511999990000", "b"),
        Reaction("👍", "3EB0ABC"),
    ]
    for content in contents:
        stored = content_to_dict(OutboundMessage(MessageKind.TEXT, "5511999990000", content))
        assert stored["content"] == asdict(content)


def test_history_text_is_the_json_list_postgres_appends_to() -> None:
    at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    history = [
        StateChange("", MessageState.PENDING, "CREATED", "send", at),
        StateChange(MessageState.PENDING, MessageState.SENT, "PROVIDER_ACCEPTED", "send", at, applied=True),
    ]
    text = _history_to_json(history)
    assert json.loads(text) == [
        {"from": "", "to": "PENDING", "reason": "CREATED", "source": "send", "at": at.isoformat(), "applied": True},
        {
            "from": "PENDING",
            "to": "SENT",
            "reason": "PROVIDER_ACCEPTED",
            "source": "send",
            "at": at.isoformat(),
            "applied": True,
        },
    ]
    assert _history_to_json([]) == "[]"
    assert text == json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=True)


def test_fast_counter_exports_cumulative_totals_per_attribute_set() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    counter = FastCounter(meter, "wapiguard.sends", "d")
    counter.add(1, {"outcome": "blocked", "reason": "SESSION_INCOMPLETE"})
    counter.add(2, {"reason": "SESSION_INCOMPLETE", "outcome": "blocked"})  # same set, other order
    counter.add(1, {"outcome": "sent", "reason": ""})

    def totals() -> dict[tuple[tuple[str, str], ...], float]:
        data = reader.get_metrics_data()
        assert data is not None
        (metric,) = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
        assert isinstance(metric.data, Sum)
        assert metric.data.is_monotonic
        return {
            tuple(sorted((str(k), str(v)) for k, v in (p.attributes or {}).items())): p.value
            for p in metric.data.data_points
        }

    assert totals() == {
        (("outcome", "blocked"), ("reason", "SESSION_INCOMPLETE")): 3,
        (("outcome", "sent"), ("reason", "")): 1,
    }
    counter.add(1, {"outcome": "sent", "reason": ""})
    assert totals()[(("outcome", "sent"), ("reason", ""))] == 2


def test_the_fast_lane_binds_every_messages_column_once_by_name() -> None:
    from adapters.persistence import pg_fast
    from adapters.persistence.rows import message_values as _message_values
    from adapters.persistence.schema import messages
    from tests.records import message_record

    names = [name for name, _ in pg_fast.MESSAGE_COLUMNS]
    assert sorted(names) == sorted(c.name for c in messages.c)
    assert sorted(_message_values(message_record(id="m")).keys()) == sorted(names)
