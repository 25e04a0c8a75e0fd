"""`wapi-guard policy` and `wapi-guard optouts` through the real entry point against a real server
(gRPC + simulator) on loopback: what an operator types and reads, in pt-BR and en."""

from __future__ import annotations

import json

from tests.ui.conftest import AVENTURA, UiStack, cli

CUSTOMER = "5515981121799"


async def test_policy_set_show_history_and_budgets_in_instances(stack: UiStack) -> None:
    await stack.add_both()
    server = ("--server", stack.grpc_address)
    shown = await cli("policy", "show", AVENTURA, *server)
    assert shown.returncode == 0, shown.stderr
    assert f"{AVENTURA}: sem política de envio (envia como antes)" in shown.stdout
    changed = await cli(
        "policy", "set", AVENTURA, "--max-per-minute", "40", "--new-recipients-per-day", "9", *server, "--lang", "en"
    )
    assert changed.returncode == 0, changed.stderr
    assert f"{AVENTURA}: policy changed" in changed.stdout
    assert "sends this minute: 0 of 40 (40 left)" in changed.stdout
    assert "new recipients this hour: 0 of no limit (no limit left)" in changed.stdout
    assert "new recipients today: 0 of 9 (9 left)" in changed.stdout
    sent = await cli("send", "--instance", AVENTURA, "--to", CUSTOMER, "--text", "Olá", *server)
    assert sent.returncode == 0, sent.stderr
    as_json = json.loads((await cli("policy", "show", AVENTURA, *server, "--json")).stdout)
    assert as_json["budgets"]["new_recipients_today"] == 1
    assert as_json["budgets"]["new_recipients_left_today"] == 8
    assert as_json["policy"]["max_per_minute"] == 40
    history = await cli("policy", "history", AVENTURA, *server)
    assert history.stdout.splitlines()[0].split()[1:3] == ["SET", "por"]
    table = await cli("instances", *server)
    row = next(line for line in table.stdout.splitlines() if line.startswith(AVENTURA))
    assert "min:5/40,d:1/9" in row  # this replica's slice of the minute (40 // 8) counts as used
    listed = json.loads((await cli("instances", *server, "--json")).stdout)
    budgets = next(i for i in listed["instances"] if i["instance_id"] == AVENTURA)["send_budgets"]
    assert (budgets["new_recipients_today"], budgets["new_recipients_today_budget"]) == (1, 9)


async def test_optouts_add_list_remove(stack: UiStack) -> None:
    await stack.add_both()
    server = ("--server", stack.grpc_address)
    added = await cli("optouts", "add", AVENTURA, "(15) 98112-1799", "--note", "pediu por telefone", *server)
    assert added.returncode == 0, added.stderr
    assert f"{CUSTOMER}: descadastrado" in added.stdout
    again = await cli("optouts", "add", AVENTURA, CUSTOMER, *server, "--lang", "en")
    assert f"{CUSTOMER}: was already opted out" in again.stdout
    refused = await cli("send", "--instance", AVENTURA, "--to", CUSTOMER, "--text", "Olá", *server, "--json")
    assert json.loads(refused.stdout)["error"]["reason"] == "RECIPIENT_OPTED_OUT"
    listed = await cli("optouts", "list", AVENTURA, *server)
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:2] == ["DESTINATÁRIO", "ORIGEM"]
    assert row.split()[:2] == [CUSTOMER, "API"]
    assert "pediu por telefone" in row
    table = await cli("instances", *server)
    assert "opt-out:1" in next(line for line in table.stdout.splitlines() if line.startswith(AVENTURA))
    removed = await cli("optouts", "remove", AVENTURA, CUSTOMER, "--note", "voltou", *server)
    assert f"{CUSTOMER}: removido da lista de descadastro" in removed.stdout
    empty = await cli("optouts", "list", AVENTURA, *server, "--json")
    assert json.loads(empty.stdout) == []
