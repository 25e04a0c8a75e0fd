"""The phone-number rules.

- :func:`e164_phone`: what counts as the phone of a WhatsApp session, as the provider reports it
  (international digits). Every path that can make an instance CONNECTED (status probe, connection
  webhook, registration) goes through it, so they can never disagree.
- :func:`canonical_phone`: a phone a person or a caller typed (a recipient, a contact card's
  phone, the pairing-code phone), parsed and validated with libphonenumber (`phonenumbers`)
  against a default region, into the canonical E.164 digits W-API takes (no ``+``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Final

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberFormat, PhoneNumberType

# ITU-T E.164: at most 15 digits (country code included). The shortest real numbers in use are a
# 1-3 digit country code plus a national number of 4-7 digits (small territories, e.g. Niue or the
# Falklands), so fewer than 8 digits in total is not a dialable international number.
MIN_DIGITS: Final = 8
MAX_DIGITS: Final = 15

_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit and \d also accept Arabic-Indic digits
_JID_DOMAINS: Final = ("s.whatsapp.net", "c.us")


def phone_rejection(value: Any) -> str | None:
    """Why ``value`` is not a session's phone number, or None when it is one.

    Accepted: a str or int of ASCII digits with an optional leading ``+``, or a WhatsApp JID
    (``5511999990000@s.whatsapp.net``, ``…:12@s.whatsapp.net`` with a device suffix, ``…@c.us``).
    Refused: other JSON types, a LID (``…@lid``: an opaque id, not a number), non-ASCII digits,
    any other character, fewer than 8 or more than 15 digits, a leading zero (a country code never
    starts with 0, so ``00000000`` or ``0123…`` is a local or fake number) and one digit repeated
    throughout (``11111111``: a placeholder, not a subscriber).
    """
    if isinstance(value, bool):
        return "not a string or integer"
    if isinstance(value, int):
        text = str(value) if value >= 0 else ""
    elif isinstance(value, str):
        text = value.strip()
    else:
        return "not a string or integer"
    if not text:
        return "empty"
    user, at, domain = text.partition("@")
    if at:
        if domain.strip().lower() == "lid":
            return "a LID is not a phone number"
        if domain.strip().lower() not in _JID_DOMAINS:
            return "not a WhatsApp user JID"
        user = user.partition(":")[0]
    user = user.removeprefix("+")
    if not _DIGITS.fullmatch(user):
        return "not ASCII digits"
    if not MIN_DIGITS <= len(user) <= MAX_DIGITS:
        return f"not {MIN_DIGITS}-{MAX_DIGITS} digits (E.164)"
    if user[0] == "0":
        return "starts with 0 (no country code does)"
    if len(set(user)) == 1:
        return "one digit repeated"
    return None


def e164_phone(value: Any) -> str | None:
    """The normalised E.164 digits (no ``+``) of a session's phone, or None (see :func:`phone_rejection`)."""
    if phone_rejection(value) is not None:
        return None
    text = str(value).strip().partition("@")[0].partition(":")[0]
    return text.removeprefix("+")


# --- typed numbers (recipients, contact cards, the pairing phone) --------------------------------

DEFAULT_REGION: Final = "BR"
# What a person types around the digits: spaces, dots, dashes, slashes, parentheses; `+` in front.
_TYPED = re.compile(r"\+?[ (]*[0-9][0-9 ().\-/]*")
MAX_TYPED: Final = 40  # longer than any formatted number: refused before parsing (or caching)
_TYPED_NOISE = re.compile(r"[ ().\-/]")
# Copied from a web page or a document, a number often carries typographic spaces and dashes:
# they are formatting like their ASCII forms. Non-ASCII digits stay refused.
_TYPOGRAPHIC = str.maketrans(
    dict.fromkeys("\u00a0\u2007\u2009\u202f", " ") | dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2212", "-")
)
_BRAZIL: Final = 55


def supported_region(region: str) -> bool:
    """A region libphonenumber knows (ISO 3166-1 alpha-2, upper case: ``BR``, ``PT``, ``US``)."""
    return region in phonenumbers.SUPPORTED_REGIONS


def _legacy_brazilian_mobile(number: PhoneNumber) -> bool:
    """A Brazilian mobile without the ninth digit: WhatsApp still identifies many accounts
    registered before 2016 by that 12-digit form (55 + area code + 8 digits starting 6-9), so it is
    kept as given. It is accepted only where the same number with the ninth digit is a valid mobile
    of that area code; the ninth digit is never added or dropped."""
    national = str(number.national_number)
    if number.country_code != _BRAZIL or len(national) != 10 or national[2] not in "6789":
        return False
    with_nine = PhoneNumber(country_code=_BRAZIL, national_number=int(f"{national[:2]}9{national[2:]}"))
    return phonenumbers.number_type(with_nine) in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)


@lru_cache(maxsize=1024)
def _local_lengths(region: str) -> frozenset[int]:
    """Lengths of the region's numbers dialled without their area code (8 and 9 in Brazil)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None:
        return frozenset()
    descs = (meta.general_desc, meta.fixed_line, meta.mobile)
    return frozenset(n for d in descs if d is not None for n in d.possible_length_local_only or ())


def _parse(text: str, region: str | None) -> PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException:
        return None


def _read(text: str, region: str) -> PhoneNumber | str:
    """The number meant, or why there is none. Each reading is tried as a valid number first and
    only then as a Brazilian mobile without the ninth digit, so a valid foreign number typed
    without `+` (``6591234567``: Singapore) is never taken for an old Brazilian one."""
    if text.startswith("+"):
        readings = [_parse(text, None)]
    else:
        digits = _TYPED_NOISE.sub("", text)
        national = _parse(digits, region)
        if (
            national is not None
            and len(str(national.national_number)) in _local_lengths(region)
            and not phonenumbers.is_valid_number(national)
        ):
            # A local number (98112-1710): never read as a foreign one (+98 1121710 is Iranian).
            return f"a local number without its area code: {_expected(region)}"
        readings = [national, _parse("+" + digits, None)]
    for number in readings:
        if number is not None and phonenumbers.is_valid_number(number):
            return number
    for number in readings:
        if number is not None and _legacy_brazilian_mobile(number):
            return number
    return f"not a valid phone number: {_expected(region)}"


@lru_cache(maxsize=1024)
def _example(region: str) -> str:
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    return phonenumbers.format_number(example, PhoneNumberFormat.NATIONAL) if example else ""


def _expected(region: str) -> str:
    """The two forms that are accepted, with an example of the region's."""
    example = _example(region)
    national = f"a national number of {region} with its area code, e.g. {example}," if example else "a national number"
    return f"expected {national} or an international one with its country code (+…)"


@lru_cache(maxsize=16384)  # ~4 MB when full (measured); a miss costs one parse (~100 µs)
def canonical_phone(typed: str, region: str = DEFAULT_REGION) -> tuple[str, str]:
    """``(digits, "")``: the canonical E.164 digits (no ``+``) of a typed phone, or
    ``("", problem)`` when it is not a possible number.

    ``+55 15 98112-1710`` is international. Digits without ``+`` are read first as a national
    number of ``region`` (``15981121710``, ``(15) 98112-1710`` with ``BR``; a number that already
    starts with the region's country code, ``5515981121710``, is recognised as such), then as
    international digits without the ``+`` (``12025550123``, ``447911123456``): callers have always
    sent that form. Only ASCII digits and the usual formatting are accepted. Cached: the send path
    parses each distinct recipient once per process (a libphonenumber parse costs ~50 µs).
    """
    text = typed.translate(_TYPOGRAPHIC).strip()
    if not text:
        return "", "required"
    if len(text) > MAX_TYPED or not text.isascii() or not _TYPED.fullmatch(text):
        return "", "not a phone number: only digits, spaces, ( ) . - / and a leading + are accepted"
    number = _read(text, region)
    if isinstance(number, str):
        return "", number
    digits = phonenumbers.format_number(number, PhoneNumberFormat.E164).removeprefix("+")
    if len(digits) > MAX_DIGITS:  # libphonenumber's metadata allows a few longer (German) ones
        return "", f"longer than {MAX_DIGITS} digits with the country code (E.164)"
    return digits, ""
