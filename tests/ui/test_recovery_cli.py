"""The recovery loop through the real `wapi-guard` command line against a real server + simulator:
instances add → a blocked send pointing at `retry` → connect --phone → the code typed on the phone
→ Online → retry → sends flow again; the QR drawn in the terminal; webhooks; reconcile; remove."""

from __future__ import annotations

import json
import re

from services.cli.terminal_qr import qr_modules
from statemachine.domain import Plan
from tests import polling
from tests.ui.conftest import INCOMPLETE, RECIPIENT, WAPI_TOKENS, StackFactory, UiStack, cli


def no_secret(stack: UiStack, *outputs: str) -> None:
    for text in outputs:
        for secret in stack.secrets:
            assert secret not in text


async def test_cli_drives_session_incomplete_to_sending_again(stack: UiStack) -> None:
    server = ("--server", stack.grpc_address)
    stack.sim.add_instance(INCOMPLETE, WAPI_TOKENS[INCOMPLETE], behaviour="session_incomplete", plan="LITE")
    added = await cli(
        "instances", "add", INCOMPLETE, "--name", "Loja LITE", "--plan", "LITE", *server,
        env={"WAPIGUARD_WAPI_TOKEN": WAPI_TOKENS[INCOMPLETE]},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"Instância {INCOMPLETE} registrada: Sessão incompleta (SESSION_INCOMPLETE)" in added.stdout
    assert "Próximo passo: Peça um código de pareamento" in added.stdout

    blocked = await cli("send", "--instance", INCOMPLETE, "--to", RECIPIENT, "--text", "Olá!", *server)
    assert blocked.returncode == 1
    match = re.search(r"wapi-guard retry ([0-9a-f-]{36})", blocked.stdout)
    assert match, blocked.stdout
    assert "--key" not in blocked.stdout  # the same key would only replay the stored refusal
    message_id = match.group(1)

    connect = await cli("connect", INCOMPLETE, "--phone", "5515981121710", *server)
    assert connect.returncode == 0, connect.stderr
    code = re.search(r"Código de pareamento: ([A-Z0-9]{4}-[A-Z0-9]{4})", connect.stdout)
    assert code, connect.stdout
    assert "PAIRING_IN_PROGRESS" in connect.stdout
    assert code.group(1) in connect.stdout.split("Próximo passo:")[1]

    await stack.sim.type_pairing_code(INCOMPLETE, code.group(1))

    async def online() -> str | None:
        status = await cli("status", INCOMPLETE, *server)
        return status.stdout if "(CONNECTED)" in status.stdout else None

    status = await polling.eventually(online, "instance Online after pairing", 10)
    assert "5515981121710" in status

    retried = await cli("retry", message_id, *server, "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["message"]["state"] in ("SENT", "DELIVERED", "READ")
    sent = await cli("send", "--instance", INCOMPLETE, "--to", RECIPIENT, "--text", "De novo", *server)
    assert sent.returncode == 0, sent.stdout + sent.stderr

    removed = await cli("instances", "remove", INCOMPLETE, *server)
    assert removed.returncode == 0
    missing = await cli("status", INCOMPLETE, *server)
    assert missing.returncode == 4
    no_secret(stack, *(r.stdout + r.stderr for r in (added, blocked, connect, retried, sent, removed)))


async def test_connect_draws_the_qr_code_that_w_api_gave(stack: UiStack, tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    instance = "3B6XIW-ZTS923-GEAY6V"
    stack.sim.add_instance(instance, WAPI_TOKENS[instance], behaviour="disconnected")
    await stack.app.instances.register(instance, "Aventura", WAPI_TOKENS[instance], stack_plan())
    saved = tmp_path / "qr.png"
    run = await cli("connect", instance, "--qr-file", str(saved), "--server", stack.grpc_address)
    assert run.returncode == 0, run.stderr
    drawn = [line for line in run.stdout.splitlines() if line and set(line) <= set("█▀▄ ")]
    expected = qr_modules(saved.read_bytes())
    # Each text line is two module rows; light is a block, dark is a space (2 modules of quiet zone).
    rows: list[list[bool]] = []
    for line in drawn:
        rows.append([c in " ▄" for c in line])  # upper half dark
        rows.append([c in " ▀" for c in line])  # lower half dark
    assert [r[2:-2] for r in rows[2 : 2 + len(expected)]] == expected


async def test_webhooks_and_reconcile_commands(make_stack: StackFactory) -> None:
    stack = await make_stack()
    server = ("--server", stack.grpc_address)
    instance = "3B6XIW-ZTS923-GEAY6V"
    stack.sim.add_instance(instance, WAPI_TOKENS[instance])
    await stack.app.instances.register(instance, "Aventura", WAPI_TOKENS[instance], stack_plan())
    refused = await cli("webhooks", "configure", instance, *server, "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["reason"] == "PUBLIC_URL_NOT_CONFIGURED"

    import dataclasses

    recovery = stack.app.recovery
    assert recovery is not None
    recovery.config = dataclasses.replace(recovery.config, public_url=stack.http_url)
    configured = await cli("webhooks", "configure", instance, *server)
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "Webhooks configurados" in configured.stdout
    assert configured.stdout.count("✓") == 6
    assert stack.secret not in configured.stdout
    checked = await cli("webhooks", "check", instance, *server, "--json")
    assert json.loads(checked.stdout)["configured"] is True

    await stack.sim.emit(instance, "received", text="oi")
    reconciled = await cli("reconcile", instance, *server)
    assert reconciled.returncode == 0, reconciled.stderr
    assert re.search(rf"{instance}: \d+ lidos do log da W-API, 0 aplicados, \d+ já registrados", reconciled.stdout)


def stack_plan() -> Plan:
    return Plan.PRO


async def test_a_rate_limited_recovery_says_how_long_to_wait_in_the_cli_and_on_the_page(
    make_stack: StackFactory,
) -> None:
    import aiohttp

    from tests.ui.conftest import AVENTURA

    stack = await make_stack(recovery_limit=1, recovery_window=300)
    await stack.add(AVENTURA, "Aventura", behaviour="disconnected")
    server = ("--server", stack.grpc_address)
    first = await cli("restart", AVENTURA, *server)
    assert first.returncode == 0, first.stderr
    refused = await cli("restart", AVENTURA, *server)
    assert refused.returncode != 0
    # The wait as a person reads it (seconds rounded up to a duration: 290-300 s is "5 min").
    assert re.search(r"tente de novo em 5 min", refused.stderr), refused.stderr
    as_json = await cli("restart", AVENTURA, *server, "--json")
    error = json.loads(as_json.stdout)["error"]
    assert error["reason"] == "RECOVERY_RATE_LIMITED"
    assert 290 <= error["retry_after_seconds"] <= 300

    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.http_url}/status") as response:
            token = re.search(r'name="csrf" value="([0-9a-f]{64})"', await response.text())
        assert token
        url = f"{stack.http_url}/status/instances/{AVENTURA}/restart"
        async with session.post(url, data={"csrf": token.group(1)}, headers={"Origin": stack.http_url}) as response:
            page = await response.text()
            assert response.status == 429
            assert 290 <= int(response.headers["Retry-After"]) <= 300
    assert re.search(r'id="retry-after"[^>]*>[^<]*Tente de novo em \d+ s', page), page


async def test_an_instance_without_confirmed_webhooks_is_not_shown_plainly_healthy_in_the_cli(
    stack: UiStack,
) -> None:
    """The new user's path (no --public-url): connected, sends pass, but the CLI says delivery cannot
    be confirmed and what to do; the first receipts prove the webhooks wired (evidence wins)."""
    from tests.ui.conftest import AVENTURA

    server = ("--server", stack.grpc_address)
    stack.sim.add_instance(AVENTURA, WAPI_TOKENS[AVENTURA], behaviour="healthy")
    added = await cli(
        "instances", "add", AVENTURA, "--name", "Aventura", *server,
        env={"WAPIGUARD_WAPI_TOKEN": WAPI_TOKENS[AVENTURA]},
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "Online, entrega sem confirmação (CONNECTED)" in added.stdout
    assert "Webhooks na W-API: UNCONFIGURED: a entrega NÃO pode ser confirmada" in added.stdout
    assert f"wapi-guard webhooks configure {AVENTURA}" in added.stdout.split("Próximo passo:")[1]
    assert "/webhooks/wapi/<WAPIGUARD_WEBHOOK_SECRET>" in added.stdout

    status = await cli("status", AVENTURA, *server)
    assert "Online, entrega sem confirmação (CONNECTED)" in status.stdout
    assert "WEBHOOKS_UNCONFIGURED" in status.stdout
    assert re.search(r"Pode enviar\s+sim", status.stdout), status.stdout
    as_json = json.loads((await cli("status", AVENTURA, *server, "--json")).stdout)["instance"]
    assert (as_json["reason"], as_json["can_send"], as_json["delivery_confirmable"]) == (
        "WEBHOOKS_UNCONFIGURED",
        True,
        False,
    )
    assert "webhooks configure" in as_json["next_step"]

    sent = await cli("send", "--instance", AVENTURA, "--to", RECIPIENT, "--text", "Olá!", *server)
    assert sent.returncode == 0, sent.stdout + sent.stderr  # by default sends still pass

    async def plainly_online() -> str | None:  # the simulator's receipts reach the bridge
        run = await cli("status", AVENTURA, *server)
        return run.stdout if "Online (CONNECTED)" in run.stdout else None

    wired = await polling.eventually(plainly_online, "receipts prove the webhooks wired", 10)
    assert "PHONE_CONFIRMED" in wired
    assert "entregas confirmáveis" in wired
    no_secret(stack, added.stdout, added.stderr, status.stdout, wired)
