"""JSON-lines logging with the trace context; secrets are scrubbed as a last line of defence."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Known secrets (tokens, webhook secret) are masked in any log line that contains them."""
    if value and len(value) >= 6:
        _secrets.add(value)


def scrub(text: str) -> str:
    text = _BEARER.sub(r"\1***", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = format(span.trace_id, "032x")
            out["span_id"] = format(span.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        try:
            # orjson: the same object in compact form at ~1/40 of json.dumps' cost (~16 µs of the
            # ~57 µs a send attempt's record took to format); what it refuses (integers beyond 64
            # bits, lone surrogates) goes through the stdlib as before.
            text = orjson.dumps(out).decode()
        except (orjson.JSONEncodeError, UnicodeDecodeError):
            text = json.dumps(out, ensure_ascii=False)
        return scrub(text)


class ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosqlite and sqlalchemy.engine log SQL parameters at DEBUG (an instance token is one of them).
    for noisy in ("httpx", "httpcore", "aiohttp.access", "alembic", "transitions", "aiosqlite", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
