"""Status page (read-only) served by the webhook bridge's HTTP server. To be written (issue 8)."""

from __future__ import annotations

from aiohttp import web

from services.config import Settings
from services.core import Gateway


def add_status_routes(app: web.Application, settings: Settings, gateway: Gateway) -> None:
    """Adds the status page routes to the bridge's aiohttp application."""
