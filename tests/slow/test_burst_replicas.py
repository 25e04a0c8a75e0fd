"""Protect the number, end to end on two replicas (issue "protect the number": its done-when).

Two `wapi-guard serve` processes on one PostgreSQL database, started with a fast warm-up policy for
new numbers (the serve flags); the instance is registered with `new_number`, healthy with a phone at
the simulator. Then, alternating the replicas:

1. a burst to 200 new recipients without a hold: every refusal is RESOURCE_EXHAUSTED with the
   policy's reason and a RetryInfo, nothing refused reaches the provider, each accepted send reaches
   it once, and the distinct new recipients sent stay within day 0's budget;
2. a burst with `hold_for`: what fits in the day's remaining budget goes out over time at the
   policy's pace, each exactly once (the simulator's record), the feed (ListEvents) shows
   HELD → PENDING → SENT; the held messages past the budget end FAILED NEW_RECIPIENTS_DAILY at once
   (HELD → FAILED: the budget comes back only the next UTC day, after their hold — docs/holds.md);
3. a send with a 2-minute hold once the budget is spent is refused at once with its RetryInfo.

Together both bursts send exactly day 0's budget of distinct new recipients, never more.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.api.wapiguard.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    instance_health_pb2,
    send_pb2,
)
from tests import polling
from tests.conftest import POSTGRES_URL
from tests.integration.harness import rich_error
from tests.slow.test_replicas import _TEST_DB, PHONE, RPC_TIMEOUT, Fleet, Replica, SlowSimulator, clean_database, report

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BURST_DB = f"wapi_guard_slow_burst_{_TEST_DB}"
INSTANCE = "7K2PQA-BURSTR-CY0001"
INTERVAL = 0.2  # seconds between two sends of the number, shared by both replicas
DAY0_BUDGET = 40  # new recipients on the warm-up's first day (the target, 200, is never reached here)
BURST = 200
HELD_BURST = 60  # more than what the day's budget has left after the first burst
HOLD_FOR = 60  # seconds; the held backlog goes out in about DAY0_BUDGET x INTERVAL
HELD = common_pb2.MESSAGE_STATE_HELD
PENDING = common_pb2.MESSAGE_STATE_PENDING
FAILED = common_pb2.MESSAGE_STATE_FAILED
POLICY_REASONS = {"SEND_INTERVAL", "NEW_RECIPIENTS_HOURLY", "NEW_RECIPIENTS_DAILY"}
STATE = {v: k.removeprefix("MESSAGE_STATE_") for k, v in common_pb2.MessageState.items()}


@pytest_asyncio.fixture(loop_scope="module")
async def sim() -> AsyncIterator[SlowSimulator]:
    simulator = SlowSimulator(delivered_after=0.05, read_after=0.1)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def fleet(tmp_path: Path, sim: SlowSimulator) -> AsyncIterator[Fleet]:
    processes = Fleet(tmp_path, sim)
    try:
        yield processes
    finally:
        await processes.aclose()


def request(i: int, *, hold: int = 0, key: str = "") -> send_pb2.SendMessageRequest:
    msg = send_pb2.SendMessageRequest(
        instance_id=INSTANCE,
        to=f"551598114{i:04d}",
        idempotency_key=key or f"burst-{i}",
        text=send_pb2.TextContent(body=f"Oferta {i}"),
    )
    if hold:
        msg.hold_for.CopyFrom(Duration(seconds=hold))
    return msg


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


async def send(replica: Replica, req: send_pb2.SendMessageRequest) -> common_pb2.Message | grpc.aio.AioRpcError:
    try:
        return await replica.send.SendMessage(req, timeout=RPC_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        return error


def assert_paced(error: grpc.aio.AioRpcError) -> str:
    """A refusal as the policy answers it: RESOURCE_EXHAUSTED, its reason, a RetryInfo."""
    rich = rich_error(error)
    assert rich.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (rich.code, rich.reason)
    assert rich.reason in POLICY_REASONS, rich.reason
    assert retry_delay(error) > 0
    return rich.reason


async def feed(replica: Replica) -> dict[str, list[str]]:
    """Every message's states in the order of the event feed (ListEvents, paged to the head)."""
    stub = events_pb2_grpc.EventServiceStub(replica.channel)
    types = [events_pb2.EVENT_TYPE_MESSAGE_STATE_CHANGED, events_pb2.EVENT_TYPE_MESSAGE_FAILED]
    only = events_pb2.EventFilter(instance_ids=[INSTANCE], types=types)
    paths: dict[str, list[str]] = defaultdict(list)
    page = await stub.ListEvents(events_pb2.ListEventsRequest(from_oldest=True, filter=only, page_size=1000))
    for _ in range(100):  # bounded: a few pages
        for event in page.events:  # a move to FAILED is a message.failed event with its change
            failed = event.WhichOneof("payload") == "message_failed"
            change = event.message_failed.change if failed else event.message_state_changed
            paths[change.message_id].append(STATE[change.to_state])
        if page.caught_up or not page.events:
            break
        page = await stub.ListEvents(
            events_pb2.ListEventsRequest(after_cursor=page.next_cursor, filter=only, page_size=1000)
        )
    return paths


async def test_a_burst_to_new_recipients_on_a_new_number_is_paced_by_its_warm_up(
    fleet: Fleet, sim: SlowSimulator
) -> None:
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL only: set WAPIGUARD_TEST_DATABASE_URL")
    url = await clean_database(BURST_DB)
    warm_up = (
        *("--new-number-min-interval", str(INTERVAL), "--new-number-jitter", "0", "--new-number-new-per-hour", "0"),
        *("--new-number-warmup-start", str(DAY0_BUDGET), "--new-number-warmup-target", "200"),
        *("--new-number-warmup-days", "10", "--hold-interval", "0.05"),
    )
    a, b = await fleet.start_many(url, ["burst-a", "burst-b"], *warm_up)
    sim.add_instance(INSTANCE, "tok-burst-0123456789abcdef", "healthy", PHONE)
    registered = await a.instances.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(
            instance_id=INSTANCE, token="tok-burst-0123456789abcdef", plan=common_pb2.PLAN_PRO, new_number=True
        ),
        timeout=RPC_TIMEOUT,
    )
    assert registered.state == common_pb2.INSTANCE_STATE_CONNECTED

    async def policy_on(replica: Replica) -> common_pb2.SendBudgets | None:
        health = await replica.instances.GetInstanceHealth(
            instance_health_pb2.GetInstanceHealthRequest(instance_id=INSTANCE), timeout=RPC_TIMEOUT
        )
        budgets = health.send_budgets
        seen[replica.name] = budgets
        return budgets if budgets.policy_active and budgets.new_recipients_today_budget == DAY0_BUDGET else None

    seen: dict[str, common_pb2.SendBudgets] = {}

    for replica in (a, b):  # both replicas know the number is on day 0 of its warm-up
        what = f"the warm-up policy on {replica.name} (last seen: {{}})"
        try:
            budgets = await polling.eventually(functools.partial(policy_on, replica), what, 10.0)
        except AssertionError:
            raise AssertionError(what.format(seen.get(replica.name))) from None
        assert (budgets.warmup_day, budgets.new_recipients_left_today) == (0, DAY0_BUDGET)

    # 1. The burst without a hold, alternating the replicas, all at once.
    answers = await asyncio.gather(*(send((a, b)[i % 2], request(i)) for i in range(BURST)))
    accepted = [m for m in answers if isinstance(m, common_pb2.Message)]
    errors = {i: m for i, m in enumerate(answers) if isinstance(m, grpc.aio.AioRpcError)}
    refused = list(errors)
    refusals = Counter(assert_paced(e) for e in errors.values())
    assert accepted
    assert refused
    assert 0 < len(accepted) < DAY0_BUDGET  # the interval paced the burst; budget is left for step 2
    await asyncio.sleep(0.5)  # the simulator's record of the accepted sends
    first_sends = Counter(str(s["body"]["phone"]) for s in sim.sends(INSTANCE))
    assert first_sends == Counter(m.to for m in accepted)  # each accepted send once, no refused one
    assert not {request(i).to for i in refused} & set(first_sends)
    counted = await policy_on(b)  # both replicas' sends counted in the shared budget
    assert counted is not None
    assert counted.new_recipients_today == len(accepted)
    assert counted.new_recipients_left_today == DAY0_BUDGET - len(accepted)

    # 2. The burst with a hold, to other new recipients: held, then sent at the policy's pace.
    held_answers = await asyncio.gather(
        *(send((a, b)[i % 2], request(BURST + i, hold=HOLD_FOR)) for i in range(HELD_BURST))
    )
    refused_at_once = [m for m in held_answers if isinstance(m, grpc.aio.AioRpcError)]
    assert all(assert_paced(e) == "NEW_RECIPIENTS_DAILY" for e in refused_at_once)  # only once spent
    stored = [m for m in held_answers if isinstance(m, common_pb2.Message)]
    held = [m for m in stored if m.state == HELD]
    assert len(held) >= HELD_BURST // 2  # paced and held, not refused
    assert all(m.history[-1].reason in POLICY_REASONS for m in held)

    async def settled() -> list[common_pb2.Message] | None:
        got = [
            await b.send.GetMessage(send_pb2.GetMessageRequest(message_id=m.id), timeout=RPC_TIMEOUT) for m in stored
        ]
        return got if all(m.state not in (HELD, PENDING) for m in got) else None

    started = datetime.now(UTC)
    final = await polling.eventually(settled, "the held burst settled", HOLD_FOR / 2)  # well within the hold
    drained = (datetime.now(UTC) - started).total_seconds()
    went = [m for m in final if m.state != FAILED]
    ended = [m for m in final if m.state == FAILED]
    assert went
    assert ended
    assert {m.failure_reason for m in ended} == {"NEW_RECIPIENTS_DAILY"}
    assert all("after the hold's expiry" in m.failure_detail for m in ended)
    all_sends = Counter(str(s["body"]["phone"]) for s in sim.sends(INSTANCE))
    assert max(all_sends.values()) == 1  # each exactly once, across both replicas
    assert set(all_sends) - set(first_sends) == {m.to for m in went}  # every SENT one, none else
    assert len(all_sends) == DAY0_BUDGET  # the whole day-0 budget, never more, across both replicas
    times = sorted(m.sent_at.ToDatetime(tzinfo=UTC) for m in went)
    spread = (times[-1] - times[0]).total_seconds()
    # Paced: the admissions are INTERVAL apart; sent_at is stamped at the provider's answer, whose
    # latency varies on a loaded box (the first ones answer amid the burst): one interval of slack.
    # Unpaced, the same sends would all be out within a fraction of a second.
    assert spread >= INTERVAL * (len(times) - 2)

    ended_ids = {m.id for m in ended}

    async def fed() -> dict[str, list[str]] | None:  # the feed shows a change once its horizon passes it
        paths = await feed(a)
        final_seen = all(("FAILED" if m.id in ended_ids else "SENT") in paths[m.id] for m in held)
        return paths if final_seen else None

    paths = await polling.eventually(fed, "every held message's end on the feed", 10.0)
    for m in held:
        path = paths[m.id]
        assert path[0] == "HELD", path
        if m.id in ended_ids:
            assert path == ["HELD", "FAILED"]  # never PENDING, never near the provider
        else:
            assert path.count("SENT") == 1
            assert path[path.index("SENT") - 1] == "PENDING"
            assert "PENDING" in path[: path.index("SENT")]
    assert any(paths[m.id][:3] == ["HELD", "PENDING", "SENT"] for m in held)

    # 3. The day's budget is spent: a 2-minute hold cannot succeed, so it is refused at once.
    await asyncio.sleep(INTERVAL + 0.1)  # past the interval, which the policy checks first
    late = await send(b, request(BURST + HELD_BURST, hold=120))
    assert isinstance(late, grpc.aio.AioRpcError)
    assert assert_paced(late) == "NEW_RECIPIENTS_DAILY"
    assert retry_delay(late) > 120
    report(
        "burst_two_replicas",
        burst=BURST,
        burst_accepted=len(accepted),
        burst_refusals=dict(refusals),
        held_burst=HELD_BURST,
        held=len(held),
        held_refused_at_once=len(refused_at_once),
        held_sent=len(went),
        held_failed=len(ended),
        provider_sends=sum(all_sends.values()),
        day0_budget=DAY0_BUDGET,
        drained_seconds=round(drained, 2),
        held_sent_spread_seconds=round(spread, 2),
    )
