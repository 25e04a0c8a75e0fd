"""The webhook-subscription use case: who may see and change a subscription (ownership and scope,
`subscriptions.py`'s reach rule), where it may point (the receiver-address policy), where a new
one starts reading the change log, secret rotation and replay. The gRPC servicer
(services/rpc/event_servicers.py) checks the request's form and maps to and from protobuf."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from services.app.outbound import WebhookDispatcher, new_secret
from services.app.principals import current_principal
from services.app.subscriptions import check_resolved, check_url_target, creation_filter, visible
from services.observability.logs import register_secret
from statemachine.changes import ChangeCursor, ChangeKind
from statemachine.errors import InvalidRequest
from statemachine.ports import ChangeLog, DeliveryRecord, SubscriptionRecord, SubscriptionStats, SubscriptionStore
from statemachine.validation import Violation, validate_subscription_url

Shown = tuple[SubscriptionRecord, SubscriptionStats | None]


class WebhookSubscriptions:
    def __init__(
        self, store: SubscriptionStore, log: ChangeLog, dispatcher: WebhookDispatcher | None, *, allow_private: bool
    ) -> None:
        self.store = store
        self.log = log
        self.dispatcher = dispatcher
        self.allow_private = allow_private

    async def check_url(self, url: str) -> None:
        """Syntax, then (unless private targets are allowed) where the URL points, literally and as
        its name resolves now. Raises InvalidRequest; the URL itself is never echoed back."""
        violations = validate_subscription_url("url", url)
        if not violations and not self.allow_private:
            violations = check_url_target("url", url) or await check_resolved("url", url)
        if violations:
            raise InvalidRequest(violations)

    async def owned(self, sub_id: str, field: str = "id") -> SubscriptionRecord:
        """The subscription, if the caller may see it (otherwise it does not exist, for them)."""
        sub = await self.store.get_subscription(sub_id)
        if sub is None or not visible(current_principal.get(), sub):
            raise InvalidRequest([Violation(field, "no such webhook subscription")])
        return sub

    async def shown(self, sub: SubscriptionRecord) -> Shown:
        return sub, (await self.store.stats([sub.id])).get(sub.id)

    async def create(
        self,
        *,
        url: str,
        kinds: Sequence[ChangeKind],
        instance_ids: Sequence[str],
        description: str,
        enabled: bool,
        start: Callable[[], ChangeCursor] | None,
    ) -> Shown:
        """A new subscription (its URL checked first, by `check_url`), scoped to what the caller
        reaches, reading from the cursor `start` reads (which must still be retained) or from now."""
        scoped = creation_filter(instance_ids, current_principal.get())
        if start is not None:
            start_cursor = start()
            if start_cursor < await self.log.oldest_change_cursor():
                raise InvalidRequest([Violation("start_cursor", "older than the oldest retained event")])
            cursor = start_cursor
        else:
            cursor = await self.log.head_change_cursor()
        sub = await self.store.create_subscription(
            f"whsub_{uuid.uuid4().hex}",
            url=url.strip(),
            secret=new_secret(),
            event_types=[k.value for k in kinds],
            instance_ids=scoped,
            owner=current_principal.get().name,
            description=description,
            enabled=enabled,
            cursor=cursor.encode(),
        )
        register_secret(sub.secret)
        return await self.shown(sub)

    async def listed(self) -> list[Shown]:
        principal = current_principal.get()
        subs = [s for s in await self.store.list_subscriptions() if visible(principal, s)]
        stats = await self.store.stats([s.id for s in subs])
        return [(s, stats.get(s.id)) for s in subs]

    async def update(self, sub_id: str, changes: dict[str, Any]) -> Shown:
        """`changes` as checked by the edge; an instance filter is scoped to the caller's reach."""
        if "instance_ids" in changes:
            changes = {**changes, "instance_ids": creation_filter(changes["instance_ids"], current_principal.get())}
        sub = await self.owned(sub_id)
        updated = await self.store.update_subscription(sub.id, **changes)
        if updated is None:
            raise InvalidRequest([Violation("id", "no such webhook subscription")])
        self._wake()
        return await self.shown(updated)

    async def delete(self, sub_id: str) -> None:
        sub = await self.owned(sub_id)
        await self.store.delete_subscription(sub.id)

    async def rotate_secret(self, sub_id: str) -> Shown:
        sub = await self.owned(sub_id)
        secret = new_secret()
        register_secret(secret)
        updated = await self.store.update_subscription(sub.id, secret=secret)
        assert updated is not None
        return await self.shown(updated)

    async def deliveries(
        self, sub_id: str, *, states: Sequence[str], limit: int, before_id: int | None
    ) -> list[DeliveryRecord]:
        sub = await self.owned(sub_id, "subscription_id")
        return await self.store.list_deliveries(sub.id, states=states, limit=limit, before_id=before_id)

    async def replay(self, sub_id: str, delivery_ids: Sequence[int]) -> int:
        sub = await self.owned(sub_id, "subscription_id")
        replayed = await self.store.replay(sub.id, list(delivery_ids))
        self._wake()
        return replayed

    def _wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()
