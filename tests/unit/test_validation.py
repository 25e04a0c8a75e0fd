"""Request validation: every problem reported at once, each with the field it belongs to."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from statemachine.domain import (
    Contact,
    Content,
    Document,
    Location,
    Media,
    MessageKind,
    Reaction,
    Text,
)
from statemachine.validation import (
    SendRequest,
    Violation,
    canonical_recipient,
    canonical_send,
    validate_instance_id,
    validate_send,
)

K = MessageKind
INSTANCE = "3B6XIW-ZTS923-GEAY6V"
PHONE = "5515981121710"
URL = "https://cdn.example.com/files/photo.png"


def request(content: Content | None = None, kind: MessageKind | None = None, **changes: object) -> SendRequest:
    if content is None and kind is None:
        content, kind = Text("olá"), K.TEXT
    base = SendRequest(instance_id=INSTANCE, to=PHONE, idempotency_key="order-42", kind=kind, content=content)
    return replace(base, **changes)  # type: ignore[arg-type]


def fields(violations: list[Violation]) -> list[str]:
    return [v.field for v in violations]


def test_valid_text_request_has_no_violation() -> None:
    assert validate_send(request()) == []


# --- recipient ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+55 (15) 98112-1710", "5515981121710"),
        ("  5511999990000 ", "5511999990000"),
        ("55.15.98112.1710", "5515981121710"),
        ("5515981121710", "5515981121710"),
        ("+5515981121710", "5515981121710"),
        ("5515-98112-1710", "5515981121710"),
        # national numbers of the default region (BR) get their country code
        ("15981121710", "5515981121710"),
        ("15 98112-1710", "5515981121710"),
        ("(15) 98112-1710", "5515981121710"),
        ("015 98112-1710", "5515981121710"),  # with the national trunk prefix
        ("(15)\u00a098112\u20111710", "5515981121710"),  # copied: a no-break space and hyphen
        ("+55 15 98112\u20131710", "5515981121710"),  # an en dash
        ("(11) 3234-5678", "551132345678"),  # a landline
        # international digits without '+' (what callers have always sent) stay what they are
        ("12025550123", "12025550123"),
        ("447911123456", "447911123456"),
        ("6591234567", "6591234567"),  # Singapore, not a Brazilian number of area code 65
        # Brazil's ninth mobile digit: kept as given, never added or dropped
        ("553181121710", "553181121710"),
        ("5531981121710", "5531981121710"),
        ("559199999999", "559199999999"),
        # chat ids are kept as given
        ("120363043051234567@g.us", "120363043051234567@g.us"),
        (" 176488829694091@lid ", "176488829694091@lid"),
        ("120363012345678901@newsletter", "120363012345678901@newsletter"),
        ("5511999990000@s.whatsapp.net", "5511999990000@s.whatsapp.net"),
        ("5511999990000:12@s.whatsapp.net", "5511999990000:12@s.whatsapp.net"),
        ("5511999990000@c.us", "5511999990000@c.us"),
        ("5511999990000\n", "5511999990000"),
        ("120363043051234567@g.us\n", "120363043051234567@g.us"),
    ],
)
def test_canonical_recipient(raw: str, expected: str) -> None:
    assert canonical_recipient(raw) == (expected, "")
    canonical, violations = canonical_send(request(to=raw))
    assert (canonical.to, violations) == (expected, [])


def test_the_default_region_reads_national_numbers() -> None:
    assert canonical_recipient("912 345 678", "PT") == ("351912345678", "")
    assert canonical_recipient("(202) 555-0123", "US") == ("12025550123", "")
    assert canonical_recipient("(15) 98112-1710", "PT")[0] == ""


def test_empty_to_is_required() -> None:
    assert validate_send(request(to="")) == [Violation("to", "required")]
    assert validate_send(request(to="  ")) == [Violation("to", "required")]


@pytest.mark.parametrize(
    "to",
    [
        "1234567",  # 7 digits
        "1234567890123456",  # 16 digits
        "12345678",  # 8 digits: a local number without its area code
        "123456789012345",  # 15 digits, no such number
        "0000000000000",
        "1111111111",
        "98112-1710",  # local: never read as +98 (Iran)
        "+55 15 1234",
        "+999 123456789",
        "+0 15981121710",
        "abc",
        "55 15 98112-1710 ramal 2",
        "5515981121710x",
        "+55 (15) ９８１１２-１７１０",  # fullwidth digits
        "٥٥١١٩٩٩٩٩٠٠٠٠",  # Arabic-Indic digits
        "５５１１９９９９９００００",
        "5" * 41,
        "@g.us",
        "ab@g.us",  # chat id part shorter than 3
        "1203 6304@g.us",
        "120363043051234567@example.com",
        "120363043051234567@",
        "0000000000000@s.whatsapp.net",  # a user JID's digits are an international number
        "12345678@c.us",
    ],
)
def test_bad_to_is_refused(to: str) -> None:
    violations = validate_send(request(to=to))
    assert fields(violations) == ["to"]
    assert canonical_recipient(to)[0] == ""


def test_a_refusal_says_which_forms_are_accepted() -> None:
    (violation,) = validate_send(request(to="0000000000000"))
    assert "(11) 96123-4567" in violation.description
    assert "country code" in violation.description


def test_a_contact_cards_phone_is_canonical_too() -> None:
    req = request(Contact("Ana", "(11) 98765-4321"), K.CONTACT)
    canonical, violations = canonical_send(req)
    assert violations == []
    assert canonical.content == Contact("Ana", "5511987654321")
    assert fields(validate_send(request(Contact("Ana", "0000000000000"), K.CONTACT))) == ["contact.phone"]


# --- content ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "kind"), [(None, None), (None, K.TEXT), (Text("hi"), None)], ids=["none", "no-content", "no-kind"]
)
def test_content_is_required(content: Content | None, kind: MessageKind | None) -> None:
    base = SendRequest(INSTANCE, PHONE, "k", kind, content)
    violations = validate_send(base)
    assert fields(violations) == ["content"]
    assert "required" in violations[0].description


@pytest.mark.parametrize("body", ["", " ", "\n\t "])
def test_empty_text_is_refused(body: str) -> None:
    assert validate_send(request(Text(body), K.TEXT)) == [Violation("text.body", "must not be empty")]


def test_text_limit_boundary() -> None:
    assert validate_send(request(Text("a" * 4096), K.TEXT)) == []
    assert validate_send(request(Text("é" * 4096), K.TEXT)) == []  # characters, not bytes
    assert validate_send(request(Text("a" * 4097), K.TEXT)) == [Violation("text.body", "longer than 4096 characters")]


def test_whitespace_only_oversized_text_reports_both_problems() -> None:
    assert fields(validate_send(request(Text(" " * 5000), K.TEXT))) == ["text.body", "text.body"]


@pytest.mark.parametrize("kind", [K.IMAGE, K.AUDIO, K.VIDEO, K.STICKER])
def test_media_url_is_required_under_the_kind_field(kind: MessageKind) -> None:
    assert validate_send(request(Media(""), kind)) == [Violation(f"{kind.lower()}.url", "required")]


@pytest.mark.parametrize("kind", [K.IMAGE, K.AUDIO, K.VIDEO, K.STICKER])
def test_media_with_valid_url_passes(kind: MessageKind) -> None:
    assert validate_send(request(Media(URL, caption="legenda"), kind)) == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://cdn.example.com/a.png",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:image/png;base64,iVBORw0KGgo=",
        "/relative/a.png",
        "cdn.example.com/a.png",
        "http://",
        "https:///a.png",
        "https://cdn.example.com/a b.png",
        "https://cdn.example.com/a.png\n",
        "http://[::1",  # urlsplit raises ValueError
    ],
)
def test_malformed_or_non_http_url_is_refused(url: str) -> None:
    violations = validate_send(request(Media(url), K.IMAGE))
    assert fields(violations) == ["image.url"]


def test_url_length_boundary() -> None:
    prefix = "https://cdn.example.com/"
    ok = prefix + "a" * (2048 - len(prefix))
    assert len(ok) == 2048
    assert validate_send(request(Media(ok), K.IMAGE)) == []
    assert validate_send(request(Media(ok + "a"), K.IMAGE)) == [Violation("image.url", "longer than 2048 characters")]


def test_caption_length_boundary() -> None:
    assert validate_send(request(Media(URL, caption="c" * 1024), K.VIDEO)) == []
    assert fields(validate_send(request(Media(URL, caption="c" * 1025), K.VIDEO))) == ["video.caption"]


def test_document_ok() -> None:
    assert validate_send(request(Document(URL, "contrato.pdf"), K.DOCUMENT)) == []


@pytest.mark.parametrize("file_name", ["", "   "])
def test_document_without_file_name_is_refused(file_name: str) -> None:
    assert validate_send(request(Document(URL, file_name), K.DOCUMENT)) == [Violation("document.file_name", "required")]


def test_document_checks_url_and_lengths() -> None:
    doc = Document("not a url", "f" * 256, caption="c" * 1025, extension="e" * 17)
    assert fields(validate_send(request(doc, K.DOCUMENT))) == [
        "document.url",
        "document.file_name",
        "document.caption",
        "document.extension",
    ]


@pytest.mark.parametrize(("lat", "lon"), [(0.0, 0.0), (90.0, 180.0), (-90.0, -180.0), (-23.5505, -46.6333)])
def test_location_in_range(lat: float, lon: float) -> None:
    assert validate_send(request(Location(lat, lon), K.LOCATION)) == []


@pytest.mark.parametrize(
    ("lat", "lon", "bad"),
    [
        (90.0001, 0.0, ["location.latitude"]),
        (-90.5, 0.0, ["location.latitude"]),
        (math.nan, 0.0, ["location.latitude"]),
        (math.inf, 0.0, ["location.latitude"]),
        (0.0, 180.0001, ["location.longitude"]),
        (0.0, -181.0, ["location.longitude"]),
        (0.0, math.nan, ["location.longitude"]),
        (0.0, -math.inf, ["location.longitude"]),
        (math.nan, math.nan, ["location.latitude", "location.longitude"]),
        (100.0, 200.0, ["location.latitude", "location.longitude"]),
    ],
)
def test_location_out_of_range_or_nan(lat: float, lon: float, bad: list[str]) -> None:
    assert fields(validate_send(request(Location(lat, lon), K.LOCATION))) == bad


@pytest.mark.parametrize("phone", ["5515981121710", "+55 (15) 98112-1710", "55 15 98112 1710"])
def test_contact_phone_accepted_after_normalisation(phone: str) -> None:
    assert validate_send(request(Contact("Maria", phone), K.CONTACT)) == []


@pytest.mark.parametrize("phone", ["", "123", "maria", "120363043051234567@g.us", "1" * 16])
def test_contact_phone_refused(phone: str) -> None:
    assert fields(validate_send(request(Contact("Maria", phone), K.CONTACT))) == ["contact.phone"]


def test_contact_name_required() -> None:
    assert fields(validate_send(request(Contact("  ", PHONE), K.CONTACT))) == ["contact.name"]


def test_reaction_ok() -> None:
    assert validate_send(request(Reaction("👍", "3EB00CD0857BA22EAEDCD9"), K.REACTION)) == []


def test_reaction_without_target_is_refused() -> None:
    assert validate_send(request(Reaction("👍", ""), K.REACTION)) == [
        Violation("reaction.target_provider_message_id", "required")
    ]


@pytest.mark.parametrize("emoji", ["", "x" * 17])
def test_reaction_emoji_refused(emoji: str) -> None:
    assert fields(validate_send(request(Reaction(emoji, "3EB0"), K.REACTION))) == ["reaction.emoji"]


def test_reaction_target_length() -> None:
    assert validate_send(request(Reaction("👍", "a" * 128), K.REACTION)) == []
    assert fields(validate_send(request(Reaction("👍", "a" * 129), K.REACTION))) == [
        "reaction.target_provider_message_id"
    ]


# --- envelope -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "ok"), [(-1, False), (0, True), (1, True), (15, True), (16, False)])
def test_delay_bounds(delay: int, ok: bool) -> None:
    violations = validate_send(request(delay_seconds=delay))
    assert fields(violations) == ([] if ok else ["delay_seconds"])


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("", True),  # optional: the service makes one up
        ("a", True),
        ("k" * 128, True),
        ("k" * 129, False),
        ("has space", False),
        ("tab\there", False),
        ("ação", False),
        ("~!@#$%^&*()_+{}|:<>?", True),
        ("\x7f", False),
    ],
)
def test_idempotency_key_limits(key: str, ok: bool) -> None:
    violations = validate_send(request(idempotency_key=key))
    assert fields(violations) == ([] if ok else ["idempotency_key"])


def test_idempotency_key_with_trailing_newline_is_refused() -> None:
    assert fields(validate_send(request(idempotency_key="order-42\n"))) == ["idempotency_key"]


def test_reply_to_length() -> None:
    assert validate_send(request(reply_to="r" * 128)) == []
    assert fields(validate_send(request(reply_to="r" * 129))) == ["reply_to_provider_message_id"]


@pytest.mark.parametrize("instance_id", [INSTANCE, "LITE-4IW93E-MGVYDW", "a", "a" * 64, "inst_1.prod", "9abc"])
def test_instance_id_accepted(instance_id: str) -> None:
    assert validate_instance_id(instance_id) == []


def test_instance_id_required() -> None:
    assert validate_instance_id("") == [Violation("instance_id", "required")]


@pytest.mark.parametrize(
    "instance_id", ["a" * 65, "-abc", ".abc", "_abc", "a b", "a/b", "a?b=c", "ação", " abc", "abc "]
)
def test_instance_id_refused(instance_id: str) -> None:
    assert fields(validate_instance_id(instance_id)) == ["instance_id"]


def test_instance_id_field_name_is_configurable() -> None:
    assert fields(validate_instance_id("", field="instances[2].id")) == ["instances[2].id"]


def test_instance_id_with_trailing_newline_is_refused() -> None:
    assert fields(validate_instance_id("3B6XIW-ZTS923-GEAY6V\n")) == ["instance_id"]


def test_validate_send_checks_instance_id() -> None:
    assert fields(validate_send(request(instance_id="bad id"))) == ["instance_id"]


# --- several problems at once -------------------------------------------------------------------


def test_all_violations_reported_at_once() -> None:
    req = SendRequest(
        instance_id="",
        to="",
        idempotency_key="has space",
        kind=K.TEXT,
        content=Text(""),
        reply_to="r" * 200,
        delay_seconds=99,
    )
    assert fields(validate_send(req)) == [
        "instance_id",
        "to",
        "idempotency_key",
        "reply_to_provider_message_id",
        "delay_seconds",
        "text.body",
    ]


def test_envelope_violations_still_reported_without_content() -> None:
    req = SendRequest(instance_id="", to="12", idempotency_key="", kind=None, content=None, delay_seconds=-5)
    assert fields(validate_send(req)) == ["instance_id", "to", "delay_seconds", "content"]


def test_several_content_violations_at_once() -> None:
    req = request(Location(math.nan, 999.0, name="n" * 257, address="a" * 513), K.LOCATION, to="x")
    assert fields(validate_send(req)) == [
        "to",
        "location.latitude",
        "location.longitude",
        "location.name",
        "location.address",
    ]


def test_every_violation_has_a_description() -> None:
    req = SendRequest("", "", "a b", K.CONTACT, Contact("", "1"), reply_to="r" * 200, delay_seconds=-1)
    violations = validate_send(req)
    assert len(violations) >= 6
    assert all(v.description.strip() for v in violations)
