"""Every field violation the services write (in English) reads in Portuguese for a pt-BR caller
(google.rpc.BadRequest.FieldViolation.localized_message), so no refusal mixes two languages."""

from __future__ import annotations

import re
from pathlib import Path

from services.i18n import violation_text

REPO = Path(__file__).resolve().parents[2]
# Violation("field", "text") and Violation("field", f"text {value}"), possibly over several lines.
WRITTEN = re.compile(r'Violation\(\s*(?:"[^"]*"|field),\s*(f?)"([^"]+)"', re.S)


def descriptions() -> list[str]:
    found = []
    for folder in ("services", "statemachine", "adapters"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            for is_f, text in WRITTEN.findall(path.read_text()):
                found.append(re.sub(r"\{[^}]*\}", "5", text) if is_f else text)
    return found


def test_every_written_violation_has_its_pt_br_text() -> None:
    written = descriptions()
    assert len(written) > 20  # the scan itself still finds the validators
    untranslated = [text for text in written if violation_text(text, "pt-BR") == text]
    assert untranslated == []


def test_english_callers_read_the_text_as_written() -> None:
    assert violation_text("required on first registration", "en") == "required on first registration"
    assert violation_text("required on first registration", "pt-BR") == "obrigatório no primeiro registro"
    assert violation_text("longer than 200 characters", "pt-BR") == "mais de 200 caracteres"
    assert violation_text("something new", "pt-BR") == "something new"
