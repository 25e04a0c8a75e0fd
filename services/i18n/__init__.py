"""Every user-facing text, pt-BR first and English, and the one locale resolver.

The gRPC answers (google.rpc.LocalizedMessage, InstanceHealth.reason_message / next_step), the
operator CLI and the status page all read their words here, so a screen, a terminal and an error
detail say the same thing in the same words. Pure tables and functions: no I/O.

One module per surface, each read through the resolver:

- `resolver`: the supported languages, `resolve_lang` (query, Accept-Language) and `lookup`;
- `guidance`: the domain's words, a machine reason's text and the operator's next step;
- `vocabulary`: labels, tones, masked numbers and times shared by the CLI and the status page;
- `cli`, `subscriptions_cli`: the command line's texts;
- `status_page`: the status page's and its actions' texts;
- `violations`: field violations (google.rpc.BadRequest) in pt-BR.

Callers import from `services.i18n` (this module re-exports every public name).
"""

from __future__ import annotations

from services.i18n.cli import (
    CLI_TEXTS,
    RECOVERY_CLI_TEXTS,
)
from services.i18n.guidance import (
    REASON_TEXT_EN,
    REASON_TEXT_PT_BR,
    RECOVERY_STEPS,
    next_step,
    reason_text,
    recovery_step,
    webhooks_next_step,
)
from services.i18n.protection_cli import (
    PROTECTION_CLI_TEXTS,
)
from services.i18n.resolver import (
    DEFAULT_LANG,
    LANGS,
    lang_of,
    lookup,
    normalize_lang,
    resolve_lang,
)
from services.i18n.status_page import (
    STATUS_ACTION_TEXTS,
    STATUS_PAGE_TEXTS,
)
from services.i18n.subscriptions_cli import (
    SUBSCRIPTION_CLI_TEXTS,
)
from services.i18n.violations import (
    violation_text,
)
from services.i18n.vocabulary import (
    MASK,
    MESSAGE_TONES,
    StateView,
    ago,
    duration,
    iso,
    mask_recipient,
    message_label,
    provider_label,
    reason_label,
    source_label,
    state_view,
    time_units,
)

__all__ = [
    "CLI_TEXTS",
    "DEFAULT_LANG",
    "LANGS",
    "MASK",
    "MESSAGE_TONES",
    "PROTECTION_CLI_TEXTS",
    "REASON_TEXT_EN",
    "REASON_TEXT_PT_BR",
    "RECOVERY_CLI_TEXTS",
    "RECOVERY_STEPS",
    "STATUS_ACTION_TEXTS",
    "STATUS_PAGE_TEXTS",
    "SUBSCRIPTION_CLI_TEXTS",
    "StateView",
    "ago",
    "duration",
    "iso",
    "lang_of",
    "lookup",
    "mask_recipient",
    "message_label",
    "next_step",
    "normalize_lang",
    "provider_label",
    "reason_label",
    "reason_text",
    "recovery_step",
    "resolve_lang",
    "source_label",
    "state_view",
    "time_units",
    "violation_text",
    "webhooks_next_step",
]
