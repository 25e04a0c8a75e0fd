"""The operator vocabulary the CLI and the status page share: state labels and colours (tones),
message and source labels, reason labels, masked recipients, durations and relative times."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.i18n.guidance import reason_text
from services.i18n.resolver import DEFAULT_LANG, lang_of
from statemachine.domain import Reason


@dataclass(frozen=True, slots=True)
class StateView:
    """How an instance state reads to an operator: a label and a colour (tone)."""

    key: str  # online, incomplete, degraded, stalled, disconnected, unknown
    label: str
    tone: str  # green, orange, yellow, red, grey, slate


_STATE_LABELS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "online": "Online",
        "unconfirmed": "Online, entrega sem confirmação",
        "incomplete": "Sessão incompleta",
        "degraded": "Degradada (timeout/gateway)",
        "degraded_any": "Degradada",
        "stalled": "Entrega parada",
        "disconnected": "Desconectada",
        "unknown": "Desconhecida",
    },
    "en": {
        "online": "Online",
        "unconfirmed": "Online, delivery unconfirmed",
        "incomplete": "Session incomplete",
        "degraded": "Degraded (timeout/gateway)",
        "degraded_any": "Degraded",
        "stalled": "Delivery stalled",
        "disconnected": "Disconnected",
        "unknown": "Unknown",
    },
}
_TONES = {
    "online": "green",
    "unconfirmed": "orange",
    "incomplete": "orange",
    "degraded": "yellow",
    "degraded_any": "yellow",
    "stalled": "red",
    "disconnected": "grey",
    "unknown": "slate",
}


def state_view(state: str, reason: str | None, lang: str = DEFAULT_LANG) -> StateView:
    """`reason=None` means "not known" (e.g. the *from* side of an old change): a generic label."""
    state = state.removeprefix("INSTANCE_STATE_")
    if state == "CONNECTED":
        key = "unconfirmed" if reason == Reason.WEBHOOKS_UNCONFIGURED else "online"
    elif state == "SESSION_INCOMPLETE":
        key = "incomplete"
    elif state == "DEGRADED":
        key = "stalled" if reason == Reason.DELIVERY_STALLED else "degraded" if reason is not None else "degraded_any"
    elif state == "DISCONNECTED":
        key = "disconnected"
    else:
        key = "unknown"
    return StateView(key, _STATE_LABELS[lang_of(lang)][key], _TONES[key])


_MESSAGE_LABELS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "PENDING": "Pendente",
        "SENT": "Enviada",
        "STUCK": "Parada (sem entrega)",
        "DELIVERED": "Entregue",
        "READ": "Lida",
        "PLAYED": "Reproduzida",
        "FAILED": "Falhou",
        "HELD": "Em espera",
        "QUEUED": "Na fila",
    },
    "en": {
        "PENDING": "Pending",
        "SENT": "Sent",
        "STUCK": "Stuck (not delivered)",
        "DELIVERED": "Delivered",
        "READ": "Read",
        "PLAYED": "Played",
        "FAILED": "Failed",
        "HELD": "Held",
        "QUEUED": "Queued",
    },
}
MESSAGE_TONES = {
    "PENDING": "slate",
    "SENT": "slate",
    "STUCK": "red",
    "DELIVERED": "green",
    "READ": "green",
    "PLAYED": "green",
    "FAILED": "red",
    "HELD": "yellow",
}


def message_label(state: str, stuck: bool, lang: str = DEFAULT_LANG) -> str:
    state = state.removeprefix("MESSAGE_STATE_")
    key = "STUCK" if stuck and state == "SENT" else state
    return _MESSAGE_LABELS[lang_of(lang)].get(key, state)


_SOURCE_LABELS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "webhook": "webhook",
        "probe": "verificação",
        "registration": "registro",
        "send": "envio",
        "sweeper": "varredura",
        "retry": "reenvio",
        "preflight": "pré-verificação",
        "reconciler": "reconciliação",
    },
    "en": {
        "webhook": "webhook",
        "probe": "probe",
        "registration": "registration",
        "send": "send",
        "sweeper": "sweeper",
        "retry": "retry",
        "preflight": "preflight",
        "reconciler": "reconciler",
    },
}


def source_label(source: str, lang: str = DEFAULT_LANG) -> str:
    return _SOURCE_LABELS[lang_of(lang)].get(source, source)


# Provider names as each provider writes its own (the same in every language).
_PROVIDER_LABELS = {"WAPI": "W-API", "ZAPI": "Z-API", "EVOLUTION": "Evolution API"}


def provider_label(provider: str) -> str:
    """The provider's own name for an instance's provider code (statemachine.providers.ProviderKind)."""
    return _PROVIDER_LABELS.get(provider, provider)


# Reasons statemachine.domain has no operator text for (it returns the code itself).
_EXTRA_REASONS: dict[str, dict[str, str]] = {
    "pt-BR": {
        Reason.REGISTERED: "Registrada; aguardando a primeira verificação.",
        "STUCK": "Aceita pela W-API, sem confirmação de entrega.",
    },
    "en": {
        Reason.REGISTERED: "Registered; waiting for the first check.",
        "STUCK": "Accepted by W-API, no delivery receipt.",
    },
}


def reason_label(reason: str, lang: str = DEFAULT_LANG) -> str:
    """The operator's text for a machine reason; the code itself when there is none."""
    if not reason:
        return ""
    lang = lang_of(lang)
    text = reason_text(reason, lang)
    if text == reason:
        text = _EXTRA_REASONS[lang].get(reason, reason)
    return text


MASK = "•"


def mask_recipient(value: str) -> str:
    """5515981121710 → 5515•••••1710; 120363025246125486@g.us → 1203••••••••••5486@g.us."""
    if not value:
        return "—"
    local, at, domain = value.partition("@")
    n = len(local)
    keep = 4 if n >= 10 else 2 if n >= 6 else 0
    masked = local[:keep] + MASK * (n - 2 * keep) + (local[n - keep :] if keep else "")
    return masked + at + domain


_UNITS: dict[str, dict[str, str]] = {
    "pt-BR": {"now": "agora", "ago": "há {d}", "s": "{n} s", "min": "{n} min", "h": "{n} h", "d": "{n} d"},
    "en": {"now": "just now", "ago": "{d} ago", "s": "{n} s", "min": "{n} min", "h": "{n} h", "d": "{n} d"},
}


def time_units(lang: str) -> dict[str, str]:
    """The templates both `duration()` here and the page's JavaScript use."""
    return dict(_UNITS[lang_of(lang)])


def duration(seconds: float, lang: str = DEFAULT_LANG) -> str:
    units = _UNITS[lang_of(lang)]
    s = max(0, int(seconds))
    if s < 60:
        return units["s"].format(n=s)
    if s < 3600:
        return units["min"].format(n=s // 60)
    if s < 86400:
        return units["h"].format(n=s // 3600)
    return units["d"].format(n=s // 86400)


def ago(at: datetime | None, now: datetime, lang: str = DEFAULT_LANG) -> str:
    if at is None:
        return "—"
    seconds = (now - at).total_seconds()
    units = _UNITS[lang_of(lang)]
    if seconds < 1:
        return units["now"]
    return units["ago"].format(d=duration(seconds, lang))


def iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
