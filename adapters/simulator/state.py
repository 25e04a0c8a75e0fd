"""The simulator's state and the plumbing every dialect shares: instances, recipients, the sends
and requests it received, and the tracked tasks that post webhooks (stop() cancels them).

Dialects (today W-API: wapi_webhooks.py, wapi_pairing.py, wapi_routes.py) build on SimState; the
control API (control.py) and the lifecycle (app.py) sit on top.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from aiohttp import ClientSession, web

from adapters.simulator import payloads, recovery
from adapters.simulator.dialects import DialectSimulator
from adapters.simulator.payloads import JSONDict

API_PREFIX: Final = "/v1"


@dataclass(frozen=True, slots=True)
class SimRecipient:
    """How one recipient's phone confirms: never (offline, blocked us, …) or after its own delays."""

    confirms: bool = True
    delivered_after: float | None = None  # None: the simulator's default
    read_after: float | None = None  # None: the simulator's default; < 0: never read


class SimRequest(NamedTuple):
    """One request the simulator received under /v1. Never holds the raw token."""

    method: str
    path: str
    query: dict[str, str]
    has_valid_auth: bool


@dataclass(slots=True)
class SimInstance:
    instance_id: str
    token: str = field(repr=False)
    behaviour: str = "healthy"
    phone: str = "5511999990000"
    plan: str = "PRO"
    status_style: str = "phone"
    lid: str = payloads.DEFAULT_LID
    gateway_counter: int = 0
    acks: str = "status"  # payloads.ACK_STYLES
    webhook_urls: dict[str, str] = field(default_factory=dict)
    recovery: recovery.RecoveryState = field(default_factory=recovery.RecoveryState)


def check_behaviour(behaviour: str) -> str:
    if behaviour not in payloads.BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; one of {', '.join(payloads.BEHAVIOURS)}")
    return behaviour


def check_acks(acks: str) -> str:
    if acks not in payloads.ACK_STYLES:
        raise ValueError(f"unknown ack style {acks!r}; one of {', '.join(payloads.ACK_STYLES)}")
    return acks


def check_style(style: str) -> str:
    if style not in payloads.STATUS_STYLES:
        raise ValueError(f"unknown status style {style!r}; one of {', '.join(payloads.STATUS_STYLES)}")
    return style


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


class SimState:
    """What the simulator knows and has seen; configured through its public methods."""

    def __init__(
        self,
        webhook_url: str | None = None,
        delivered_after: float = 0.05,
        read_after: float = 0.1,
        *,
        acked_after: float = 0.02,
        restart_after: float = 0.05,
        forget_webhooks_on_pairing: bool = True,
    ) -> None:
        self.webhook_url = webhook_url
        # A restart posts disconnected, then connected after this many seconds.
        self.restart_after = restart_after
        # A new pairing drops the instance's webhook URLs (what operators see after a reconnect).
        self.forget_webhooks_on_pairing = forget_webhooks_on_pairing
        self.delivered_after = delivered_after
        self.read_after = read_after
        # Seconds from an accepted send to its ack (the instance's ack style says which webhook).
        self.acked_after = acked_after
        self.requests: list[SimRequest] = []
        self.webhook_posts: list[JSONDict] = []  # {"url", "body", "status", "error"} per attempt
        self.webhook_errors = 0
        self._instances: dict[str, SimInstance] = {}
        self._sends: dict[str, list[JSONDict]] = {}
        # Numbers W-API's number check (contacts/phone-exists) says are not on WhatsApp.
        self.absent_numbers: set[str] = set()
        self._recipients: dict[str, SimRecipient] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._closed = False
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        # Z-API and Evolution dialects on the same port (adapters/simulator/dialects.py).
        self.dialects = DialectSimulator(ack_after=acked_after, delivered_after=delivered_after, read_after=read_after)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}{API_PREFIX}"

    @property
    def root_url(self) -> str:
        return self.base_url[: -len(API_PREFIX)]

    def _instance(self, instance_id: str) -> SimInstance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise KeyError(f"unknown simulator instance {instance_id!r}") from None

    def add_instance(
        self,
        instance_id: str,
        token: str,
        behaviour: str = "healthy",
        phone: str = "5511999990000",
        plan: str = "PRO",
        *,
        status_style: str = "phone",
        lid: str = payloads.DEFAULT_LID,
        acks: str = "status",
    ) -> None:
        if not instance_id or not token:
            raise ValueError("instance_id and token are required")
        self._instances[instance_id] = SimInstance(
            instance_id=instance_id,
            token=token,
            behaviour=check_behaviour(behaviour),
            phone=phone,
            plan=plan.upper(),
            status_style=check_style(status_style),
            lid=lid,
            acks=check_acks(acks),
        )

    def set_behaviour(self, instance_id: str, behaviour: str) -> None:
        instance = self._instance(instance_id)
        instance.behaviour = check_behaviour(behaviour)
        instance.gateway_counter = 0

    def set_acks(self, instance_id: str, acks: str) -> None:
        """How the instance acks accepted sends from now on (payloads.ACK_STYLES; "none": off)."""
        self._instance(instance_id).acks = check_acks(acks)

    def set_status_style(self, instance_id: str, status_style: str) -> None:
        self._instance(instance_id).status_style = check_style(status_style)

    def set_webhook_url(self, url: str | None) -> None:
        self.webhook_url = url

    def sends(self, instance_id: str) -> list[JSONDict]:
        """Every send request received for this instance, in order:
        ``{"endpoint", "body", "status", "message_id"}``."""
        return list(self._sends.get(instance_id, []))

    def instance_ids(self) -> list[str]:
        return list(self._instances)

    def set_recipient(
        self,
        phone: str,
        *,
        confirms: bool = True,
        delivered_after: float | None = None,
        read_after: float | None = None,
    ) -> None:
        """Gives one recipient its own confirmation behaviour (a phone that never confirms, or a
        slow one); every other recipient confirms after the simulator's default delays."""
        if delivered_after is not None and not 0 <= delivered_after <= 3600:
            raise ValueError("delivered_after is seconds between 0 and 3600")
        if read_after is not None and read_after > 3600:
            raise ValueError("read_after is seconds up to 3600 (negative: never read)")
        self._recipients[phone] = SimRecipient(confirms, delivered_after, read_after)

    def recipient(self, phone: str) -> SimRecipient:
        return self._recipients.get(phone, SimRecipient())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Fire and forget, tracked: stop() cancels whatever is still pending."""
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, body: JSONDict) -> None:
        """One webhook POST; failures are swallowed and counted (W-API does not retry either)."""
        record: JSONDict = {"url": url, "body": body, "status": None, "error": None}
        self.webhook_posts.append(record)
        owner = self._instances.get(str(body.get("instanceId", "")))
        logged = recovery.record_log(owner.recovery, url, body) if owner is not None else {}
        session = self._session
        if session is None or session.closed:
            record["error"] = "simulator not running"
            self.webhook_errors += 1
            return
        try:
            async with session.post(url, json=body) as response:
                await response.read()
                record["status"] = response.status
                logged["statusCode"] = response.status
                if response.status >= 300:
                    self.webhook_errors += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the receiver's trouble is never the simulator's
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.webhook_errors += 1
