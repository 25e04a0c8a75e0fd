"""Reading messages back (GetMessage, ListMessages, the status page): validated before any
storage call, so a malformed id or token is INVALID_ARGUMENT / NOT_FOUND, never a storage error."""

from __future__ import annotations

from collections.abc import Sequence

from statemachine.domain import MessageRecord, MessageState
from statemachine.errors import InvalidRequest, MessageNotFound
from statemachine.store_ports import MessageReads
from statemachine.validation import Violation, validate_instance_id


class MessageQueries:
    def __init__(self, repo: MessageReads) -> None:
        self.repo = repo

    async def get_message(self, message_id: str) -> MessageRecord:
        # Ids we issue are UUIDs: anything else cannot exist (and is never sent to the database).
        msg = await self.repo.get_message(message_id) if plausible_id(message_id) else None
        if msg is None:
            raise MessageNotFound(message_id)
        return msg

    async def list_messages(
        self,
        *,
        instance_id: str = "",
        states: Sequence[MessageState] = (),
        stuck_only: bool = False,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[MessageRecord], str]:
        if page_size < 0 or page_size > 500:
            raise InvalidRequest([Violation("page_size", "must be between 0 and 500")])
        if instance_id and validate_instance_id(instance_id):
            raise InvalidRequest(validate_instance_id(instance_id))
        try:
            return await self.repo.list_messages(
                instance_id=instance_id,
                states=states,
                stuck_only=stuck_only,
                page_size=page_size or 50,
                page_token=page_token,
            )
        except ValueError:
            raise InvalidRequest([Violation("page_token", "not a token returned by ListMessages")]) from None


def plausible_id(message_id: str) -> bool:
    """Ids we issue are UUIDs: anything else cannot exist (and is never sent to the database)."""
    return 0 < len(message_id) <= 64 and message_id.isprintable() and message_id.isascii()
