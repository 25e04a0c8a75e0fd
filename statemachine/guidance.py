"""What the operator should do next, for an instance's health. Pure: one table, two locales."""

from __future__ import annotations

from statemachine.domain import InstanceState, Reason

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
