"""Who can reach `serve`: open by default on loopback only.

On an address other machines can reach, `serve` refuses to start without API tokens (the gRPC API,
the status page and its actions, /metrics) and, with the HTTP bridge on, a webhook secret (anyone
could otherwise post provider events), unless the operator says `--insecure`. One line says what is
missing and which flag or variable sets it. Open on loopback (the demo, a laptop) is allowed with
one warning line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from services.config import Settings, env_name
from services.rpc.startup import StartupError

log = logging.getLogger("wapi_guard.server")


def is_loopback(host: str) -> bool:
    """True when only this machine can reach `host`: 127.0.0.0/8, ::1, localhost, or a name that
    resolves to loopback addresses only. All interfaces ("", 0.0.0.0, ::) are not loopback."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if not name:
        return False
    if name.lower() == "localhost" or name.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).partition("%")[0]).is_loopback for info in infos)


def _missing(settings: Settings) -> list[str]:
    """What leaves the service open, as `what (--flag or ENV)`."""
    missing = []
    if not settings.api_tokens:
        missing.append(f"API tokens (--api-tokens or {env_name('api_tokens')})")
    if settings.http_port >= 0 and not settings.webhook_secret:
        missing.append(f"a webhook secret (--webhook-secret or {env_name('webhook_secret')})")
    return missing


def check_exposure(settings: Settings) -> None:
    """Raises StartupError (one line) when `serve` would be open to the network without
    --insecure; logs one warning line when it is open anyway (loopback, or --insecure)."""
    missing = _missing(settings)
    if not missing:
        return
    open_to = " and ".join(missing)
    if is_loopback(settings.host):
        log.warning(
            f"open without {open_to}: listening on loopback ({settings.host}) only, so only this machine can reach it"
        )
        return
    if settings.insecure:
        log.warning(f"open to the network on {settings.host} without {open_to} (--insecure)")
        return
    raise StartupError(
        f"refusing to serve on {settings.host or 'all interfaces'} (not loopback) without {open_to}: "
        f"anyone who reaches it could send, run recovery actions and post webhooks; set them, "
        f"or pass --insecure ({env_name('insecure')}=true) to serve openly anyway"
    )
