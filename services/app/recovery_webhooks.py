"""Recovery's webhook set-up: point the provider's webhooks at the bridge, read them back, and set
them again after a reconnection (part of Recovery, services/app/recovery.py)."""

from __future__ import annotations

import asyncio
import logging
import random

from services.app.principals import current_principal
from services.app.recovery_types import (
    WEBHOOKS_CONFIGURED,
    WEBHOOKS_FAILED,
    RecoveryParts,
    WebhookKindResult,
    WebhooksResult,
)
from services.i18n import recovery_step
from statemachine.domain import (
    ActionOutcome,
    Credentials,
    Reason,
)
from statemachine.errors import InstanceNotFound, RecoveryRefused
from statemachine.ports import InstanceOperations

log = logging.getLogger("wapi_guard.recovery")


class WebhookSetup(RecoveryParts):
    # --- the bridge URL ----------------------------------------------------------------------

    def bridge_url(self) -> str | None:
        if not self.config.public_url:
            return None
        base = self.config.public_url.rstrip("/") + "/webhooks/wapi"
        return f"{base}/{self.config.webhook_secret}" if self.config.webhook_secret else base

    def masked_bridge_url(self) -> str:
        url = self.bridge_url() or ""
        secret = self.config.webhook_secret
        return url.replace(secret, "***") if secret else url

    # --- webhook configuration ---------------------------------------------------------------

    async def configure_webhooks(
        self, instance_id: str, locale: str = "pt-BR", *, who: str | None = None
    ) -> WebhooksResult:
        """Sets all six kinds to the bridge URL, then reads back what W-API kept."""
        url = self.bridge_url()
        if url is None:
            raise RecoveryRefused(Reason.PUBLIC_URL_NOT_CONFIGURED, instance_id)
        ops = self._ops(instance_id)
        who = who or current_principal.get().name
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        creds = Credentials(instance_id, found[1])
        results: list[WebhookKindResult] = []
        for kind in ops.webhook_kinds:
            outcome = await ops.set_webhook(creds, kind, url, timeout=self.config.action_timeout)
            results.append(WebhookKindResult(kind, outcome.ok, "" if outcome.ok else self._mask(outcome.detail)))
        failed = [r for r in results if not r.ok]
        if not failed:
            results = await self._verify(ops, creds, url, results)
            failed = [r for r in results if not r.ok]
        await self._audit(
            instance_id,
            "configure_webhooks",
            who,
            ActionOutcome(
                ok=not failed,
                failure=Reason.PROVIDER_ERROR if failed else None,
                detail="; ".join(f"{r.kind}: {r.detail}" for r in failed),
            ),
        )
        return await self._webhooks_result(instance_id, results, locale)

    async def check_webhooks(self, instance_id: str, locale: str = "pt-BR") -> WebhooksResult:
        url = self.bridge_url()
        if url is None:
            raise RecoveryRefused(Reason.PUBLIC_URL_NOT_CONFIGURED, instance_id)
        ops = self._ops(instance_id)
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        results = [WebhookKindResult(kind, True) for kind in ops.webhook_kinds]
        results = await self._verify(ops, Credentials(instance_id, found[1]), url, results)
        return await self._webhooks_result(instance_id, results, locale)

    async def _verify(
        self, ops: InstanceOperations, creds: Credentials, url: str, results: list[WebhookKindResult]
    ) -> list[WebhookKindResult]:
        read = await ops.webhook_urls(creds, timeout=self.config.action_timeout)
        if not read.ok:
            return [WebhookKindResult(r.kind, False, f"cannot read back: {self._mask(read.detail)}") for r in results]
        checked = []
        for result in results:
            seen = read.webhook_urls.get(result.kind)
            if seen is None:
                checked.append(result)  # W-API does not show this kind: its own answer to the update stands
            elif seen != url:
                checked.append(WebhookKindResult(result.kind, False, f"W-API has {self._mask(seen)}"))
            else:
                checked.append(result)
        return checked

    async def _webhooks_result(self, instance_id: str, results: list[WebhookKindResult], locale: str) -> WebhooksResult:
        failed = [r for r in results if not r.ok]
        state = WEBHOOKS_FAILED if failed else WEBHOOKS_CONFIGURED
        detail = "; ".join(f"{r.kind}: {r.detail}" for r in failed)
        record = await self.repo.set_webhooks_state(instance_id, state, detail)
        if record is None:
            raise InstanceNotFound(instance_id)
        self.instances.remember(record)  # the preflight's cache (with --require-webhooks) at once
        record = await self.instances.with_stuck(record)
        step = recovery_step("webhooks_refused", locale) if failed else self.instances.view(record, locale).next_step
        return WebhooksResult(record, results, not failed, self.masked_bridge_url(), step)

    def _mask(self, text: str) -> str:
        secret = self.config.webhook_secret
        return text.replace(secret, "***") if secret else text

    async def after_registration(self, instance_id: str) -> None:
        """Registration points W-API's webhooks at the bridge when a public URL is configured."""
        if self.bridge_url() is None or self.operations is None:
            return
        try:
            await self.configure_webhooks(instance_id, who="registration")
        except Exception:
            log.warning("webhook set-up after registration failed", extra={"instance_id": instance_id}, exc_info=True)

    def _reapply_webhooks_later(self, instance_id: str) -> None:
        """A reconnection may have dropped W-API's webhook URLs: set them again."""
        if self.bridge_url() is None or self.operations is None:
            return
        task = asyncio.get_running_loop().create_task(self._reapply(instance_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reapply(self, instance_id: str) -> None:
        try:
            await self.configure_webhooks(instance_id, who="reconnection")
        except Exception:
            log.warning("re-applying webhooks after a reconnection failed", extra={"instance_id": instance_id})

    async def check_all_webhooks(self) -> int:
        """Reads back every instance's webhook URLs (W-API's fetch-instance, one request per instance,
        one instance at a time) and stores what it finds: CONFIGURED, or FAILED with what W-API has
        (pointing elsewhere, unreadable). Needs --public-url (the URL to compare with). Never on the
        send path; the verdict reads the stored result."""
        if self.bridge_url() is None or self.operations is None:
            return 0
        checked = 0
        for instance_id, _token in await self.repo.list_credentials():
            try:
                await self.check_webhooks(instance_id)
                checked += 1
            except InstanceNotFound:
                continue
            except Exception:
                log.warning("webhook read-back failed", extra={"instance_id": instance_id}, exc_info=True)
        return checked

    async def _check_webhooks_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.webhook_check_interval * random.uniform(0.8, 1.2))
            try:
                await self.check_all_webhooks()
            except Exception:
                log.warning("webhook check round failed", exc_info=True)
