"""The pairing-code phone goes through the same rule as a recipient (statemachine.phone)."""

from __future__ import annotations

import pytest

from services.app.recovery import pairing_phone_violations


@pytest.mark.parametrize(
    ("typed", "digits"),
    [
        ("5515981121710", "5515981121710"),
        ("+55 (15) 98112-1710", "5515981121710"),
        # national numbers of the default region (BR) get their country code
        ("15 98112-1710", "5515981121710"),
        ("(15) 98112-1710", "5515981121710"),
        ("15981121710", "5515981121710"),
        ("+1 202 555 0123", "12025550123"),
        ("553181121710", "553181121710"),  # no ninth digit: kept as given
        # Brazil's international prefix (00 + carrier 15), as libphonenumber reads it: +98 1121710
        ("0015981121710", "981121710"),
    ],
)
def test_a_real_phone_with_formatting_is_accepted(typed: str, digits: str) -> None:
    assert pairing_phone_violations(typed) == (digits, [])


def test_the_region_is_the_configured_one() -> None:
    assert pairing_phone_violations("912 345 678", "PT") == ("351912345678", [])


@pytest.mark.parametrize(
    "typed",
    [
        "٥٥١٥٩٨١١٢١٧١٠",
        "0000000000000",
        "1111111111",
        "123456789",
        "98112-1710",
        "55159811217101234",
        "abc",
    ],
)
def test_junk_or_a_number_without_area_code_is_a_field_violation(typed: str) -> None:
    digits, violations = pairing_phone_violations(typed)
    assert digits == ""
    assert [v.field for v in violations] == ["phone_number"]


def test_an_empty_phone_is_required() -> None:
    assert [v.field for v in pairing_phone_violations("  ")[1]] == ["phone_number"]
