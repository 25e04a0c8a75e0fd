"""The operator vocabulary the page and the CLI share: labels, colours, masking, languages, times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.i18n import (
    ago,
    duration,
    mask_recipient,
    message_label,
    reason_label,
    resolve_lang,
    state_view,
)


@pytest.mark.parametrize(
    ("state", "reason", "label", "tone"),
    [
        ("CONNECTED", "PHONE_CONFIRMED", "Online", "green"),
        ("SESSION_INCOMPLETE", "SESSION_INCOMPLETE", "Sessão incompleta", "orange"),
        ("DEGRADED", "TIMEOUT_OR_GATEWAY", "Degradada (timeout/gateway)", "yellow"),
        ("DEGRADED", "DELIVERY_STALLED", "Entrega parada", "red"),
        ("DISCONNECTED", "TOKEN_INVALID", "Desconectada", "grey"),
        ("UNKNOWN", "REGISTERED", "Desconhecida", "slate"),
        ("INSTANCE_STATE_CONNECTED", "", "Online", "green"),
        ("DEGRADED", None, "Degradada", "yellow"),  # reason not known (the "from" side of an old change)
    ],
)
def test_state_labels_and_tones(state: str, reason: str | None, label: str, tone: str) -> None:
    view = state_view(state, reason)
    assert (view.label, view.tone) == (label, tone)


def test_english_labels_and_reasons() -> None:
    assert state_view("DEGRADED", "DELIVERY_STALLED", "en").label == "Delivery stalled"
    assert state_view("SESSION_INCOMPLETE", "SESSION_INCOMPLETE", "en-US").label == "Session incomplete"
    assert reason_label("TOKEN_INVALID") == "Token da instância inválido ou expirado. Atualize o token na W-API."
    assert reason_label("TOKEN_INVALID", "en") == "Instance token is invalid or expired."
    assert reason_label("REGISTERED", "en") == "Registered; waiting for the first check."
    assert reason_label("SOMETHING_NEW") == "SOMETHING_NEW"
    assert reason_label("") == ""
    assert message_label("SENT", stuck=True) == "Parada (sem entrega)"
    assert message_label("MESSAGE_STATE_FAILED", stuck=False, lang="en") == "Failed"


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("5515981121710", "5515•••••1710"),
        ("15981121710", "1598•••1710"),
        ("120363025246125486@g.us", "1203••••••••••5486@g.us"),
        ("12345678", "12••••78"),
        ("12345", "•••••"),
        ("", "—"),
    ],
)
def test_recipients_are_masked(raw: str, masked: str) -> None:
    assert mask_recipient(raw) == masked


@pytest.mark.parametrize(
    ("query", "header", "lang"),
    [
        (None, None, "pt-BR"),
        ("en", "pt-BR", "en"),
        ("pt-BR", "en-US,en;q=0.9", "pt-BR"),
        ("fr", "en-GB", "en"),
        (None, "en-US,en;q=0.9", "en"),
        (None, "pt-BR,pt;q=0.9,en;q=0.8", "pt-BR"),
        (None, "en;q=0.4,pt;q=0.8", "pt-BR"),
        (None, "fr-FR,de;q=0.9", "pt-BR"),
        (None, "en;q=0", "pt-BR"),
        (None, "en;q=garbage", "pt-BR"),
    ],
)
def test_language_choice(query: str | None, header: str | None, lang: str) -> None:
    assert resolve_lang(query, header) == lang


def test_relative_times() -> None:
    now = datetime(2025, 6, 5, 12, 0, tzinfo=UTC)
    assert ago(None, now) == "—"
    assert ago(now, now) == "agora"
    assert ago(now - timedelta(seconds=42), now) == "há 42 s"
    assert ago(now - timedelta(minutes=5, seconds=59), now, "en") == "5 min ago"
    assert ago(now - timedelta(hours=3), now) == "há 3 h"
    assert ago(now + timedelta(seconds=3), now) == "agora"  # clock skew never shows a negative age
    assert duration(2 * 86400 + 5) == "2 d"
