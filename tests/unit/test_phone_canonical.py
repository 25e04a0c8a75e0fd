"""The typed-phone rule (statemachine.phone.canonical_phone): what it accepts is always canonical
E.164 digits that read back as themselves, whatever was typed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from statemachine.phone import canonical_phone

TYPED = st.text(alphabet="0123456789 ()+-./", max_size=24) | st.from_regex(r"\+?[1-9][0-9]{6,15}", fullmatch=True)


@given(TYPED, st.sampled_from(["BR", "PT", "US", "DE", "IN"]))
def test_whatever_is_accepted_is_canonical_and_stable(typed: str, region: str) -> None:
    digits, problem = canonical_phone(typed, region)
    assert bool(digits) != bool(problem)
    if digits:
        assert digits.isascii()
        assert digits.isdigit()
        assert len(digits) <= 15  # E.164
        assert digits[0] != "0"
        assert canonical_phone("+" + digits, region) == (digits, "")


@given(st.from_regex(r"[1-9][1-9][0-9]{8}", fullmatch=True))
def test_a_brazilian_number_is_never_given_or_robbed_of_a_ninth_digit(national: str) -> None:
    """Typed with its country code, a Brazilian number keeps exactly the digits it was typed with.
    (Area codes are 11-99 without a 0: libphonenumber reads a leading 90 as a collect-call prefix.)"""
    digits, _problem = canonical_phone("+55" + national)
    assert digits in ("", "55" + national)
    digits, _problem = canonical_phone("+55" + national[:2] + "9" + national[2:])
    assert digits in ("", "55" + national[:2] + "9" + national[2:])
