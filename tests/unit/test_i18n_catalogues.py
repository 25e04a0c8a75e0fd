"""The text catalogues of services/i18n: each surface says the same things in both languages, with
the same placeholders, and the recovery steps (formerly written inline in the use case) read in the
caller's language."""

from __future__ import annotations

import string

import pytest

from services.i18n import (
    CLI_TEXTS,
    LANGS,
    RECOVERY_CLI_TEXTS,
    RECOVERY_STEPS,
    STATUS_ACTION_TEXTS,
    STATUS_PAGE_TEXTS,
    SUBSCRIPTION_CLI_TEXTS,
    lookup,
    recovery_step,
)

CATALOGUES = {
    "cli": CLI_TEXTS,
    "recovery_cli": RECOVERY_CLI_TEXTS,
    "status_page": STATUS_PAGE_TEXTS,
    "status_actions": STATUS_ACTION_TEXTS,
    "subscriptions_cli": SUBSCRIPTION_CLI_TEXTS,
    "recovery_steps": RECOVERY_STEPS,
}


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@pytest.mark.parametrize("name", sorted(CATALOGUES))
def test_every_text_exists_in_both_languages_with_the_same_placeholders(name: str) -> None:
    catalogue = CATALOGUES[name]
    assert set(catalogue) == set(LANGS)
    pt, en = catalogue["pt-BR"], catalogue["en"]
    assert set(pt) == set(en), set(pt) ^ set(en)
    differing = {key for key in pt if _fields(pt[key]) != _fields(en[key])}
    assert not differing, differing


def test_recovery_steps_in_the_callers_language() -> None:
    assert "digite 123-456" in recovery_step("pairing_code", "pt-BR", code="123-456")
    assert "type 123-456" in recovery_step("pairing_code", "en-US", code="123-456")
    assert recovery_step("qr_code", "en").startswith("Scan the QR code")
    assert recovery_step("webhooks_refused", "fr").startswith("Corrija o que a W-API recusou")


def test_lookup_falls_back_to_pt_br_and_formats() -> None:
    assert lookup(SUBSCRIPTION_CLI_TEXTS, "xx", "need_id", action="enable") == SUBSCRIPTION_CLI_TEXTS["pt-BR"][
        "need_id"
    ].format(action="enable")


def test_a_text_may_have_placeholders_named_like_the_lookups_own_arguments() -> None:
    # `wapi-guard send`'s unknown outcome names the idempotency key: {key}.
    assert "--key k-1" in lookup(CLI_TEXTS, "en", "unknown_outcome", key="k-1")
    assert "digite 1" in recovery_step("pairing_code", "pt-BR", code="1")
