"""The hold through the real `wapi-guard` command line: `messages --held` lists what waits,
`held cancel` ends one FAILED/CANCELLED, `held release` answers how many it released."""

from __future__ import annotations

import json

import grpc
from google.protobuf.duration_pb2 import Duration

from services.api.wapiguard.v1 import send_pb2, send_pb2_grpc
from tests.ui.conftest import INCOMPLETE, RECIPIENT, WAPI_TOKENS, UiStack, cli


async def test_cli_lists_cancels_and_releases_held_messages(stack: UiStack) -> None:
    server = ("--server", stack.grpc_address)
    stack.sim.add_instance(INCOMPLETE, WAPI_TOKENS[INCOMPLETE], behaviour="session_incomplete")
    added = await cli(
        "instances", "add", INCOMPLETE, "--name", "Loja", *server, env={"WAPIGUARD_WAPI_TOKEN": WAPI_TOKENS[INCOMPLETE]}
    )
    assert added.returncode == 0, added.stderr
    async with grpc.aio.insecure_channel(stack.grpc_address) as channel:
        send: send_pb2_grpc.SendServiceAsyncStub = send_pb2_grpc.SendServiceStub(channel)
        ids = []
        for i in range(2):
            request = send_pb2.SendMessageRequest(
                instance_id=INCOMPLETE, to=RECIPIENT, idempotency_key=f"held-{i}", text=send_pb2.TextContent(body="Oi")
            )
            request.hold_for.CopyFrom(Duration(seconds=600))
            ids.append((await send.SendMessage(request)).id)

    listed = await cli("messages", "--held", *server)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("Em espera") == 2

    cancelled = await cli("held", "cancel", ids[0], *server, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    message = json.loads(cancelled.stdout)["message"]
    assert (message["state"], message["failure_reason"]) == ("FAILED", "CANCELLED")
    again = await cli("held", "cancel", ids[0], *server)
    assert again.returncode != 0
    assert "MESSAGE_NOT_HELD" in again.stdout + again.stderr

    released = await cli("held", "release", INCOMPLETE, *server)
    assert released.returncode == 0, released.stderr
    assert f"1 mensagem(ns) em espera de {INCOMPLETE} liberada(s)" in released.stdout
