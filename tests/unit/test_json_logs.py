"""JSON log lines: one object per line with the record's fields, secrets masked, and anything the
fast encoder refuses still written."""

from __future__ import annotations

import json
import logging

from services.observability.logs import JsonFormatter, register_secret


def _line(msg: str, **extra: object) -> dict[str, object]:
    record = logging.getLogger("wapi_guard.test").makeRecord(
        "wapi_guard.test", logging.INFO, "f", 1, msg, (), None, extra=extra
    )
    text = JsonFormatter().format(record)
    assert "\n" not in text
    parsed: dict[str, object] = json.loads(text)
    return parsed


def test_fields_level_and_message() -> None:
    line = _line("send attempt", instance_id="I1", attempt=2, outcome="blocked", ok=True, none=None, obj=[1])
    assert line["msg"] == "send attempt"
    assert line["level"] == "INFO"
    assert line["logger"] == "wapi_guard.test"
    assert (line["instance_id"], line["attempt"], line["ok"], line["none"], line["obj"]) == ("I1", 2, True, None, "[1]")
    assert str(line["ts"]).endswith("+00:00")


def test_secrets_are_masked() -> None:
    register_secret("tok-very-secret-1")
    line = _line("token tok-very-secret-1 leaked", header="Bearer abc.def")
    assert "tok-very-secret-1" not in json.dumps(line)
    assert line["header"] == "Bearer ***"


def test_what_the_fast_encoder_refuses_is_still_written() -> None:
    assert _line("big", n=2**70)["n"] == 2**70
    assert _line("lone \ud800 surrogate")["msg"] == "lone \ud800 surrogate"
    assert _line("olá ✓")["msg"] == "olá ✓"
