"""SendService through a real gRPC server and a real database."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import func, select

from adapters.persistence.schema import messages
from services.api.wapiguard.v1 import common_pb2, send_pb2
from statemachine.domain import Reason, SendOutcome
from tests.integration.harness import Harness, rich_error

PT_BR_INCOMPLETE = "Instância conectada sem sessão válida. Reconecte por código de pareamento/telefone."


def text(instance_id: str, body: str = "Olá!", key: str = "", to: str = "5515981121710") -> send_pb2.SendMessageRequest:
    return send_pb2.SendMessageRequest(
        instance_id=instance_id, to=to, idempotency_key=key, text=send_pb2.TextContent(body=body)
    )


async def count_messages(guard: Harness) -> int:
    async with guard.repo.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(messages))).scalar_one())


async def test_send_to_incomplete_session_is_blocked_with_rich_error_and_failed_row(guard: Harness) -> None:
    await guard.register("LITE-4IW93E-MGVYDW", plan=common_pb2.PLAN_LITE)
    await guard.connect("LITE-4IW93E-MGVYDW", phone=None)  # connected, but no phone number

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("LITE-4IW93E-MGVYDW"))

    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "SESSION_INCOMPLETE"
    assert error.domain == "wapiguard.v1"
    assert error.metadata["instance_id"] == "LITE-4IW93E-MGVYDW"
    assert error.metadata["instance_state"] == "SESSION_INCOMPLETE"
    assert error.localized == PT_BR_INCOMPLETE
    assert guard.provider.sends == []  # the provider never saw it

    stored = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=error.metadata["message_id"]))
    assert stored.state == common_pb2.MESSAGE_STATE_FAILED
    assert stored.failure_reason == "SESSION_INCOMPLETE"
    assert stored.provider_message_id == ""
    assert [h.to_state for h in stored.history] == [common_pb2.MESSAGE_STATE_FAILED]
    listed = await guard.send.ListMessages(send_pb2.ListMessagesRequest(instance_id="LITE-4IW93E-MGVYDW"))
    assert [m.state for m in listed.messages] == [common_pb2.MESSAGE_STATE_FAILED]


@pytest.mark.parametrize(
    ("kind", "content"),
    [
        ("image", send_pb2.MediaContent(url="https://cdn.example.com/a.png", caption="c")),
        ("audio", send_pb2.MediaContent(url="https://cdn.example.com/a.ogg")),
        ("video", send_pb2.MediaContent(url="https://cdn.example.com/a.mp4")),
        ("document", send_pb2.DocumentContent(url="https://cdn.example.com/a.pdf", file_name="a.pdf")),
        ("location", send_pb2.LocationContent(latitude=-23.5, longitude=-46.6, name="SP")),
        ("contact", send_pb2.ContactContent(name="Ana", phone="5511988887777")),
    ],
)
async def test_every_send_kind_goes_through_the_preflight(guard: Harness, kind: str, content: object) -> None:
    await guard.register("inc-1")
    await guard.connect("inc-1", phone=None)
    request = send_pb2.SendMessageRequest(instance_id="inc-1", to="5515981121710")
    getattr(request, kind).CopyFrom(content)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(request)
    assert rich_error(caught.value).reason == "SESSION_INCOMPLETE"
    assert guard.provider.sends == []


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([], "HEALTH_UNKNOWN"),
        ([{"event": "webhookDisconnected", "connected": False}], "INSTANCE_DISCONNECTED"),
    ],
)
async def test_unhealthy_states_block_with_their_reason(
    guard: Harness, events: list[dict[str, object]], reason: str
) -> None:
    await guard.register("inst-x")
    for body in events:
        await guard.webhook({**body, "instanceId": "inst-x"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("inst-x"))
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert error.localized  # a pt-BR text a UI can show


async def test_degraded_instance_is_blocked_too(guard: Harness) -> None:
    from statemachine.domain import ProbeOutcome

    await guard.register("deg-1")
    await guard.connect("deg-1")
    guard.provider.probe_result = lambda _i: ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY)
    health = await guard.health.GetInstanceHealth(
        __import__("services.api.wapiguard.v1.instance_health_pb2", fromlist=["x"]).GetInstanceHealthRequest(
            instance_id="deg-1", refresh=True
        )
    )
    assert health.state == common_pb2.INSTANCE_STATE_DEGRADED
    assert health.phone_number == "5511999990000"  # last known phone kept
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("deg-1"))
    assert rich_error(caught.value).reason == "TIMEOUT_OR_GATEWAY"


async def test_healthy_send_is_sent_with_provider_id(guard: Harness) -> None:
    await guard.register("ok-1")
    await guard.connect("ok-1")
    sent = await guard.send.SendMessage(text("ok-1", key="k-1"))
    assert sent.state == common_pb2.MESSAGE_STATE_SENT
    assert sent.provider_message_id.startswith("3EB0")
    assert sent.attempts == 1
    assert [h.to_state for h in sent.history] == [
        common_pb2.MESSAGE_STATE_PENDING,
        common_pb2.MESSAGE_STATE_SENT,
    ]
    assert len(guard.provider.sends) == 1
    instance_id, outbound = guard.provider.sends[0]
    assert (instance_id, outbound.to) == ("ok-1", "5515981121710")


async def test_idempotent_resend_returns_same_message_without_second_call(guard: Harness) -> None:
    await guard.register("ok-2")
    await guard.connect("ok-2")
    first = await guard.send.SendMessage(text("ok-2", key="order-77"))
    again = await guard.send.SendMessage(text("ok-2", key="order-77"))
    assert again.id == first.id
    assert again.provider_message_id == first.provider_message_id
    assert len(guard.provider.sends) == 1
    assert await count_messages(guard) == 1


async def test_racing_requests_with_one_key_make_one_provider_call(guard: Harness) -> None:
    await guard.register("ok-3")
    await guard.connect("ok-3")
    guard.provider.send_gate = asyncio.Event()
    calls = [asyncio.ensure_future(guard.send.SendMessage(text("ok-3", key="race"))) for _ in range(8)]
    await asyncio.sleep(0.3)
    guard.provider.send_gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    sent = [m for m in results if isinstance(m, common_pb2.Message)]
    held = [e for e in results if isinstance(e, grpc.aio.AioRpcError)]
    assert len(sent) + len(held) == 8
    # One attempt holds the key; the others were told so (retry later) while it ran.
    assert {(rich_error(e).code, rich_error(e).reason) for e in held} <= {(grpc.StatusCode.ABORTED, "SEND_IN_PROGRESS")}
    again = await guard.send.SendMessage(text("ok-3", key="race"))
    assert {m.id for m in sent} == {again.id}
    assert len(guard.provider.sends) == 1
    assert await count_messages(guard) == 1


async def test_same_key_with_other_content_is_refused(guard: Harness) -> None:
    await guard.register("ok-4")
    await guard.connect("ok-4")
    await guard.send.SendMessage(text("ok-4", key="k"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("ok-4", body="another text", key="k"))
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert len(guard.provider.sends) == 1


async def test_blocked_send_replayed_with_same_key_gives_same_error_and_one_row(guard: Harness) -> None:
    await guard.register("inc-2")
    await guard.connect("inc-2", phone=None)
    ids = set()
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await guard.send.SendMessage(text("inc-2", key="same"))
        ids.add(rich_error(caught.value).metadata["message_id"])
    assert len(ids) == 1
    assert await count_messages(guard) == 1


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (send_pb2.SendMessageRequest(instance_id="ok-5", to="", text=send_pb2.TextContent(body="x")), {"to"}),
        (send_pb2.SendMessageRequest(instance_id="ok-5", to="5515981121710"), {"content"}),
        (
            send_pb2.SendMessageRequest(
                instance_id="ok-5", to="5515981121710", text=send_pb2.TextContent(body="x" * 4097)
            ),
            {"text.body"},
        ),
        (
            send_pb2.SendMessageRequest(
                instance_id="ok-5", to="5515981121710", image=send_pb2.MediaContent(url="not a url")
            ),
            {"image.url"},
        ),
        (
            send_pb2.SendMessageRequest(instance_id="", to="abc", text=send_pb2.TextContent(body=" ")),
            {"instance_id", "to", "text.body"},
        ),
    ],
)
async def test_bad_input_is_invalid_argument_and_stores_nothing(
    guard: Harness, request_: send_pb2.SendMessageRequest, fields: set[str]
) -> None:
    await guard.register("ok-5")
    await guard.connect("ok-5")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(request_)
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.violations) == fields
    assert await count_messages(guard) == 0
    assert guard.provider.sends == []


async def test_unknown_instance_is_not_found(guard: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("nope"))
    assert rich_error(caught.value).code is grpc.StatusCode.NOT_FOUND
    assert await count_messages(guard) == 0


async def test_lite_plan_refuses_pro_only_kinds_before_the_provider(guard: Harness) -> None:
    await guard.register("LITE-1", plan=common_pb2.PLAN_LITE)
    await guard.connect("LITE-1")
    request = send_pb2.SendMessageRequest(
        instance_id="LITE-1",
        to="5515981121710",
        reaction=send_pb2.ReactionContent(emoji="👍", target_provider_message_id="3EB0AA"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(request)
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_SUPPORTED_BY_PLAN")
    assert guard.provider.sends == []
    sent = await guard.send.SendMessage(text("LITE-1"))  # text is fine on LITE
    assert sent.state == common_pb2.MESSAGE_STATE_SENT


@pytest.mark.parametrize(
    ("outcome", "code", "reason"),
    [
        (
            SendOutcome(failure=Reason.PROVIDER_TIMEOUT, detail="timed out"),
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "PROVIDER_TIMEOUT",
        ),
        (
            SendOutcome(failure=Reason.PROVIDER_ERROR, detail="bad number", http_status=400),
            grpc.StatusCode.UNAVAILABLE,
            "PROVIDER_ERROR",
        ),
        (
            SendOutcome(provider_message_id=None, http_status=200),
            grpc.StatusCode.UNAVAILABLE,
            "PROVIDER_NO_MESSAGE_ID",
        ),
    ],
)
async def test_provider_failure_is_failed_never_sent(
    guard: Harness, outcome: SendOutcome, code: grpc.StatusCode, reason: str
) -> None:
    await guard.register("ok-6")
    await guard.connect("ok-6")
    guard.provider.send_result = lambda _m: outcome
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("ok-6"))
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (code, reason)
    stored = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=error.metadata["message_id"]))
    assert stored.state == common_pb2.MESSAGE_STATE_FAILED
    assert stored.failure_reason == reason
    assert stored.provider_message_id == ""  # never an invented id


async def test_token_rejected_on_send_blocks_the_instance(guard: Harness) -> None:
    await guard.register("ok-7")
    await guard.connect("ok-7")
    guard.provider.send_result = lambda _m: SendOutcome(failure=Reason.TOKEN_INVALID, http_status=401)
    with pytest.raises(grpc.aio.AioRpcError):
        await guard.send.SendMessage(text("ok-7", key="a"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("ok-7", key="b"))
    assert rich_error(caught.value).reason == "TOKEN_INVALID"
    assert len(guard.provider.sends) == 1  # the second one was blocked by the preflight


async def test_repeated_gateway_failures_degrade_the_instance(guard: Harness) -> None:
    await guard.register("ok-8")
    await guard.connect("ok-8")
    guard.provider.send_result = lambda _m: SendOutcome(failure=Reason.PROVIDER_UNAVAILABLE, http_status=502)
    for i in range(3):
        with pytest.raises(grpc.aio.AioRpcError):
            await guard.send.SendMessage(text("ok-8", key=f"g{i}"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("ok-8", key="after"))
    assert rich_error(caught.value).reason == "TIMEOUT_OR_GATEWAY"
    assert len(guard.provider.sends) == 3


async def test_retry_reruns_preflight_and_grows_attempts(guard: Harness) -> None:
    await guard.register("re-1")
    await guard.connect("re-1", phone=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("re-1", key="r"))
    message_id = rich_error(caught.value).metadata["message_id"]

    with pytest.raises(grpc.aio.AioRpcError) as still:
        await guard.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=message_id))
    assert rich_error(still.value).reason == "SESSION_INCOMPLETE"

    await guard.connect("re-1", phone="5511988880000")  # session repaired
    retried = await guard.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=message_id))
    assert retried.id == message_id
    assert retried.state == common_pb2.MESSAGE_STATE_SENT
    assert retried.attempts == 3
    assert len(guard.provider.sends) == 1

    with pytest.raises(grpc.aio.AioRpcError) as not_failed:
        await guard.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=message_id))
    assert rich_error(not_failed.value).reason == "MESSAGE_NOT_RETRYABLE"


async def test_list_messages_filters_and_pages(guard: Harness) -> None:
    await guard.register("pg-1")
    await guard.connect("pg-1")
    for i in range(5):
        await guard.send.SendMessage(text("pg-1", key=f"p{i}"))
    seen: list[str] = []
    token = ""
    while True:
        page = await guard.send.ListMessages(
            send_pb2.ListMessagesRequest(instance_id="pg-1", page_size=2, page_token=token)
        )
        seen += [m.id for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5
    failed = await guard.send.ListMessages(
        send_pb2.ListMessagesRequest(instance_id="pg-1", states=[common_pb2.MESSAGE_STATE_FAILED])
    )
    assert list(failed.messages) == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.ListMessages(send_pb2.ListMessagesRequest(page_token="garbage!"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
