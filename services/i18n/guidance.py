"""The domain's words: the text of each machine reason (google.rpc.LocalizedMessage,
InstanceHealth.reason_message) and what the operator should do next (InstanceHealth.next_step, the
recovery actions' next steps)."""

from __future__ import annotations

from typing import Any, cast

from services.i18n.resolver import lookup
from statemachine.domain import InstanceState, Reason

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
    # Send policy (statemachine/send_policy.py).
    Reason.QUIET_HOURS: "Fora do horário de envio desta instância. Tente de novo depois do horário silencioso.",
    Reason.SEND_INTERVAL: "Intervalo mínimo entre envios desta instância. Tente de novo em instantes.",
    Reason.SEND_RATE_PER_MINUTE: "Limite de envios por minuto desta instância atingido.",
    Reason.NEW_RECIPIENTS_HOURLY: "Limite de novos destinatários por hora desta instância atingido.",
    Reason.NEW_RECIPIENTS_DAILY: "Limite diário de novos destinatários (aquecimento) desta instância atingido.",
    Reason.RECIPIENT_OPTED_OUT: "O destinatário pediu para não receber mensagens deste número.",
    Reason.NOT_ON_WHATSAPP: "Este número não está no WhatsApp (verificado pelo provedor).",
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
    # Holds (statemachine/hold.py).
    Reason.SCHEDULED: "Mensagem agendada: aguarda o horário pedido (send_at) para ser enviada.",
    Reason.HOLD_RELEASED: "Mensagem em espera liberada para envio.",
    Reason.CANCELLED: "Mensagem em espera cancelada; não foi enviada.",
    Reason.MESSAGE_NOT_HELD: "Só mensagens em espera (HELD) podem ser canceladas.",
    Reason.HOLD_EXPIRED: "O prazo de espera da mensagem acabou antes que ela pudesse ser enviada.",
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
    # Send policy (statemachine/send_policy.py).
    Reason.QUIET_HOURS: "Outside this instance's sending hours. Retry after its quiet hours.",
    Reason.SEND_INTERVAL: "Minimum interval between this instance's sends. Retry shortly.",
    Reason.SEND_RATE_PER_MINUTE: "This instance's sends-per-minute limit is reached.",
    Reason.NEW_RECIPIENTS_HOURLY: "This instance's hourly budget of new recipients is used up.",
    Reason.NEW_RECIPIENTS_DAILY: "This instance's daily budget of new recipients (warm-up) is used up.",
    Reason.RECIPIENT_OPTED_OUT: "The recipient asked not to receive messages from this number.",
    Reason.NOT_ON_WHATSAPP: "This number is not on WhatsApp (checked with the provider).",
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
    # Holds (statemachine/hold.py).
    Reason.SCHEDULED: "Scheduled: the message waits for the requested time (send_at).",
    Reason.HOLD_RELEASED: "The held message was released to be sent.",
    Reason.CANCELLED: "The held message was cancelled; it was not sent.",
    Reason.MESSAGE_NOT_HELD: "Only held (HELD) messages can be cancelled.",
    Reason.HOLD_EXPIRED: "The message's hold ran out before it could be sent.",
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


# --- next steps after a recovery action (services/app/recovery.py) ------------------------------

RECOVERY_STEPS: dict[str, dict[str, str]] = {
    "pt-BR": {
        "pairing_code": (
            "No celular: WhatsApp > Aparelhos conectados > Conectar um aparelho > Conectar com número de "
            "telefone, digite {code}. Ela volta a CONNECTED quando o número for confirmado."
        ),
        "qr_code": "Leia o QR code em WhatsApp > Aparelhos conectados > Conectar um aparelho (expira em 1 minuto).",
        "webhooks_refused": "Corrija o que a W-API recusou e rode: wapi-guard webhooks configure INSTÂNCIA",
    },
    "en": {
        "pairing_code": (
            "On the phone: WhatsApp > Linked devices > Link a device > Link with phone number, "
            "type {code}. The instance is CONNECTED once its phone number is confirmed."
        ),
        "qr_code": "Scan the QR code in WhatsApp > Linked devices > Link a device (it expires in a minute).",
        "webhooks_refused": "Fix what W-API refused and run: wapi-guard webhooks configure INSTANCE",
    },
}


def recovery_step(key: str, locale: str = "pt-BR", /, **values: Any) -> str:
    """The next step after a recovery action (RECOVERY_STEPS) in the caller's language (English for
    any locale that starts with "en", as next_step reads it)."""
    return lookup(RECOVERY_STEPS, "en" if locale.lower().startswith("en") else "pt-BR", key, **values)


# --- provider-specific reasons (Z-API, Evolution API: docs/providers.md) ---------------------

REASON_TEXT_PT_BR.update(
    {
        Reason.SESSION_NEEDS_RESTORE: 'A Z-API pede para restaurar a sessão ("You need to restore the session.").',
        Reason.LOGGED_OUT: "Sessão encerrada no WhatsApp (logout); o provedor não reconecta sozinho.",
        Reason.QR_REFUSED: "Limite de QR codes atingido sem leitura; a conexão foi recusada.",
        Reason.PHONE_OFFLINE: "Conectada, mas o celular está offline; o provedor segura os envios.",
        Reason.WAITING_FOR_MESSAGE: 'Mensagem recebida que o celular não decifrou ("Aguardando mensagem").',
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
        Reason.WAITING_FOR_MESSAGE: 'A message arrived that the phone could not decrypt ("Waiting for message").',
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
        Reason.WAITING_FOR_MESSAGE: "Reinicie a sessão (wapi-guard restart INSTÂNCIA); se persistir, pareie de novo.",
    }
)
_NEXT_EN.update(
    {
        Reason.SESSION_NEEDS_RESTORE: "Restore the session: wapi-guard restart INSTANCE (Z-API restore-session).",
        Reason.LOGGED_OUT: "Pair again: wapi-guard connect INSTANCE (QR code) or --phone NUMBER.",
        Reason.QR_REFUSED: "Ask for a new QR code (wapi-guard connect INSTANCE) and scan it in time.",
        Reason.PHONE_OFFLINE: "Turn the phone on and online; sends go out once it is back.",
        Reason.WAITING_FOR_MESSAGE: "Restart the session (wapi-guard restart INSTANCE); if it persists, pair again.",
    }
)
