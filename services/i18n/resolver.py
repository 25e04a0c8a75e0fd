"""The one locale resolver: which of the supported languages (pt-BR first, English) a caller gets,
and the lookup every catalogue of this package is read through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LANGS = ("pt-BR", "en")
DEFAULT_LANG = "pt-BR"


def normalize_lang(value: str | None) -> str | None:
    """'en', 'en-US', 'EN_gb' → 'en'; 'pt', 'pt-BR', 'pt_PT' → 'pt-BR'; anything else → None."""
    if not value:
        return None
    primary = value.strip().replace("_", "-").split("-", 1)[0].lower()
    if primary == "en":
        return "en"
    if primary == "pt":
        return "pt-BR"
    return None


def resolve_lang(query: str | None, accept_language: str | None = None) -> str:
    """`?lang=` wins; else the most preferred supported language of Accept-Language; else pt-BR."""
    chosen = normalize_lang(query)
    if chosen:
        return chosen
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                weight = float(params[2:])
            except ValueError:
                weight = 0.0
        lang = normalize_lang(tag)
        if lang and weight > 0:
            ranked.append((-weight, position, lang))
    return sorted(ranked)[0][2] if ranked else DEFAULT_LANG


def lang_of(lang: str) -> str:
    """A supported language for `lang`, pt-BR when it names none."""
    return normalize_lang(lang) or DEFAULT_LANG


def lookup(catalogue: Mapping[str, Mapping[str, str]], lang: str, key: str, /, **values: Any) -> str:
    """`key` of a per-language catalogue in `lang` (pt-BR when it names no supported language),
    formatted with `values` when given."""
    found = catalogue[lang_of(lang)][key]
    return found.format(**values) if values else found
