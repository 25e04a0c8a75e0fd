"""The one phone-number rule: what counts as the phone of a WhatsApp session.

Every path that can make an instance CONNECTED (status probe, connection webhook, registration) and
the pairing-code phone number go through :func:`e164_phone`, so they can never disagree.
"""

from __future__ import annotations

import re
from typing import Any, Final

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
