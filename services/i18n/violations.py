"""Field violations (google.rpc.BadRequest descriptions) in the caller's language."""

from __future__ import annotations

import re

from services.i18n.resolver import DEFAULT_LANG, lang_of

# The servers write violation descriptions in English (statemachine/validation.py, the services);
# a pt-BR caller reads them through this table, so "pedido inválido: token: …" never mixes two
# languages. Patterns are anchored; `{…}` groups carry numbers and names through unchanged.
_VIOLATIONS_PT_BR: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), text)
    for pattern, text in (
        (r"required", "obrigatório"),
        (r"give 1 to (\d+) numbers per request", r"informe de 1 a \1 números por pedido"),
        (r"must be between 0 and (\d+) seconds", r"deve estar entre 0 e \1 segundos"),
        (r"must be between 0 and 1000000", "deve estar entre 0 e 1000000"),
        (
            r"a warm-up needs new_recipients_per_day \(its target\)",
            "um aquecimento precisa de new_recipients_per_day (sua meta)",
        ),
        (r"must not exceed new_recipients_per_day", "não pode passar de new_recipients_per_day"),
        (r"give both start and end, or neither", "informe início e fim, ou nenhum"),
        (r"start and end must differ", "início e fim devem ser diferentes"),
        (
            r"not an IANA time zone \(e\.g\. America/Sao_Paulo\)",
            "não é um fuso horário IANA (p. ex. America/Sao_Paulo)",
        ),
        (r"must be a local time HH:MM", "deve ser um horário local HH:MM"),
        # The send policy's form on the status page (services/http/status_policy.py).
        (r"must be a whole number", "deve ser um número inteiro"),
        (r"must be a number", "deve ser um número"),
        # Holds (statemachine/hold.py, services/rpc/mapping.py).
        (r"must not be negative", "não pode ser negativo"),
        (r"at most (\d+) days", r"no máximo \1 dias"),
        (r"at most (\d+) days ahead", r"no máximo \1 dias à frente"),
        (r"not a usable duration", "não é uma duração utilizável"),
        (r"not a usable time", "não é um horário utilizável"),
        (r"holds are not enabled on this server", "este servidor não aceita envios em espera"),
        # A shared opt-out list's name (statemachine/optout.py list_name_problem).
        (r"at most (\d+) characters", r"no máximo \1 caracteres"),
        (r"letters, digits, '-', '_' and '\.' only", "apenas letras, dígitos, '-', '_' e '.'"),
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
