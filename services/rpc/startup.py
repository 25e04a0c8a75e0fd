"""Start-up failures that say what failed and where, never with the database password.

`serve` used to print only `wapi-guard: ` when the database port accepted but never answered
(an empty `TimeoutError`). Each start-up step that touches the database runs through `step`,
which turns whatever the driver raised into one sentence: the database's address (the URL
without its password), the step (migrations, first query) and what happened.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from services.observability.logs import scrub

T = TypeVar("T")


class StartupError(Exception):
    """`serve` cannot start; the message is meant for the operator's terminal."""


def database_location(url: str) -> str:
    """Where the database is, without credentials: `host:port/db` or the SQLite file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"file {parsed.database or ':memory:'}"
    host = parsed.host or "localhost"
    port = parsed.port or 5432
    return f"{host}:{port}/{parsed.database or ''}".rstrip("/")


def _hide(text: str, url: str) -> str:
    password = make_url(url).password
    if password:
        text = text.replace(str(password), "***")
    return scrub(text)


def describe(error: BaseException, url: str, what: str, connect_timeout: float) -> str:
    where = database_location(url)
    if isinstance(error, TimeoutError):
        return f"database at {where} did not answer within {connect_timeout:g} s ({what})"
    if isinstance(error, DBAPIError) and error.orig is not None:
        cause: BaseException = error.orig
        if isinstance(cause, TimeoutError):
            return f"database at {where} did not answer within {connect_timeout:g} s ({what})"
    else:
        cause = error
    detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    kind = type(cause).__name__
    if isinstance(cause, ConnectionRefusedError):
        return f"database at {where} refused the connection ({what})"
    text = f"database at {where} failed ({what}): {kind}" + (f": {detail}" if detail else "")
    return _hide(text, url)


async def step(what: str, url: str, connect_timeout: float, work: Awaitable[T]) -> T:
    """Runs one start-up step against the database; a failure becomes a StartupError."""
    try:
        return await work
    except (OSError, SQLAlchemyError) as error:  # TimeoutError is an OSError
        raise StartupError(describe(error, url, what, connect_timeout)) from error
