"""The per-instance provider registry: one client per provider kind, each call routed by the
instance's provider (W-API by default, Z-API, Evolution API).

It implements the provider ports itself (statemachine/ports.py `Provider`, `InstanceOperations`),
so the core keeps calling one provider: the registry fills the instance's provider, base URL and
Z-API client token into the credentials and hands the call to that kind's client. Which instance
is on which provider is stored with the instance (adapters/persistence/providers.py) and cached
here; an instance without an entry is a W-API one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import urlsplit

from services.observability.logs import register_secret
from statemachine.domain import (
    ActionOutcome,
    Credentials,
    OutboundMessage,
    ProbeOutcome,
    Reason,
    SendOutcome,
    WebhookLogPage,
)
from statemachine.errors import InvalidRequest
from statemachine.ports import SessionRestore
from statemachine.providers import ProviderConfig, ProviderKind
from statemachine.recipients import NumberCheck
from statemachine.validation import Violation

log = logging.getLogger("wapi_guard.providers")
WAPI_PATH = "/webhooks/wapi"


class ProviderConfigStore(Protocol):
    """Each configuration with the instance row's version it was read at (or written as)."""

    async def load(self, instance_id: str) -> tuple[ProviderConfig, int] | None: ...
    async def load_all(self) -> dict[str, tuple[ProviderConfig, int]]: ...
    async def save(self, instance_id: str, config: ProviderConfig) -> int | None: ...


def provider_config(
    kind: ProviderKind | None, base_url: str, client_token: str, current: ProviderConfig | None
) -> ProviderConfig:
    """The configuration a registration asks for, checked. `kind` None keeps the stored provider
    (W-API for a new instance); an empty base URL / client token keeps the stored one when the
    provider does not change. Evolution needs a base URL (it is self-hosted)."""
    violations: list[Violation] = []
    chosen = kind or (current.kind if current else ProviderKind.WAPI)
    same = current is not None and current.kind is chosen
    base = base_url.strip() or (current.base_url if same and current else "")
    secret = client_token or (current.client_token if same and current else "")
    if base:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
            violations.append(Violation("base_url", "must be an http(s) URL without credentials"))
        if len(base) > 512:
            violations.append(Violation("base_url", "longer than 512 characters"))
    if chosen is ProviderKind.EVOLUTION and not base:
        violations.append(Violation("base_url", "required for EVOLUTION (the server the instance runs on)"))
    if secret and chosen is not ProviderKind.ZAPI:
        violations.append(Violation("client_token", "only Z-API takes a client token"))
    if len(secret) > 512:
        violations.append(Violation("client_token", "longer than 512 characters"))
    if violations:
        raise InvalidRequest(violations)
    return ProviderConfig(chosen, base.rstrip("/"), secret)


class ProviderRegistry:
    """Routes every provider call by the instance's provider kind."""

    def __init__(self, clients: Mapping[ProviderKind, Any], store: ProviderConfigStore | None = None) -> None:
        if ProviderKind.WAPI not in clients:
            raise ValueError("the W-API client is required (the default provider)")
        self.clients = dict(clients)
        self.store = store
        self._configs: dict[str, ProviderConfig] = {}
        # The instance row's version each entry was read at (0: unknown); see `observe`.
        self._versions: dict[str, int] = {}
        wapi = self.clients[ProviderKind.WAPI]
        # The W-API kinds stay what recovery configures by default (today's behaviour).
        self.webhook_kinds: tuple[str, ...] = tuple(getattr(wapi, "webhook_kinds", ()))

    async def load(self) -> None:
        """Every non-W-API instance's configuration (at start)."""
        if self.store is None:
            return
        loaded = await self.store.load_all()
        self._configs = {instance_id: config for instance_id, (config, _v) in loaded.items()}
        self._versions = {instance_id: version for instance_id, (_c, version) in loaded.items()}
        for config in self._configs.values():
            register_secret(config.client_token or None)

    async def bind(self, instance_id: str, config: ProviderConfig) -> None:
        """Stores and remembers the instance's provider (registration). The store bumps the
        instance row's version: the other replicas see it and read the new provider (`observe`)."""
        register_secret(config.client_token or None)
        version = await self.store.save(instance_id, config) if self.store is not None else None
        self._configs[instance_id] = config
        self._versions[instance_id] = version or 0

    def observe(self, instance_id: str, version: int) -> None:
        """The core read the instance's row (the preflight's cache, a probe) at `version`. Newer
        than the row this replica's entry was read from: the row changed since, perhaps a
        re-registration through another replica onto another provider, base URL or client token;
        the entry is read again on next use (one primary-key read; no I/O here)."""
        if instance_id in self._configs and version > self._versions.get(instance_id, 0):
            self.forget(instance_id)

    async def _ensure(self, instance_id: str) -> None:
        """An instance this replica has not seen yet (registered through another replica): its
        provider is read once from the store and cached, W-API included (one primary-key read per
        instance and process, never per call)."""
        if instance_id in self._configs or self.store is None:
            return
        found = await self.store.load(instance_id)
        if found is not None:
            self._remember(instance_id, *found)

    def _remember(self, instance_id: str, config: ProviderConfig, version: int) -> None:
        register_secret(config.client_token or None)
        self._configs[instance_id] = config
        self._versions[instance_id] = version

    def config(self, instance_id: str) -> ProviderConfig:
        return self._configs.get(instance_id) or ProviderConfig()

    async def current(self, instance_id: str) -> ProviderConfig | None:
        """The stored configuration (fresh from the store when there is one)."""
        if self.store is not None:
            found = await self.store.load(instance_id)
            if found is not None:
                self._remember(instance_id, *found)
                return found[0]
            return None
        return self._configs.get(instance_id)

    def instances_on(self, kinds: tuple[ProviderKind, ...]) -> list[tuple[str, ProviderKind]]:
        """The instances known to live on one of `kinds`."""
        return sorted((iid, c.kind) for iid, c in self._configs.items() if c.kind in kinds)

    def credentials(self, credentials: Credentials) -> Credentials:
        """The credentials with the instance's provider, base URL and client token filled in."""
        return self._route(credentials)[1]

    def forget(self, instance_id: str) -> None:
        self._configs.pop(instance_id, None)
        self._versions.pop(instance_id, None)

    def kind(self, instance_id: str) -> ProviderKind:
        return self.config(instance_id).kind

    def _route(self, credentials: Credentials) -> tuple[Any, Credentials]:
        config = self.config(credentials.instance_id)
        client = self.clients.get(config.kind)
        if client is None or config.kind is ProviderKind.WAPI:
            return client, credentials  # W-API: the credentials as they are (the hot path allocates nothing)
        return client, replace(
            credentials, provider=config.kind.value, base_url=config.base_url, client_token=config.client_token
        )

    # --- Provider ---------------------------------------------------------------------------

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome:
        await self._ensure(credentials.instance_id)
        client, creds = self._route(credentials)
        if client is None:
            return SendOutcome(failure=Reason.PROVIDER_UNAVAILABLE, detail=f"no {creds.provider} client configured")
        outcome: SendOutcome = await client.send(creds, message, timeout=timeout)
        return outcome

    async def check_number(self, credentials: Credentials, phone: str, *, timeout: float) -> NumberCheck:
        """The instance's provider's number check (services/app/recipients.py): W-API's answer as it
        is; Z-API's and Evolution's yes/no/unknown as the same record."""
        await self._ensure(credentials.instance_id)
        client, creds = self._route(credentials)
        if client is not None and hasattr(client, "check_number"):
            answer: NumberCheck = await client.check_number(creds, phone, timeout=timeout)
            return answer
        if client is not None and hasattr(client, "number_exists"):
            exists = await client.number_exists(creds, phone, timeout=timeout)
            if exists is not None:
                return NumberCheck(phone, exists, canonical=phone)
            return NumberCheck(phone, None, failure=Reason.PROVIDER_ERROR, detail="the provider did not say")
        return NumberCheck(phone, None, failure=Reason.PROVIDER_ERROR, detail="no number check")

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome:
        await self._ensure(credentials.instance_id)
        client, creds = self._route(credentials)
        if client is None:
            return ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail="no client for the provider")
        outcome: ProbeOutcome = await client.probe(creds, timeout=timeout)
        return outcome

    async def aclose(self) -> None:
        for client in self.clients.values():
            try:
                await client.aclose()
            except Exception:
                log.warning("closing a provider client failed", exc_info=True)

    def instrument(self, tracer_provider: object) -> None:
        for client in self.clients.values():
            instrument = getattr(client, "instrument", None)
            if instrument is not None:
                instrument(tracer_provider)

    # --- InstanceOperations -----------------------------------------------------------------

    async def _action(self, name: str, credentials: Credentials, *args: Any, timeout: float) -> ActionOutcome:
        await self._ensure(credentials.instance_id)
        client, creds = self._route(credentials)
        method = getattr(client, name, None) if client is not None else None
        if method is None:
            return ActionOutcome(ok=False, failure=Reason.NOT_SUPPORTED_BY_PLAN, detail=f"{name} not offered")
        outcome: ActionOutcome = await method(creds, *args, timeout=timeout)
        return outcome

    async def qr_code(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        return await self._action("qr_code", credentials, timeout=timeout)

    async def pairing_code(self, credentials: Credentials, phone: str, *, timeout: float) -> ActionOutcome:
        return await self._action("pairing_code", credentials, phone, timeout=timeout)

    async def restart(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        """Z-API's gentler remedy first when the session only needs a restore."""
        await self._ensure(credentials.instance_id)
        client, _creds = self._route(credentials)
        if isinstance(client, SessionRestore) and self.config(credentials.instance_id).kind is ProviderKind.ZAPI:
            restored = await self._action("restore_session", credentials, timeout=timeout)
            if restored.ok:
                return restored
        return await self._action("restart", credentials, timeout=timeout)

    async def disconnect(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        return await self._action("disconnect", credentials, timeout=timeout)

    # Webhook configuration. Recovery (services/app/recovery.py) computes one bridge URL, on W-API's
    # path, and walks W-API's kinds; for another provider the registry points that provider's own
    # kinds at the bridge path of that provider (/webhooks/zapi/..., /webhooks/evolution/...) and
    # reads them back in the same terms, so the drift check compares like with like.

    @staticmethod
    def _provider_url(url: str, kind: ProviderKind) -> str:
        return url.replace(WAPI_PATH, f"/webhooks/{kind.path_name}", 1)

    @staticmethod
    def _wapi_url(url: str, kind: ProviderKind) -> str:
        return url.replace(f"/webhooks/{kind.path_name}", WAPI_PATH, 1)

    async def set_webhook(self, credentials: Credentials, kind: str, url: str, *, timeout: float) -> ActionOutcome:
        await self._ensure(credentials.instance_id)
        config = self.config(credentials.instance_id)
        if config.kind is ProviderKind.WAPI:
            return await self._action("set_webhook", credentials, kind, url, timeout=timeout)
        client, _creds = self._route(credentials)
        kinds = tuple(getattr(client, "webhook_kinds", ()))
        target = self._provider_url(url, config.kind)
        if config.kind is ProviderKind.EVOLUTION:
            # One webhook with the event list: set once, with the first kind recovery walks.
            if self.webhook_kinds and kind != self.webhook_kinds[0]:
                return ActionOutcome(ok=True, detail="set with the instance's one Evolution webhook")
            return await self._action("set_webhook", credentials, kinds[0] if kinds else kind, target, timeout=timeout)
        if kind not in kinds:
            return ActionOutcome(ok=True, detail=f"{kind} is not a webhook kind of this provider")
        return await self._action("set_webhook", credentials, kind, target, timeout=timeout)

    async def webhook_urls(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        await self._ensure(credentials.instance_id)
        read = await self._action("webhook_urls", credentials, timeout=timeout)
        kind = self.config(credentials.instance_id).kind
        if kind is ProviderKind.WAPI or not read.ok:
            return read
        urls = {k: self._wapi_url(v, kind) for k, v in read.webhook_urls.items()}
        if kind is ProviderKind.EVOLUTION:
            one = next(iter(urls.values()), None)
            urls = dict.fromkeys(self.webhook_kinds, one) if one else {}
        return replace(read, webhook_urls=urls)

    async def webhook_logs(
        self, credentials: Credentials, *, page: int, per_page: int, timeout: float
    ) -> WebhookLogPage:
        await self._ensure(credentials.instance_id)
        client, creds = self._route(credentials)
        if client is None or not hasattr(client, "webhook_logs"):
            return WebhookLogPage([], failure=Reason.NOT_SUPPORTED_BY_PLAN, detail="no webhook log")
        page_: WebhookLogPage = await client.webhook_logs(creds, page=page, per_page=per_page, timeout=timeout)
        return page_
