"""Row ids that sort by creation time."""

from __future__ import annotations

from ulid import ULID


def time_ordered_id() -> str:
    """A ULID in UUID text form (36 characters, like the uuid4 ids stored before): new rows go
    to the right edge of the primary-key index, so an insert does not dirty a random old leaf
    page (on PostgreSQL, a full-page image in the WAL after every checkpoint)."""
    return str(ULID().to_uuid())
