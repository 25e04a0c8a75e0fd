"""How the `wapi-guard` command reads a refusal: each gRPC status has its own wording and exit code
(README "Operator commands"), with the server's LocalizedMessage and ErrorInfo reason, RetryInfo's
wait, and the CLI flag the user typed. "Unreachable" (exit 3) only when nothing answered.

Through the real entry point against a real server + simulator; the statuses the real server cannot
be brought to answer on demand (its storage down, an internal error) come from a small gRPC server
on loopback that answers them exactly as services/rpc/errors.py builds them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.rpc.errors import build_status
from tests.ui.conftest import AVENTURA, RECIPIENT, WAPI_TOKENS, StackFactory, UiStack, cli, free_port

UNREACHABLE = ("indisponível em", "inacessível", "unreachable", "unavailable at")


def unreachable_said(text: str) -> bool:
    return any(word in text for word in UNREACHABLE)


async def test_refusals_are_not_called_unreachable(make_stack: StackFactory) -> None:
    # recovery_limit=1: the second restart of the same instance is over the operator's budget.
    stack: UiStack = await make_stack(recovery_limit=1)
    await stack.add(AVENTURA, "Aventura")
    server = ("--server", stack.grpc_address)
    sent = await stack.send_text(AVENTURA, "sent-once")
    first = await cli("restart", AVENTURA, *server)
    assert first.returncode == 0, first.stderr

    hooks, hooks_en, retry, limited = await asyncio.gather(
        cli("webhooks", "configure", AVENTURA, *server),
        cli("webhooks", "configure", AVENTURA, *server, "--lang", "en"),
        cli("retry", sent.id, *server),
        cli("restart", AVENTURA, *server),
    )
    # No --public-url: refused (FAILED_PRECONDITION), exit 1, the server's own text and reason.
    assert hooks.returncode == 1, hooks.stderr
    assert not unreachable_said(hooks.stderr), hooks.stderr
    assert "recusado pelo servidor" in hooks.stderr
    assert "URL pública não configurada" in hooks.stderr
    assert "(PUBLIC_URL_NOT_CONFIGURED)" in hooks.stderr
    assert hooks_en.returncode == 1
    assert "refused by the server: No public URL configured" in hooks_en.stderr
    assert "URL pública" not in hooks_en.stderr

    # A SENT message cannot be retried: refused, not "server unavailable".
    assert retry.returncode == 1, retry.stderr
    assert not unreachable_said(retry.stderr), retry.stderr
    assert "Só mensagens com falha podem ser reenviadas" in retry.stderr
    assert "(MESSAGE_NOT_RETRYABLE)" in retry.stderr

    # Over the recovery limit: RESOURCE_EXHAUSTED is "try again later" (exit 6), never exit 3.
    assert limited.returncode == 6, limited.stderr
    assert not unreachable_said(limited.stderr), limited.stderr
    assert "limite atingido" in limited.stderr
    assert "(RECOVERY_RATE_LIMITED)" in limited.stderr


async def test_violations_name_the_cli_flag_in_one_language(stack: UiStack) -> None:
    await stack.add(AVENTURA, "Aventura")
    server = ("--server", stack.grpc_address)
    phone, to, token, token_en, as_json = await asyncio.gather(
        cli("connect", AVENTURA, "--phone", "12", *server),
        cli("send", "--instance", AVENTURA, "--to", "12", "--text", "oi", *server),
        cli("instances", "add", "NEW-INSTANCE-1", *server),
        cli("instances", "add", "NEW-INSTANCE-1", *server, "--lang", "en"),
        cli("connect", AVENTURA, "--phone", "12", *server, "--json"),
    )
    assert phone.returncode == 2, phone.stderr
    assert "--phone:" in phone.stderr
    assert "phone_number" not in phone.stderr
    assert to.returncode == 2
    assert "pedido inválido: --to:" in to.stderr
    # The CLI's words and the server's violation text in the same language.
    assert token.returncode == 2
    assert "pedido inválido: --wapi-token: obrigatório no primeiro registro" in token.stderr
    assert "required" not in token.stderr
    assert token_en.returncode == 2
    assert "invalid request: --wapi-token: required on first registration" in token_en.stderr
    error = json.loads(as_json.stdout)["error"]
    assert "phone_number" in error["violations"]  # the machine field stays for scripts
    assert "--phone" in error["flags"]


async def test_unreachable_is_exit_3_only_when_nothing_answered() -> None:
    down = await cli("status", AVENTURA, "--timeout", "5", "--server", f"127.0.0.1:{free_port()}")
    assert down.returncode == 3
    assert "servidor inacessível" in down.stderr


class Answering(grpc.GenericRpcHandler):
    """Answers every method with one status built like the real server builds it."""

    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        async def answer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            assert self.status is not None
            await context.abort(self.status.code, self.status.details, self.status.trailing_metadata)
            raise AssertionError("unreachable")

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture
async def answering() -> AsyncIterator[tuple[Answering, str]]:
    handler = Answering()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_server_answers_each_read_in_their_own_words(answering: tuple[Answering, str]) -> None:
    handler, address = answering
    server = ("--server", address)
    storage = build_status(grpc.StatusCode.UNAVAILABLE, "storage unavailable", "STORAGE_UNAVAILABLE", {})
    handler.status = storage
    down, down_en, send = await asyncio.gather(
        cli("status", AVENTURA, *server),
        cli("instances", *server, "--lang", "en", "--json"),
        cli("send", "--instance", AVENTURA, "--to", RECIPIENT, "--text", "x", "--key", "k-9", *server),
    )
    # The server answered: its storage is unavailable. Exit 6 (try later), not 3 (unreachable).
    assert down.returncode == 6, down.stderr
    assert "o armazenamento do servidor está indisponível" in down.stderr
    assert "(STORAGE_UNAVAILABLE)" in down.stderr
    assert not unreachable_said(down.stderr)
    assert down_en.returncode == 6
    assert json.loads(down_en.stdout)["error"]["reason"] == "STORAGE_UNAVAILABLE"
    # A send whose store failed may have gone out: the outcome is unknown, the key makes a retry safe.
    assert send.returncode == 6
    assert "--key k-9" in send.stderr

    handler.status = build_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 5 per 600s", "RECOVERY_RATE_LIMITED", {}, retry_after=42.5
    )
    limited, limited_json = await asyncio.gather(
        cli("restart", AVENTURA, *server), cli("restart", AVENTURA, *server, "--json")
    )
    assert limited.returncode == 6
    assert "limite atingido: Muitas ações de recuperação seguidas" in limited.stderr
    assert "tente de novo em 43 s" in limited.stderr
    assert json.loads(limited_json.stdout)["error"]["retry_after_seconds"] == 42.5

    handler.status = build_status(grpc.StatusCode.INTERNAL, "boom", "INTERNAL", {})
    internal = await cli("status", AVENTURA, *server, "--lang", "en")
    assert internal.returncode == 7
    assert "server error" in internal.stderr
    assert not unreachable_said(internal.stderr)

    # A reason this CLI has no words for (a newer server): the server's own status message, not the code twice.
    handler.status = build_status(grpc.StatusCode.FAILED_PRECONDITION, "needs a newer thing", "BRAND_NEW_REASON", {})
    newer = await cli("status", AVENTURA, *server)
    assert newer.returncode == 1
    assert "recusado pelo servidor: needs a newer thing (BRAND_NEW_REASON)" in newer.stderr

    handler.status = build_status(grpc.StatusCode.ABORTED, "busy", "RECOVERY_IN_PROGRESS", {})
    busy = await cli("restart", AVENTURA, *server)
    assert busy.returncode == 6
    assert "Já existe uma ação de recuperação em andamento" in busy.stderr


async def test_help_documents_the_exit_code_table() -> None:
    helped = await cli("status", "--help")
    assert helped.returncode == 0
    for line in ("3  server unreachable", "6  try again later", "7  server error"):
        assert line in helped.stdout
    assert WAPI_TOKENS[AVENTURA] not in helped.stdout
