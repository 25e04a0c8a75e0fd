"""Who is calling: principals from configured bearer tokens, optionally scoped to instances.

Tokens come from configuration (`WAPIGUARD_API_TOKENS`), are compared in constant time, and
never appear in logs or errors. The gRPC interceptor (services/rpc/auth.py) and the status page
(services/http/status_page.py) both match a presented token here; the use cases read
`current_principal` to scope and audit.
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from statemachine.domain import Reason
from statemachine.errors import GuardError


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    # None: every instance. Otherwise only these instance ids.
    instances: frozenset[str] | None = None

    def may_use(self, instance_id: str) -> bool:
        return self.instances is None or instance_id in self.instances


ANONYMOUS = Principal("anonymous")
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=ANONYMOUS)


class PermissionDenied(GuardError):
    def __init__(self, instance_id: str) -> None:
        super().__init__(
            Reason.PERMISSION_DENIED,
            f"this credential may not act on instance {instance_id!r}",
            {"instance_id": instance_id},
        )


def parse_tokens(spec: str) -> list[tuple[Principal, bytes]]:
    """'crm:TOKEN,ops:TOKEN2@INST-1|INST-2' → principals with their tokens. Raises ValueError."""
    out: list[tuple[Principal, bytes]] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, rest = entry.partition(":")
        if not sep or not name or not rest:
            raise ValueError("each API token entry must look like name:token or name:token@INSTANCE|INSTANCE")
        token, at, scope = rest.partition("@")
        if len(token) < 16:
            raise ValueError(f"API token for {name!r} is shorter than 16 characters")
        instances = frozenset(i.strip() for i in scope.split("|") if i.strip()) if at else None
        out.append((Principal(name, instances), token.encode()))
    return out


def authorize(instance_id: str) -> None:
    if not current_principal.get().may_use(instance_id):
        raise PermissionDenied(instance_id)


def allowed(instance_ids: Iterable[str]) -> list[str]:
    principal = current_principal.get()
    return [i for i in instance_ids if principal.may_use(i)]


def match_token(tokens: Sequence[tuple[Principal, bytes]], presented: str) -> Principal | None:
    """The principal whose token is `presented`, or None. Every token is compared in constant
    time, with no early exit: timing does not tell which one matched."""
    if not presented:
        return None
    given = presented.encode()
    match: Principal | None = None
    for principal, token in tokens:
        if hmac.compare_digest(given, token):
            match = principal
    return match
