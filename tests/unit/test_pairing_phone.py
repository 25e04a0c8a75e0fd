"""The pairing-code phone goes through the project's one phone rule."""

from __future__ import annotations

import pytest

from services.app.recovery import pairing_phone_violations


@pytest.mark.parametrize(
    ("typed", "digits"), [("5515981121710", "5515981121710"), ("+55 (15) 98112-1710", "5515981121710")]
)
def test_a_real_phone_with_formatting_is_accepted(typed: str, digits: str) -> None:
    assert pairing_phone_violations(typed) == (digits, [])


@pytest.mark.parametrize(
    "typed", ["٥٥١٥٩٨١١٢١٧١٠", "0015981121710", "1111111111", "123456789", "55159811217101234", "abc"]
)
def test_junk_or_a_number_without_area_code_is_a_field_violation(typed: str) -> None:
    _digits, violations = pairing_phone_violations(typed)
    assert [v.field for v in violations] == ["phone_number"]


def test_an_empty_phone_is_required() -> None:
    assert [v.field for v in pairing_phone_violations("  ")[1]] == ["phone_number"]
