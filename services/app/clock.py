"""The use cases' wall clock (UTC, timezone-aware): one definition, one place to fake it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
