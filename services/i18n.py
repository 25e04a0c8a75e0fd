"""Every user-facing text, pt-BR first and English, and the one locale resolver.

The gRPC answers (google.rpc.LocalizedMessage, InstanceHealth.reason_message / next_step), the
operator CLI and the status page all read their words here, so a screen, a terminal and an error
detail say the same thing in the same words. Pure tables and functions: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from statemachine.domain import InstanceState, Reason

# --- the locale ------------------------------------------------------------------------------

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


# --- reasons (google.rpc.LocalizedMessage, InstanceHealth.reason_message) ---------------------

# Human text a UI can show as is (google.rpc.LocalizedMessage), pt-BR first.
REASON_TEXT_PT_BR: dict[Reason, str] = {
    Reason.SESSION_INCOMPLETE: ("Instância conectada sem sessão válida. Reconecte por código de pareamento/telefone."),
    Reason.TIMEOUT_OR_GATEWAY: (
        "A W-API não respondeu (timeout ou erro de gateway). O envio foi bloqueado até a instância responder novamente."
    ),
    Reason.INSTANCE_DISCONNECTED: "Instância desconectada. Leia o QR code ou use o código de pareamento.",
    Reason.HEALTH_UNKNOWN: "Estado da instância ainda desconhecido. Aguarde a verificação e tente de novo.",
    Reason.TOKEN_INVALID: "Token da instância inválido ou expirado. Atualize o token na W-API.",
    Reason.INSTANCE_NOT_FOUND: "Instância não encontrada na W-API (excluída ou expirada).",
    Reason.DELIVERY_STALLED: (
        "Mensagens enviadas não estão sendo entregues. Envios pausados até uma entrega ou reconexão."
    ),
    Reason.NOT_SUPPORTED_BY_PLAN: "Este tipo de mensagem não é suportado pelo plano LITE da instância.",
    Reason.PROVIDER_ERROR: "A W-API recusou a mensagem.",
    Reason.PROVIDER_TIMEOUT: "A W-API não respondeu a tempo; a mensagem não foi confirmada.",
    Reason.PROVIDER_UNAVAILABLE: "A W-API está indisponível no momento.",
    Reason.PROVIDER_NO_MESSAGE_ID: "A W-API respondeu sem identificador da mensagem; o envio não foi confirmado.",
    Reason.OUTCOME_UNKNOWN: "Não foi possível confirmar se a mensagem foi enviada.",
    Reason.SEND_IN_PROGRESS: "Outro envio com esta chave ainda está em andamento. Tente de novo em instantes.",
    Reason.PHONE_CONFIRMED: "Conectada, com número confirmado.",
    Reason.WEBHOOKS_UNCONFIGURED: (
        "Conectada, mas a entrega não pode ser confirmada: os webhooks da W-API não apontam (comprovadamente) "
        "para este serviço, e nenhum recibo chegou recentemente."
    ),
    Reason.IDEMPOTENCY_KEY_REUSED: "Chave de idempotência já usada com outro conteúdo.",
    Reason.MESSAGE_NOT_RETRYABLE: "Só mensagens com falha podem ser reenviadas.",
    Reason.MESSAGE_NOT_FOUND: "Mensagem não encontrada.",
    Reason.RESTARTING: "Instância reiniciando. Aguarde a reconexão; os envios voltam quando o número for confirmado.",
    Reason.PAIRING_IN_PROGRESS: (
        "Pareamento em andamento. Digite o código no WhatsApp (Aparelhos conectados) ou leia o QR code."
    ),
    Reason.RECOVERY_IN_PROGRESS: "Já existe uma ação de recuperação em andamento para esta instância.",
    Reason.RECOVERY_RATE_LIMITED: "Muitas ações de recuperação seguidas. Aguarde antes de tentar de novo.",
    Reason.PUBLIC_URL_NOT_CONFIGURED: "URL pública não configurada (--public-url): sem destino para os webhooks.",
    Reason.PROVIDER_QUEUED: "A W-API colocou a mensagem na fila; ainda não foi enviada.",
}

REASON_TEXT_EN: dict[Reason, str] = {
    Reason.SESSION_INCOMPLETE: "Instance is connected without a valid session. Reconnect by pairing code/phone.",
    Reason.TIMEOUT_OR_GATEWAY: "W-API did not answer (timeout or gateway error); sends are blocked meanwhile.",
    Reason.INSTANCE_DISCONNECTED: "Instance is disconnected. Scan the QR code or use the pairing code.",
    Reason.HEALTH_UNKNOWN: "Instance health is not known yet. Wait for the check and try again.",
    Reason.TOKEN_INVALID: "Instance token is invalid or expired.",
    Reason.INSTANCE_NOT_FOUND: "Instance does not exist at W-API (deleted or expired).",
    Reason.DELIVERY_STALLED: "Sent messages are not being delivered; sends paused until a delivery or reconnect.",
    Reason.NOT_SUPPORTED_BY_PLAN: "This message kind is not available on the instance's LITE plan.",
    Reason.PROVIDER_ERROR: "W-API refused the message.",
    Reason.PROVIDER_TIMEOUT: "W-API did not answer in time; the message was not confirmed.",
    Reason.PROVIDER_UNAVAILABLE: "W-API is unavailable right now.",
    Reason.PROVIDER_NO_MESSAGE_ID: "W-API answered without a message id; the send was not confirmed.",
    Reason.OUTCOME_UNKNOWN: "Could not confirm whether the message was sent.",
    Reason.SEND_IN_PROGRESS: "Another attempt with this idempotency key is still running. Retry shortly.",
    Reason.PHONE_CONFIRMED: "Connected with a confirmed phone number.",
    Reason.WEBHOOKS_UNCONFIGURED: (
        "Connected, but delivery cannot be confirmed: W-API's webhooks are not known to point at this service, "
        "and no receipt arrived lately."
    ),
    Reason.RESTARTING: "Instance is restarting. Sends resume once the phone number is confirmed.",
    Reason.PAIRING_IN_PROGRESS: "Pairing in progress. Type the code in WhatsApp (Linked devices) or scan the QR code.",
    Reason.RECOVERY_IN_PROGRESS: "A recovery action for this instance is already running.",
    Reason.RECOVERY_RATE_LIMITED: "Too many recovery actions in a row. Wait before trying again.",
    Reason.PUBLIC_URL_NOT_CONFIGURED: "No public URL configured (--public-url): nowhere to point the webhooks at.",
    Reason.PROVIDER_QUEUED: "W-API queued the message; it has not been sent yet.",
}


def reason_text(reason: str, locale: str = "pt-BR") -> str:
    """The reason's text in the locale; an unknown reason reads as itself.

    Reasons are StrEnum members, which hash and compare as their values: a plain string finds
    its entry without building the enum (a ListInstances maps a thousand of these).
    """
    table = cast("dict[str, str]", REASON_TEXT_EN if locale[:2].lower() == "en" else REASON_TEXT_PT_BR)
    return table.get(reason, reason)


# --- what the operator should do next, for an instance's health -------------------------------

_NEXT_PT_BR: dict[str, str] = {
    Reason.SESSION_INCOMPLETE: (
        "Peça um código de pareamento (wapi-guard connect INSTÂNCIA --phone NÚMERO) e digite-o no WhatsApp "
        "do celular em Aparelhos conectados > Conectar com número de telefone."
    ),
    Reason.INSTANCE_DISCONNECTED: (
        "Leia o QR code (wapi-guard connect INSTÂNCIA) ou peça um código de pareamento com --phone NÚMERO."
    ),
    Reason.PAIRING_IN_PROGRESS: (
        "Digite o código no celular (Aparelhos conectados > Conectar com número de telefone) ou leia o QR code; "
        "a instância volta a CONNECTED quando o número for confirmado."
    ),
    Reason.RESTARTING: "Aguarde a reconexão (alguns segundos) e confira com wapi-guard instances.",
    Reason.DELIVERY_STALLED: (
        "Reinicie a instância (wapi-guard restart INSTÂNCIA); se continuar, reconecte por código de pareamento."
    ),
    Reason.TIMEOUT_OR_GATEWAY: "Aguarde a W-API responder; a próxima verificação libera os envios.",
    Reason.TOKEN_INVALID: "Atualize o token: wapi-guard instances add INSTÂNCIA --token NOVO_TOKEN.",
    Reason.INSTANCE_NOT_FOUND: "A instância não existe mais na W-API: crie outra e cadastre-a (instances add).",
    Reason.HEALTH_UNKNOWN: "Verifique agora: wapi-guard instances --refresh.",
}

_NEXT_EN: dict[str, str] = {
    Reason.SESSION_INCOMPLETE: (
        "Request a pairing code (wapi-guard connect INSTANCE --phone NUMBER) and type it in WhatsApp on the phone "
        "under Linked devices > Link with phone number."
    ),
    Reason.INSTANCE_DISCONNECTED: "Scan the QR code (wapi-guard connect INSTANCE) or ask for a pairing code (--phone).",
    Reason.PAIRING_IN_PROGRESS: (
        "Type the code on the phone (Linked devices > Link with phone number) or scan the QR code; the instance is "
        "CONNECTED again once its phone number is confirmed."
    ),
    Reason.RESTARTING: "Wait for the reconnection (a few seconds) and check with wapi-guard instances.",
    Reason.DELIVERY_STALLED: "Restart the instance (wapi-guard restart INSTANCE); if it persists, pair it again.",
    Reason.TIMEOUT_OR_GATEWAY: "Wait for W-API to answer; the next check re-opens sends.",
    Reason.TOKEN_INVALID: "Update the token: wapi-guard instances add INSTANCE --token NEW_TOKEN.",
    Reason.INSTANCE_NOT_FOUND: "The instance no longer exists at W-API: create another one and register it.",
    Reason.HEALTH_UNKNOWN: "Check now: wapi-guard instances --refresh.",
}


def webhooks_next_step(instance_id: str, public_url: str | None, secret_set: bool, locale: str = "pt-BR") -> str:
    """What to do about an instance whose deliveries cannot be confirmed: configure W-API's webhooks
    (the command when --public-url is set, otherwise the URL to paste at W-API). The webhook secret
    is never shown: its place in the URL is named instead."""
    en = locale.lower().startswith("en")
    tail = "/webhooks/wapi/" + (("<WAPIGUARD_WEBHOOK_SECRET>") if secret_set else "")
    if public_url:
        url = public_url.rstrip("/") + tail.rstrip("/")
        if en:
            return f"Point W-API's webhooks at this service: wapi-guard webhooks configure {instance_id} (URL {url})."
        return (
            f"Aponte os webhooks da W-API para este serviço: wapi-guard webhooks configure {instance_id} (URL {url})."
        )
    url = "https://<public address of this service>" + tail.rstrip("/")
    if en:
        return (
            f"At W-API, set the instance's webhooks (delivery, message status, connected, disconnected, received) "
            f"to {url}; or start serve with --public-url and run: wapi-guard webhooks configure {instance_id}."
        )
    return (
        f"Na W-API, aponte os webhooks da instância (entrega, status da mensagem, conectado, desconectado, recebida) "
        f"para {url.replace('<public address of this service>', '<endereço público deste serviço>')}; ou inicie o "
        f"serve com --public-url e rode: wapi-guard webhooks configure {instance_id}."
    )


def next_step(state: InstanceState, reason: str, locale: str = "pt-BR") -> str:
    """Empty for a healthy instance: guidance disappears once it is CONNECTED."""
    if state is InstanceState.CONNECTED:
        return ""
    table = _NEXT_EN if locale.lower().startswith("en") else _NEXT_PT_BR
    if reason in table:
        return table[reason]
    if state is InstanceState.UNKNOWN:
        return table[Reason.HEALTH_UNKNOWN]
    if state is InstanceState.SESSION_INCOMPLETE:
        return table[Reason.SESSION_INCOMPLETE]
    if state is InstanceState.DISCONNECTED:
        return table[Reason.INSTANCE_DISCONNECTED]
    return table[Reason.TIMEOUT_OR_GATEWAY]


# --- operator vocabulary: state labels, colours, masked numbers, relative times ---------------


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
    },
    "en": {
        "PENDING": "Pending",
        "SENT": "Sent",
        "STUCK": "Stuck (not delivered)",
        "DELIVERED": "Delivered",
        "READ": "Read",
        "PLAYED": "Played",
        "FAILED": "Failed",
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


# --- the operator CLI ------------------------------------------------------------------------

CLI_TEXTS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "id": "ID",
        "name": "NOME",
        "state": "ESTADO",
        "phone": "TELEFONE",
        "reason": "MOTIVO",
        "stuck": "PARADAS",
        "checked": "VERIFICADA",
        "instance": "INSTÂNCIA",
        "to": "DESTINO",
        "age": "IDADE",
        "attempts": "TENTATIVAS",
        "no_instances": "Nenhuma instância registrada.",
        "no_messages": "Nenhuma mensagem.",
        "probing": "Verificando instâncias",
        "probe_failed": "verificação de {id} falhou: {code}",
        "sent_ok": "Mensagem aceita pela W-API — estado: {label} ({state})",
        "sent_note": "Ainda sem confirmação de entrega; acompanhe com: wapi-guard messages --instance {instance}",
        "delivered_ok": "Mensagem {label} ({state})",
        "blocked": "Envio bloqueado: {reason}",
        "failed": "Envio falhou: {reason}",
        "stored_failed": "A mensagem foi registrada como FAILED (id {id}).",
        "message_id": "id da mensagem",
        "provider_id": "id no provedor",
        "key": "chave",
        "retry_hint": "Quando a instância puder enviar, reenvie esta mesma mensagem com: wapi-guard retry {id}",
        "unknown_outcome": (
            "não se sabe se a mensagem foi enviada. Repita com --key {key} (a mesma chave nunca envia duas "
            "vezes) ou consulte wapi-guard messages."
        ),
        "err_unavailable": "servidor inacessível em {server} ({code}): nada foi respondido",
        "err_timeout": "o servidor não respondeu em {timeout:g} s ({server})",
        "err_refused": "recusado pelo servidor",
        "err_conflict": "conflito",
        "err_aborted": "não feito agora (outra operação em andamento)",
        "err_exhausted": "limite atingido",
        "err_storage": "o armazenamento do servidor está indisponível ({server}); tente de novo em instantes",
        "err_server_unavailable": "indisponível no momento",
        "err_server_timeout": "sem resposta a tempo no servidor",
        "err_unimplemented": "o servidor em {server} não conhece este comando (versão diferente?)",
        "err_internal": "erro interno do servidor",
        "err_cancelled": "chamada cancelada ({server})",
        "retry_after": "tente de novo em {wait}",
        "err_auth": "não autenticado: token ausente ou inválido (use --token ou WAPIGUARD_TOKEN)",
        "err_denied": "permissão negada: este token não pode acessar {what}",
        "err_not_found": "não encontrado: {what}",
        "err_no_instance": "instância {id} não está registrada no wapi-guard",
        "err_no_message": "mensagem {id} não encontrada",
        "err_invalid": "pedido inválido: {what}",
        "err_tls": "não foi possível ler {path}: {error}",
        "hint_scope": "dica: um token restrito a várias instâncias precisa de --instance",
        "f_instance": "Instância",
        "f_name": "Nome",
        "f_state": "Estado",
        "f_can_send": "Pode enviar",
        "f_reason": "Motivo",
        "f_phone": "Telefone",
        "f_plan": "Plano",
        "f_stuck": "Mensagens paradas",
        "f_changed": "Estado desde",
        "f_checked": "Verificada",
        "f_last_event": "Último evento",
        "f_webhooks": "Webhooks",
        "f_next": "Próximo passo",
        "webhooks_ok": "{state}, entregas confirmáveis",
        "webhooks_unconfirmed": "{state}: a entrega NÃO pode ser confirmada",
        "yes": "sim",
        "no": "não",
    },
    "en": {
        "id": "ID",
        "name": "NAME",
        "state": "STATE",
        "phone": "PHONE",
        "reason": "REASON",
        "stuck": "STUCK",
        "checked": "CHECKED",
        "instance": "INSTANCE",
        "to": "TO",
        "age": "AGE",
        "attempts": "ATTEMPTS",
        "no_instances": "No instances registered.",
        "no_messages": "No messages.",
        "probing": "Probing instances",
        "probe_failed": "probe of {id} failed: {code}",
        "sent_ok": "Message accepted by W-API — state: {label} ({state})",
        "sent_note": "No delivery receipt yet; follow it with: wapi-guard messages --instance {instance}",
        "delivered_ok": "Message {label} ({state})",
        "blocked": "Send blocked: {reason}",
        "failed": "Send failed: {reason}",
        "stored_failed": "The message was stored as FAILED (id {id}).",
        "message_id": "message id",
        "provider_id": "provider id",
        "key": "key",
        "retry_hint": "Once the instance can send, send this same message again with: wapi-guard retry {id}",
        "unknown_outcome": (
            "whether the message was sent is unknown. Repeat with --key {key} (the same key never sends "
            "twice) or check wapi-guard messages."
        ),
        "err_unavailable": "server unreachable at {server} ({code}): nothing was answered",
        "err_timeout": "the server did not answer within {timeout:g} s ({server})",
        "err_refused": "refused by the server",
        "err_conflict": "conflict",
        "err_aborted": "not done now (another operation in progress)",
        "err_exhausted": "limit reached",
        "err_storage": "the server's storage is unavailable ({server}); try again shortly",
        "err_server_unavailable": "unavailable right now",
        "err_server_timeout": "no answer in time at the server",
        "err_unimplemented": "the server at {server} does not know this command (another version?)",
        "err_internal": "server error",
        "err_cancelled": "call cancelled ({server})",
        "retry_after": "try again in {wait}",
        "err_auth": "unauthenticated: missing or invalid token (use --token or WAPIGUARD_TOKEN)",
        "err_denied": "permission denied: this token may not access {what}",
        "err_not_found": "not found: {what}",
        "err_no_instance": "instance {id} is not registered in wapi-guard",
        "err_no_message": "message {id} not found",
        "err_invalid": "invalid request: {what}",
        "err_tls": "cannot read {path}: {error}",
        "hint_scope": "hint: a token scoped to several instances needs --instance",
        "f_instance": "Instance",
        "f_name": "Name",
        "f_state": "State",
        "f_can_send": "Can send",
        "f_reason": "Reason",
        "f_phone": "Phone",
        "f_plan": "Plan",
        "f_stuck": "Stuck messages",
        "f_changed": "State since",
        "f_checked": "Checked",
        "f_last_event": "Last event",
        "f_webhooks": "Webhooks",
        "f_next": "Next step",
        "webhooks_ok": "{state}, deliveries confirmable",
        "webhooks_unconfirmed": "{state}: delivery can NOT be confirmed",
        "yes": "yes",
        "no": "no",
    },
}

RECOVERY_CLI_TEXTS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "added": "Instância {id} registrada: {label} ({state})",
        "removed": "Instância {id} removida (mensagens e eventos ficam no histórico).",
        "webhooks_state": "Webhooks na W-API: {state}",
        "pairing_code": "Código de pareamento: {code}",
        "already": "A W-API diz que a instância já está conectada ({phone}).",
        "qr_saved": "QR code salvo em {path}",
        "qr_title": "Leia este QR code no WhatsApp (Aparelhos conectados > Conectar um aparelho):",
        "next": "Próximo passo: {text}",
        "state": "Estado: {label} ({state}/{reason})",
        "restarted": "Reinício pedido à W-API: {message}",
        "disconnected": "Desconexão pedida à W-API: {message}",
        "stall_cleared": "Bloqueio por falta de entregas (DELIVERY_STALLED) removido por você.",
        "not_stalled": "Nada a remover: a instância não está bloqueada por falta de entregas.",
        "hooks_ok": "Webhooks configurados para {url}",
        "hooks_bad": "Webhooks NÃO configurados para {url}",
        "retry_ok": "Mensagem {id} reenviada: {label} ({state})",
        "reconciled": "{id}: {fetched} lidos do log da W-API, {applied} aplicados, {duplicates} já registrados",
        "reconcile_error": "{id}: log da W-API indisponível ({error})",
        "stuck_title": "Mensagens ainda sem entrega:",
        "no_stuck": "Nenhuma mensagem parada.",
        "need_token": "informe o token da instância na W-API: --wapi-token ou WAPIGUARD_WAPI_TOKEN",
        "need_id": "informe a instância: wapi-guard instances {action} INSTÂNCIA",
    },
    "en": {
        "added": "Instance {id} registered: {label} ({state})",
        "removed": "Instance {id} removed (its messages and events stay on record).",
        "webhooks_state": "Webhooks at W-API: {state}",
        "pairing_code": "Pairing code: {code}",
        "already": "W-API says the instance is already connected ({phone}).",
        "qr_saved": "QR code saved to {path}",
        "qr_title": "Scan this QR code in WhatsApp (Linked devices > Link a device):",
        "next": "Next step: {text}",
        "state": "State: {label} ({state}/{reason})",
        "restarted": "Restart requested at W-API: {message}",
        "disconnected": "Disconnection requested at W-API: {message}",
        "stall_cleared": "Delivery stall (DELIVERY_STALLED) cleared by you.",
        "not_stalled": "Nothing to clear: the instance is not blocked by a delivery stall.",
        "hooks_ok": "Webhooks configured to {url}",
        "hooks_bad": "Webhooks NOT configured to {url}",
        "retry_ok": "Message {id} sent again: {label} ({state})",
        "reconciled": "{id}: {fetched} read from W-API's log, {applied} applied, {duplicates} already stored",
        "reconcile_error": "{id}: W-API's log unavailable ({error})",
        "stuck_title": "Messages still without delivery:",
        "no_stuck": "No stuck messages.",
        "need_token": "give the instance's W-API token: --wapi-token or WAPIGUARD_WAPI_TOKEN",
        "need_id": "name the instance: wapi-guard instances {action} INSTANCE",
    },
}


# --- the status page -------------------------------------------------------------------------

STATUS_PAGE_TEXTS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "title": "wapi-guard — estado das instâncias",
        "instances": "Instâncias",
        "messages": "Mensagens paradas e com falha",
        "changes": "Últimas mudanças de estado",
        "webhooks": "Webhooks de saída",
        "no_webhooks": "Nenhuma assinatura de webhook.",
        "event_streams": "Streams de eventos neste processo: {open} abertos; {cut} encerrados por lentidão.",
        "w_url": "Destino",
        "w_enabled": "Ativa",
        "w_pending": "Pendentes",
        "w_lag": "Atraso",
        "w_failures": "Falhas seguidas",
        "w_timeouts": "Tempos esgotados",
        "w_refused": "Recusadas",
        "w_last_error": "Último erro",
        "w_yes": "sim",
        "w_no": "não",
        "id": "ID",
        "phone": "Telefone",
        "reason": "Motivo",
        "changed": "Estado desde",
        "checked": "Verificada",
        "stuck": "Mensagens paradas",
        "sends": "Envios",
        "sends_ok": "liberados",
        "sends_blocked": "bloqueados",
        "sends_unconfirmed": "liberados, sem confirmação de entrega",
        "next_step": "Próximo passo",
        "instance": "Instância",
        "to": "Destinatário",
        "state": "Estado",
        "age": "Idade",
        "attempts": "Tentativas",
        "when": "Quando",
        "from": "De",
        "to_state": "Para",
        "source": "Origem",
        "no_instances": "Nenhuma instância registrada.",
        "no_messages": "Nenhuma mensagem parada ou com falha.",
        "no_changes": "Nenhuma mudança de estado registrada.",
        "s_instances": "Instâncias",
        "s_online": "Online",
        "s_attention": "Precisam de atenção",
        "s_stuck": "Mensagens paradas",
        "s_failed": "Falhas recentes",
        "live_connecting": "Conectando…",
        "live_live": "Ao vivo",
        "live_reconnecting": "Reconectando…",
        "live_stale": "Dados desatualizados: sem contato com o servidor",
        "live_unavailable": "Servidor sem acesso ao banco de dados; dados podem estar desatualizados",
        "updated": "Atualizado",
        "other_lang": "English",
        "auth": "Autenticação necessária: use um token da API como senha.",
        "unavailable": "Estado indisponível no momento (banco de dados inacessível). Tente de novo.",
        "busy": "Conexões ao vivo demais; tente de novo em instantes.",
        "noscript": "Sem JavaScript esta página não se atualiza sozinha: recarregue para ver o estado atual.",
    },
    "en": {
        "title": "wapi-guard — instance status",
        "instances": "Instances",
        "messages": "Stuck and failed messages",
        "changes": "Latest state changes",
        "webhooks": "Outbound webhooks",
        "no_webhooks": "No webhook subscriptions.",
        "event_streams": "Event streams on this process: {open} open; {cut} closed as too slow.",
        "w_url": "Receiver",
        "w_enabled": "Enabled",
        "w_pending": "Pending",
        "w_lag": "Lag",
        "w_failures": "Failures in a row",
        "w_timeouts": "Timeouts",
        "w_refused": "Refused",
        "w_last_error": "Last error",
        "w_yes": "yes",
        "w_no": "no",
        "id": "ID",
        "phone": "Phone",
        "reason": "Reason",
        "changed": "State since",
        "checked": "Checked",
        "stuck": "Stuck messages",
        "sends": "Sends",
        "sends_ok": "allowed",
        "sends_blocked": "blocked",
        "sends_unconfirmed": "allowed, delivery not confirmable",
        "next_step": "Next step",
        "instance": "Instance",
        "to": "Recipient",
        "state": "State",
        "age": "Age",
        "attempts": "Attempts",
        "when": "When",
        "from": "From",
        "to_state": "To",
        "source": "Source",
        "no_instances": "No instances registered.",
        "no_messages": "No stuck or failed messages.",
        "no_changes": "No state changes recorded.",
        "s_instances": "Instances",
        "s_online": "Online",
        "s_attention": "Need attention",
        "s_stuck": "Stuck messages",
        "s_failed": "Recent failures",
        "live_connecting": "Connecting…",
        "live_live": "Live",
        "live_reconnecting": "Reconnecting…",
        "live_stale": "Stale data: no contact with the server",
        "live_unavailable": "Server cannot reach its database; data may be stale",
        "updated": "Updated",
        "other_lang": "Português",
        "auth": "Authentication required: use an API token as the password.",
        "unavailable": "Status unavailable right now (database unreachable). Try again.",
        "busy": "Too many live connections; try again shortly.",
        "noscript": "Without JavaScript this page does not update itself: reload it to see the current state.",
    },
}

STATUS_ACTION_TEXTS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "qr": "Mostrar QR code",
        "pair": "Código de pareamento",
        "phone_placeholder": "DDD + número, ou +DDI …",
        "restart": "Reiniciar",
        "clear_stall": "Liberar envios (entrega verificada)",
        "clear_stall_title": "Bloqueio por falta de entregas de {name}",
        "stall_cleared": "Bloqueio removido: os envios voltam a passar.",
        "not_stalled": "Nada a remover: a instância não está bloqueada por falta de entregas.",
        "retry": "Reenviar",
        "back": "Voltar ao painel",
        "qr_title": "QR code de {name}",
        "qr_hint": "Leia no WhatsApp: Aparelhos conectados > Conectar um aparelho.",
        "pair_title": "Código de pareamento de {name}",
        "restart_title": "Reinício de {name}",
        "retry_title": "Reenvio da mensagem",
        "already": "A W-API diz que esta instância já está conectada.",
        "state": "Estado agora",
        "next": "Próximo passo",
        "failed_title": "A ação não foi feita",
        "retry_after": "Tente de novo em {seconds} s.",
        "csrf": "Pedido recusado: formulário expirado ou de outra origem. Recarregue o painel e tente de novo.",
        "retried": "Mensagem reenviada: {state}",
    },
    "en": {
        "qr": "Show QR code",
        "pair": "Pairing code",
        "phone_placeholder": "area code + number, or +country …",
        "restart": "Restart",
        "clear_stall": "Resume sends (delivery checked)",
        "clear_stall_title": "Delivery stall of {name}",
        "stall_cleared": "Stall cleared: sends go through again.",
        "not_stalled": "Nothing to clear: the instance is not blocked by a delivery stall.",
        "retry": "Retry",
        "back": "Back to the dashboard",
        "qr_title": "QR code of {name}",
        "qr_hint": "Scan it in WhatsApp: Linked devices > Link a device.",
        "pair_title": "Pairing code of {name}",
        "restart_title": "Restart of {name}",
        "retry_title": "Message retry",
        "already": "W-API says this instance is already connected.",
        "state": "State now",
        "next": "Next step",
        "failed_title": "The action was not done",
        "retry_after": "Try again in {seconds} s.",
        "csrf": "Request refused: the form expired or came from another origin. Reload the dashboard and try again.",
        "retried": "Message sent again: {state}",
    },
}


# --- field violations (google.rpc.BadRequest descriptions) ----------------------------------

# The servers write violation descriptions in English (statemachine/validation.py, the services);
# a pt-BR caller reads them through this table, so "pedido inválido: token: …" never mixes two
# languages. Patterns are anchored; `{…}` groups carry numbers and names through unchanged.
_VIOLATIONS_PT_BR: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), text)
    for pattern, text in (
        (r"required", "obrigatório"),
        (r"required on first registration", "obrigatório no primeiro registro"),
        # Provider per instance (services/app/providers.py).
        (r"this server speaks W-API only", "este servidor fala apenas com a W-API"),
        (r"unknown provider (.+)", r"provedor desconhecido \1"),
        (r"must be an http\(s\) URL without credentials", "deve ser uma URL http(s) sem credenciais"),
        (r"longer than 512 characters", "mais de 512 caracteres"),
        (
            r"required for EVOLUTION \(the server the instance runs on\)",
            "obrigatório para EVOLUTION (o servidor onde a instância roda)",
        ),
        (r"only Z-API takes a client token", "só a Z-API aceita client token"),
        (r"required: the phone to pair, e\.g\. (.+)", r"obrigatório: o telefone a parear, p. ex. \1"),
        (
            r"digits only, with country and area code \((\d+) to (\d+) digits\)",
            r"só dígitos, com código do país e DDD (\1 a \2 dígitos)",
        ),
        (r"must not be empty", "não pode ser vazio"),
        (r"must be one emoji", "deve ser um emoji"),
        (r"longer than (\d+) characters", r"mais de \1 caracteres"),
        (r"must be between (-?[\d.]+) and (-?[\d.]+)", r"deve estar entre \1 e \2"),
        (r"must be an absolute http\(s\) URL", "deve ser uma URL http(s) absoluta"),
        (r"not a valid URL", "não é uma URL válida"),
        (r"must be 1-(\d+) letters, digits, '\.', '_' or '-'", r"deve ter de 1 a \1 letras, dígitos, '.', '_' ou '-'"),
        (
            r"must be (\d+)-(\d+) digits with country code, or a chat id like (\S+)",
            r"deve ter de \1 a \2 dígitos com o código do país, ou ser um chat id como \3",
        ),
        (r"must be (\d+)-(\d+) digits with country code", r"deve ter de \1 a \2 dígitos com o código do país"),
        (r"must be 1-(\d+) printable ASCII characters", r"deve ter de 1 a \1 caracteres ASCII imprimíveis"),
        (
            r"one of text, image, audio, video, document, location, contact, sticker or reaction is required",
            "é preciso um de text, image, audio, video, document, location, contact, sticker ou reaction",
        ),
        (r"at most (\d+) events per batch", r"no máximo \1 eventos por lote"),
        (r"unknown plan (\S+); use PLAN_PRO or PLAN_LITE", r"plano desconhecido \1; use PLAN_PRO ou PLAN_LITE"),
        (r"unknown event type (\S+)", r"tipo de evento desconhecido \1"),
        (r"no such webhook subscription", "assinatura de webhook inexistente"),
        (r"older than the oldest retained event", "mais antigo que o evento mais antigo guardado"),
        (r"cursor is older than the oldest retained event", "cursor mais antigo que o evento mais antigo guardado"),
        (r"not a page token of this list", "não é um token de página desta lista"),
        (r"not a token returned by ListMessages", "não é um token devolvido por ListMessages"),
        (r"not a valid timestamp", "não é uma data/hora válida"),
        (r"not a change cursor issued by this service", "não é um cursor emitido por este serviço"),
        (r"change cursor out of range", "cursor fora do intervalo"),
        (
            r"a cursor of another change log \(another or a re-created database\)",
            "cursor de outro registro de mudanças (outro banco ou um banco recriado)",
        ),
        (
            r"the cursor's signature does not match its position \(altered\)",
            "a assinatura do cursor não confere com a posição (alterado)",
        ),
        (
            r"cursor is ahead of the newest event of this log \(another or a restored database\?\)",
            "cursor à frente do evento mais novo deste registro (outro banco ou um banco restaurado?)",
        ),
        (
            r"points at (.+): loopback and internal names are refused",
            r"aponta para \1: loopback e nomes internos são recusados",
        ),
        (
            r"points at a (.+); allow with --webhook-allow-private",
            r"aponta para \1; permita com --webhook-allow-private",
        ),
        (
            r"(.+) resolves to a (.+); allow with --webhook-allow-private",
            r"\1 resolve para \2; permita com --webhook-allow-private",
        ),
        (r"at most (\d+) event types", r"no máximo \1 tipos de evento"),
        (r"at most (\d+) states", r"no máximo \1 estados"),
        (r"at most (\d+) ids per call \(got (\d+)\)", r"no máximo \1 ids por chamada (recebidos \2)"),
        (r"delivery ids are positive numbers", "ids de entrega são números positivos"),
        (r"at most (\d+) instance ids, got (\d+)", r"no máximo \1 ids de instância (recebidos \2)"),
        (r"not a webhook subscription id", "não é um id de assinatura de webhook"),
        (r"must not contain NUL characters", "não pode conter caracteres NUL"),
        (r"must not contain spaces or control characters", "não pode conter espaços nem caracteres de controle"),
        (
            r"must not contain credentials \(user:password@\); authenticate by the signature",
            "não pode conter credenciais (usuário:senha@); autentique pela assinatura",
        ),
        (r"port 0 is not a receiver port", "a porta 0 não é porta de um receptor"),
        # Phone numbers (statemachine/phone.py).
        (r"not a string or integer", "não é texto nem número"),
        (r"empty", "vazio"),
        (r"a LID is not a phone number", "um LID não é um número de telefone"),
        (r"not a WhatsApp user JID", "não é um JID de usuário do WhatsApp"),
        (r"not ASCII digits", "não são dígitos ASCII"),
        (r"not (\d+)-(\d+) digits \(E\.164\)", r"não tem de \1 a \2 dígitos (E.164)"),
        (r"starts with 0 \(no country code does\)", "começa com 0 (nenhum código de país começa assim)"),
        (r"one digit repeated", "um só dígito repetido"),
        (
            r"not a phone number: only digits, spaces, \( \) \. - / and a leading \+ are accepted",
            "não é um telefone: só dígitos, espaços, ( ) . - / e um + inicial são aceitos",
        ),
        (
            r"longer than (\d+) digits with the country code \(E\.164\)",
            r"mais de \1 dígitos com o código do país (E.164)",
        ),
        (
            r"the number of this WhatsApp id is not a valid international number \((.+)\)",
            r"o número deste id do WhatsApp não é um número internacional válido (\1)",
        ),
        (
            r"a local number without its area code: expected a national number of (\w+) with its area code, "
            r"e\.g\. (.+), or an international one with its country code \(\+…\)",
            r"um número local sem DDD: informe um número nacional de \1 com DDD, p. ex. \2, "
            r"ou um internacional com o código do país (+…)",
        ),
        (
            r"not a valid phone number: expected a national number of (\w+) with its area code, "
            r"e\.g\. (.+), or an international one with its country code \(\+…\)",
            r"não é um telefone válido: informe um número nacional de \1 com DDD, p. ex. \2, "
            r"ou um internacional com o código do país (+…)",
        ),
    )
)


def violation_text(description: str, locale: str = DEFAULT_LANG) -> str:
    """A field violation's description in the caller's language (English as written otherwise)."""
    if lang_of(locale) != "pt-BR":
        return description
    for pattern, text in _VIOLATIONS_PT_BR:
        match = pattern.fullmatch(description)
        if match:
            return match.expand(text)
    return description


# --- `wapi-guard subscriptions` (outbound webhooks) -------------------------------------------

SUBSCRIPTION_CLI_TEXTS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "need_id": "subscriptions {action}: informe o id da assinatura",
        "need_url": "subscriptions create: --url é obrigatório",
        "secret": "segredo (mostrado só agora, guarde-o): {secret}",
        "enabled": "{id}: ativada",
        "disabled": "{id}: desativada",
        "deleted": "{id}: removida",
        "new_secret": "novo segredo (mostrado só agora): {secret}",
        "replayed": "reenviadas: {n}",
        "none": "Nenhuma assinatura de webhook.",
        "no_deliveries": "Nenhuma entrega.",
        "id": "ID",
        "url": "DESTINO",
        "on": "ATIVA",
        "pending": "PENDENTES",
        "lag": "ATRASO",
        "failures": "FALHAS SEGUIDAS",
        "timeouts": "TEMPO ESGOTADO",
        "refused": "RECUSADAS",
        "last_error": "ÚLTIMO ERRO",
        "webhook_id": "WEBHOOK-ID",
        "type": "TIPO",
        "state": "ESTADO",
        "attempts": "TENTATIVAS",
        "yes": "sim",
        "no": "não ({reason})",
        "s_pending": "pendente",
        "s_succeeded": "entregue",
        "s_exhausted": "esgotada",
    },
    "en": {
        "need_id": "subscriptions {action}: give the subscription id",
        "need_url": "subscriptions create: --url is required",
        "secret": "secret (shown once, keep it): {secret}",
        "enabled": "{id}: enabled",
        "disabled": "{id}: disabled",
        "deleted": "{id}: deleted",
        "new_secret": "new secret (shown once): {secret}",
        "replayed": "replayed: {n}",
        "none": "No webhook subscriptions.",
        "no_deliveries": "No deliveries.",
        "id": "ID",
        "url": "URL",
        "on": "ENABLED",
        "pending": "PENDING",
        "lag": "LAG",
        "failures": "FAILURES IN A ROW",
        "timeouts": "TIMED OUT",
        "refused": "REFUSED",
        "last_error": "LAST ERROR",
        "webhook_id": "WEBHOOK-ID",
        "type": "TYPE",
        "state": "STATE",
        "attempts": "ATTEMPTS",
        "yes": "yes",
        "no": "no ({reason})",
        "s_pending": "pending",
        "s_succeeded": "succeeded",
        "s_exhausted": "exhausted",
    },
}


# --- provider-specific reasons (issue 24: Z-API, Evolution API) -------------------------------

REASON_TEXT_PT_BR.update(
    {
        Reason.SESSION_NEEDS_RESTORE: 'A Z-API pede para restaurar a sessão ("You need to restore the session.").',
        Reason.LOGGED_OUT: "Sessão encerrada no WhatsApp (logout); o provedor não reconecta sozinho.",
        Reason.QR_REFUSED: "Limite de QR codes atingido sem leitura; a conexão foi recusada.",
        Reason.PHONE_OFFLINE: "Conectada, mas o celular está offline; o provedor segura os envios.",
        Reason.NOT_ON_WHATSAPP: "O número não está no WhatsApp.",
        Reason.SEND_REJECTED: "O WhatsApp ou o provedor recusou/restringiu este envio.",
        Reason.INVALID_MEDIA: "A mídia não pôde ser enviada (URL inválida, formato não suportado).",
        Reason.PROVIDER_UNCERTAIN: "O provedor expirou o envio; a mensagem ainda pode sair. Confira antes de reenviar.",
    }
)
REASON_TEXT_EN.update(
    {
        Reason.SESSION_NEEDS_RESTORE: 'Z-API asks to restore the session ("You need to restore the session.").',
        Reason.LOGGED_OUT: "The WhatsApp session was logged out; the provider will not reconnect by itself.",
        Reason.QR_REFUSED: "QR code limit reached without a scan; the connection was refused.",
        Reason.PHONE_OFFLINE: "Connected, but the phone is offline; the provider holds the sends.",
        Reason.NOT_ON_WHATSAPP: "The number is not on WhatsApp.",
        Reason.SEND_REJECTED: "WhatsApp or the provider refused or restricted this send.",
        Reason.INVALID_MEDIA: "The media could not be sent (invalid URL, unsupported format).",
        Reason.PROVIDER_UNCERTAIN: "The provider timed out the send; it may still go out. Check before retrying.",
    }
)
_NEXT_PT_BR.update(
    {
        Reason.SESSION_NEEDS_RESTORE: "Restaure a sessão: wapi-guard restart INSTÂNCIA (restore-session da Z-API).",
        Reason.LOGGED_OUT: "Pareie de novo: wapi-guard connect INSTÂNCIA (QR code) ou --phone NÚMERO.",
        Reason.QR_REFUSED: "Peça um novo QR code (wapi-guard connect INSTÂNCIA) e leia-o a tempo.",
        Reason.PHONE_OFFLINE: "Ligue o celular e conecte-o à internet; os envios seguem quando ele voltar.",
    }
)
_NEXT_EN.update(
    {
        Reason.SESSION_NEEDS_RESTORE: "Restore the session: wapi-guard restart INSTANCE (Z-API restore-session).",
        Reason.LOGGED_OUT: "Pair again: wapi-guard connect INSTANCE (QR code) or --phone NUMBER.",
        Reason.QR_REFUSED: "Ask for a new QR code (wapi-guard connect INSTANCE) and scan it in time.",
        Reason.PHONE_OFFLINE: "Turn the phone on and online; sends go out once it is back.",
    }
)
