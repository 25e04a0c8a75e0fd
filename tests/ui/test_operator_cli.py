"""`wapi-guard instances|messages|send|status` through the real entry point (`python -m services.cli`)
against a real server (gRPC + simulator) on loopback. Each CLI run is a new interpreter, so the runs
that do not depend on each other go in parallel."""

from __future__ import annotations

import asyncio
import json

from tests.ui.conftest import (
    ADMIN,
    API_TOKENS,
    AVENTURA,
    INCOMPLETE,
    MASKED,
    RECIPIENT,
    SCOPED,
    StackFactory,
    UiStack,
    cli,
    free_port,
)

SESSION_INCOMPLETE_PT = "Instância conectada sem sessão válida"


def no_secret(stack: UiStack, *outputs: str) -> None:
    for text in outputs:
        for secret in stack.secrets:
            assert secret not in text


async def test_instances_table_json_and_refresh(stack: UiStack) -> None:
    await stack.add_both()
    server = ("--server", stack.grpc_address)
    probes_before = len(stack.sim.requests)
    table, as_json, refreshed = await asyncio.gather(
        cli("instances", *server),
        cli("instances", *server, "--json"),
        # --refresh: GetInstanceHealth(refresh=True) per instance, a progress bar on stderr; env settings.
        cli(
            "instances",
            "--refresh",
            "--concurrency",
            "2",
            env={"WAPIGUARD_SERVER": stack.grpc_address, "WAPIGUARD_LANG": "en"},
        ),
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = ["ID", "NOME", "ESTADO", "TELEFONE", "PARADAS", "ESPERA", "VERIFICADA", "ORÇAMENTO", "MOTIVO"]
    assert lines[0].split() == header
    aventura = next(line for line in lines if line.startswith(AVENTURA))
    incomplete = next(line for line in lines if line.startswith(INCOMPLETE))
    assert "Aventura" in aventura
    assert "  Online  " in aventura
    assert "5511999990000" in aventura
    assert "Sessão incompleta" in incomplete
    assert " — " in incomplete
    assert SESSION_INCOMPLETE_PT in incomplete

    assert as_json.returncode == 0, as_json.stderr
    rows = {row["instance_id"]: row for row in json.loads(as_json.stdout)["instances"]}
    assert rows[AVENTURA]["state"] == "CONNECTED"
    assert rows[AVENTURA]["state_label"] == "Online"
    assert rows[AVENTURA]["can_send"] is True
    assert rows[AVENTURA]["tone"] == "green"
    assert rows[INCOMPLETE]["state"] == "SESSION_INCOMPLETE"
    assert rows[INCOMPLETE]["tone"] == "orange"
    assert rows[INCOMPLETE]["state_label"] == "Sessão incompleta"
    assert rows[INCOMPLETE]["phone_number"] is None
    assert rows[INCOMPLETE]["reason_message"].startswith(SESSION_INCOMPLETE_PT)

    assert refreshed.returncode == 0, refreshed.stderr
    # Not a terminal: one plain progress line at the end, no redraw sequences.
    assert refreshed.stderr.strip().splitlines()[-1] == "Probing instances: 2/2"
    assert "\r" not in refreshed.stderr
    assert "\x1b[" not in refreshed.stderr
    assert refreshed.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"]
    assert "Session incomplete" in refreshed.stdout
    assert "Sessão" not in refreshed.stdout
    probes = [r for r in stack.sim.requests[probes_before:] if r.path == "/instance/status-instance"]
    assert len(probes) == 2
    no_secret(stack, *(r.stdout + r.stderr for r in (table, as_json, refreshed)))


async def test_send_outcomes_messages_and_status(stack: UiStack) -> None:
    await stack.add_both()
    server = ("--server", stack.grpc_address)

    sent = await cli("send", *server, "--instance", AVENTURA, "--to", RECIPIENT, "--text", "Olá", "--key", "k-1")
    assert sent.returncode == 0, sent.stderr
    assert "(SENT)" in sent.stdout
    assert "k-1" in sent.stdout
    provider_id = stack.sim.sends(AVENTURA)[0]["message_id"]
    assert provider_id
    assert provider_id in sent.stdout

    blocked, invalid, missing = await asyncio.gather(
        cli("send", *server, "--instance", INCOMPLETE, "--to", RECIPIENT, "--text", "Olá"),
        cli("send", *server, "--instance", AVENTURA, "--to", "12", "--text", "Olá"),
        cli("status", *server, "NOT-REGISTERED-1"),
    )
    # Blocked by the preflight: exit 1 with the reason and its pt-BR text; nothing reached W-API.
    assert blocked.returncode == 1, blocked.stderr
    assert "Envio bloqueado: SESSION_INCOMPLETE" in blocked.stdout
    assert SESSION_INCOMPLETE_PT in blocked.stdout
    assert "FAILED" in blocked.stdout
    assert stack.sim.sends(INCOMPLETE) == []
    assert invalid.returncode == 2
    assert "to:" in invalid.stderr
    assert missing.returncode == 4
    assert "NOT-REGISTERED-1" in missing.stderr

    failed, as_json, status = await asyncio.gather(
        cli("messages", *server, "--failed"),
        cli("messages", *server, "--json", "--limit", "10"),
        cli("status", *server, INCOMPLETE),
    )
    assert failed.returncode == 0, failed.stderr
    rows = failed.stdout.splitlines()
    assert rows[0].split()[:4] == ["ID", "INSTÂNCIA", "DESTINO", "ESTADO"]
    assert len(rows) == 2
    assert INCOMPLETE in rows[1]
    assert "Falhou" in rows[1]
    assert MASKED in rows[1]
    assert SESSION_INCOMPLETE_PT in rows[1]
    assert RECIPIENT not in failed.stdout

    listed = {m["instance_id"]: m for m in json.loads(as_json.stdout)["messages"]}
    assert listed[INCOMPLETE]["state"] == "FAILED"
    assert listed[INCOMPLETE]["failure_reason"] == "SESSION_INCOMPLETE"
    assert listed[AVENTURA]["state"] in ("SENT", "DELIVERED", "READ")
    assert listed[AVENTURA]["provider_message_id"] == provider_id
    assert listed[INCOMPLETE]["to_masked"] == MASKED
    assert listed[INCOMPLETE]["to"] == RECIPIENT

    assert status.returncode == 0, status.stderr
    assert "Sessão incompleta (SESSION_INCOMPLETE)" in status.stdout
    assert SESSION_INCOMPLETE_PT in status.stdout
    assert any(line.startswith("Pode enviar") and line.endswith("não") for line in status.stdout.splitlines())
    no_secret(stack, *(r.stdout + r.stderr for r in (sent, blocked, invalid, missing, failed, as_json, status)))


async def test_unreachable_server_is_exit_3_and_help_documents_exit_codes() -> None:
    address = f"127.0.0.1:{free_port()}"
    down, helped = await asyncio.gather(
        cli("status", AVENTURA, "--json", "--timeout", "5", env={"WAPIGUARD_SERVER": address}),
        cli("messages", "--help"),
    )
    assert down.returncode == 3
    assert json.loads(down.stdout)["error"]["code"] == "UNAVAILABLE"
    assert helped.returncode == 0
    for line in (
        "0  ok",
        "1  refused by the server: send blocked or failed",
        "2  usage error",
        "3  server unreachable, or no answer within --timeout",
        "4  instance or message not found",
        "5  unauthenticated or permission denied",
    ):
        assert line in helped.stdout


async def test_bad_token_is_exit_5_and_scopes_apply(make_stack: StackFactory) -> None:
    stack = await make_stack(api_tokens=API_TOKENS)
    await stack.add_both()
    server = ("--server", stack.grpc_address)
    bad, ok, scoped = await asyncio.gather(
        cli("instances", *server, "--token", "wrong-token-0123456789"),
        cli("instances", *server, "--json", env={"WAPIGUARD_TOKEN": ADMIN}),
        cli("send", *server, "--instance", AVENTURA, "--to", RECIPIENT, "--text", "x", env={"WAPIGUARD_TOKEN": SCOPED}),
    )
    assert bad.returncode == 5
    assert "não autenticado" in bad.stderr
    assert ok.returncode == 0, ok.stderr
    assert {i["instance_id"] for i in json.loads(ok.stdout)["instances"]} == {AVENTURA, INCOMPLETE}
    assert scoped.returncode == 5
    assert "permissão negada" in scoped.stderr
    assert stack.sim.sends(AVENTURA) == []
    no_secret(stack, *(r.stdout + r.stderr for r in (bad, ok, scoped)))
