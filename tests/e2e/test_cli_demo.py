"""`wapi-guard demo`, the main job, through its real entry point in a separate process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_exits_0_with_no_false_sent() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WAPIGUARD_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"stdout:\n{out}\nstderr:\n{done.stderr[-4000:]}"
    assert "false SENT reported for an instance that cannot deliver: 0" in out
    assert "[FAIL]" not in out
    assert "PENDING → SENT → DELIVERED → READ" in out
    assert "blocked: SESSION_INCOMPLETE" in out
    assert "blocked: DELIVERY_STALLED" in out
    # The incomplete-session block on all three providers: W-API, then Z-API and Evolution API.
    for label in ("LITE-4IW93E-MGVYDW", "Z-API", "Evolution"):
        blocked = re.search(rf"\[ok \] {re.escape(label)} +expected blocked: SESSION_INCOMPLETE +got (.+)", out)
        assert blocked, out
        assert blocked.group(1) == "blocked: SESSION_INCOMPLETE", out
    assert out.count("provider calls for it: 0") == 3, out  # none of the three reached its provider
    assert "provider=PROVIDER_ZAPI phone_number=null" in out
    assert "provider=PROVIDER_EVOLUTION phone_number=null" in out
    assert "18/18 expectations met" in out
    # A consumer of the event stream saw the story as it happened, without polling.
    assert "⇢ event stream: Aventura: message" in out
    assert "DELIVERED → READ" in out
    # The stall is caught by the learned test with default settings (no stuck-run shortcut), after a
    # handful of sends, and lifted by the operator's explicit clear.
    accepted = re.search(r"after (\d+) accepted sends \(learned test, default settings\)", out)
    assert accepted, out
    assert int(accepted.group(1)) <= 15
    assert "ALERT message" not in out  # the stuck-run rule (stuck after 300 s by default) played no part
    assert "got CONNECTED → DEGRADED (DELIVERY_STALLED) → CONNECTED" in out
    # Short ids are the distinctive end of each id: messages made in the same second differ.
    created = re.findall(r"⇢ event stream: Aventura: message (\w+) UNSPECIFIED → PENDING", out)
    assert len(created) >= 2, out
    assert len(set(created)) == len(created), created
    full = re.search(r"wapi-guard retry ([0-9a-f-]{36})", out)
    assert full, out
    assert f"message {full.group(1).replace('-', '')[-8:]} " in out
    # Canonical E.164 digits (country code 55), never the national form.
    assert "Send a text to 5515981121710 through each" in out
    assert " 15981121710" not in out
    # It ends with what to do next: serve + simulator, the status page, the docs.
    after = out.split("What next")[1]
    needed_all = (" simulator --port", " serve --wapi-base-url", "instances add", "send --instance", "/status")
    for needed in (*needed_all, "README.md"):
        assert needed in after, after
