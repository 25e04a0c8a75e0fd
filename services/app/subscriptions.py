"""Rules of outbound webhook subscriptions, in one place for gRPC, the status page and the sender.

Reach: what a subscription may receive is always the intersection of its instance filter and
its creator's token scope, decided at creation (an empty filter of a scoped token is stored as
that scope; a token scoped to no instance cannot subscribe) and again at every delivery (the
creator's scope as configured now: narrowing a token's scope narrows its subscriptions).

Targets: by default a receiver URL may not point at loopback, private, link-local, multicast,
reserved or cloud-metadata addresses, nor at `localhost` names. The check runs on the URL at
creation and, at delivery, on every address the name resolves to when the connection is opened;
the connection then goes to the address that was checked (so a name that re-resolves elsewhere —
DNS rebinding — cannot slip through); TLS still verifies the name (outbound.CheckedBackend).
`--webhook-allow-private` turns the address policy off (tests, single-host setups).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from services.app.principals import PermissionDenied, Principal
from statemachine.domain import Reason
from statemachine.errors import GuardError
from statemachine.ports import SubscriptionRecord
from statemachine.validation import Violation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that are loopback or cloud metadata whatever DNS says.
_BLOCKED_NAMES = ("localhost", "metadata.google.internal", "metadata", "instance-data")
_BLOCKED_SUFFIXES = (".localhost", ".local", ".internal")
RESOLVE_TIMEOUT = 5.0
CREATION_RESOLVE_TIMEOUT = 2.0


# --- reach ------------------------------------------------------------------------------------


class ScopedToNothing(GuardError):
    def __init__(self) -> None:
        super().__init__(
            Reason.PERMISSION_DENIED,
            "this credential is scoped to no instance: a webhook subscription would receive nothing",
            {"scope": "none"},
        )


def visible(principal: Principal, sub: SubscriptionRecord) -> bool:
    """Who sees (lists, changes) a subscription: unscoped tokens all of them, scoped ones their own."""
    return principal.instances is None or sub.owner == principal.name


def reach(instance_filter: Sequence[str], scope: frozenset[str] | None) -> list[str] | None:
    """The instances a subscription receives: None = every instance, [] = none at all."""
    ids = sorted({i for i in instance_filter if i})
    if scope is None:
        return ids or None
    if not ids:
        return sorted(scope)
    return [i for i in ids if i in scope]


def creation_filter(requested: Iterable[str], principal: Principal) -> list[str]:
    """The instance filter to store for a subscription created (or re-filtered) by `principal`.
    [] means every instance, which only an unscoped token may ask for."""
    ids = sorted({i.strip() for i in requested if i.strip()})
    scope = principal.instances
    if scope is None:
        return ids
    if not scope:
        raise ScopedToNothing()
    outside = [i for i in ids if i not in scope]
    if outside:
        raise PermissionDenied(outside[0])
    return ids or sorted(scope)


class Scopes:
    """Token scopes by principal name, for checks made away from a request (the sender)."""

    def __init__(self, principals: Iterable[Principal] | None) -> None:
        # None: the API is open (no tokens): every subscription reaches every instance it asks for.
        self._by_name: Mapping[str, frozenset[str] | None] | None = (
            None if principals is None else {p.name: p.instances for p in principals}
        )

    def of(self, owner: str) -> frozenset[str] | None:
        """The owner's scope now; an owner whose token was removed reaches nothing."""
        if self._by_name is None:
            return None
        return self._by_name.get(owner, frozenset())

    def reach(self, sub: SubscriptionRecord) -> list[str] | None:
        return reach(sub.instance_ids, self.of(sub.owner))

    def allows(self, owner: str, instance_id: str) -> bool:
        scope = self.of(owner)
        return scope is None or instance_id in scope


# --- targets ----------------------------------------------------------------------------------


class RefusedTarget(Exception):
    """The receiver's address is not allowed by the policy (or cannot be resolved)."""


def literal_address(host: str) -> IPAddress | None:
    """An IP written in the URL, in any form a resolver accepts: 127.0.0.1, [::1], 2130706433,
    0x7f000001, 0177.0.0.1, 127.1 (inet_aton's legacy forms)."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text) and text[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why an address is not a public receiver, or None when it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return blocked_reason(mapped)
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local or cloud metadata address"
    if address.is_private:
        return "private address"
    if address.is_multicast or address.is_unspecified or address.is_reserved or not address.is_global:
        return "reserved or non-public address"
    return None


def _blocked_name(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name in _BLOCKED_NAMES or name.endswith(_BLOCKED_SUFFIXES)


def check_url_target(field: str, url: str) -> list[Violation]:
    """The creation-time check of where a (syntactically valid) URL points, without DNS."""
    host = urlsplit(url).hostname or ""
    if _blocked_name(host):
        return [Violation(field, f"points at {host!r}: loopback and internal names are refused")]
    address = literal_address(host)
    if address is not None and (why := blocked_reason(address)):
        return [Violation(field, f"points at a {why}; allow with --webhook-allow-private")]
    return []


async def resolve(host: str, port: int, timeout: float = RESOLVE_TIMEOUT) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), timeout
    )
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in out:
            out.append(address)
    return out


async def check_resolved(field: str, url: str) -> list[Violation]:
    """Creation-time check of a name's current addresses; a name that does not resolve yet passes
    (the receiver may not exist yet: delivery checks again)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if literal_address(host) is not None:
        return []
    try:
        addresses = await resolve(
            host, parts.port or (443 if parts.scheme == "https" else 80), CREATION_RESOLVE_TIMEOUT
        )
    except (OSError, TimeoutError, ValueError):
        return []
    for address in addresses:
        if why := blocked_reason(address):
            return [Violation(field, f"{host!r} resolves to a {why}; allow with --webhook-allow-private")]
    return []


async def checked_address(host: str, port: int) -> IPAddress:
    """The address an attempt may connect to for `host`: resolved now, every address checked (one
    private answer refuses the name), the first one returned. Raises RefusedTarget with a reason
    that names the host only (never a path, query or credentials)."""
    if _blocked_name(host):
        raise RefusedTarget(f"host {host!r} is a loopback or internal name")
    literal = literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await resolve(host, port)
        except (OSError, TimeoutError, ValueError):
            raise RefusedTarget(f"host {host!r} does not resolve") from None
    if not addresses:
        raise RefusedTarget(f"host {host!r} does not resolve")
    for address in addresses:
        if why := blocked_reason(address):
            raise RefusedTarget(f"host {host!r} resolves to a {why} ({address})")
    return addresses[0]


def display_url(url: str) -> str:
    """A receiver URL as shown back (lists, status page, logs): never with credentials in it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(invalid URL)"
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
