"""The normalized failure of a parked FAILED status, read again from its stored body.

A status that beat its send's commit is parked with its body; the event's columns keep its status
but not the failure its provider's parser normalized (NOT_ON_WHATSAPP, SEND_REJECTED, …). Applied
later (parked.py, apply_parked_in), it is parsed again in the instance's provider dialect, so a
late FAILED keeps its reason and the provider's words instead of a generic PROVIDER_ERROR.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from adapters.evolution import webhooks as evolution
from adapters.wapi import webhooks as wapi
from adapters.zapi import webhooks as zapi
from statemachine.domain import MessageState
from statemachine.events import ProviderEvent

_PARSERS: Final[dict[str, Callable[[bytes], ProviderEvent]]] = {
    "WAPI": wapi.parse_webhook,
    "ZAPI": zapi.parse,
    "EVOLUTION": evolution.parse,
}


def parked_failure(provider: str | None, payload: bytes, provider_message_id: str) -> tuple[str, str]:
    """(failure_reason, failure_detail) of a stored FAILED status body; empty when it says none."""
    parse = _PARSERS.get(provider or "WAPI", wapi.parse_webhook)
    event = parse(bytes(payload))  # the parsers never raise: a body they cannot use is UNROUTABLE
    if event.provider_message_id != provider_message_id or event.status is not MessageState.FAILED:
        return "", ""
    return event.failure_reason or "", event.failure_detail or ""
