"""The W-API simulator: an aiohttp app speaking W-API's HTTP contract on loopback, plus its driver.

Same paths (``/v1/message/send-*``, ``/v1/instance/*``, ``/v1/webhook/update-webhook-*``), same auth
(``Authorization: Bearer <token>`` checked per instance, ``instanceId`` query parameter required), same
payload shapes (see payloads.py). Each instance has a *behaviour* that decides how it answers, and
the simulator posts W-API-shaped webhooks to a configured URL. A small JSON control API under
``/_sim/`` drives it from another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from aiohttp import ClientSession, ClientTimeout, web

from adapters.simulator import payloads, recovery
from adapters.simulator.dialects import DialectSimulator
from adapters.simulator.payloads import JSONDict

logger = logging.getLogger("wapi_guard.simulator")

API_PREFIX: Final = "/v1"
HANG_SECONDS: Final = 30.0  # the `timeout` behaviour: longer than any client timeout, still bounded
WEBHOOK_POST_TIMEOUT: Final = 5.0
SHUTDOWN_TIMEOUT: Final = 1.0
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
_REDACTED_QUERY_KEYS: Final = frozenset({"token", "access_token", "apikey", "api_key", "authorization"})

# Which `update-webhook-<kind>` URL (if set for the instance) receives each posted body.
_WEBHOOK_KIND: Final[Mapping[str, str]] = {
    "webhookStatus": "message-status",
    "webhookConnected": "connected",
    "webhookDisconnected": "disconnected",
    "webhookDelivery": "delivery",
    "webhookReceived": "received",
    "": "chat-presence",  # event-less per-chat status bodies
}


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


def _check_behaviour(behaviour: str) -> str:
    if behaviour not in payloads.BEHAVIOURS:
        raise ValueError(f"unknown behaviour {behaviour!r}; one of {', '.join(payloads.BEHAVIOURS)}")
    return behaviour


def _check_acks(acks: str) -> str:
    if acks not in payloads.ACK_STYLES:
        raise ValueError(f"unknown ack style {acks!r}; one of {', '.join(payloads.ACK_STYLES)}")
    return acks


def _check_style(style: str) -> str:
    if style not in payloads.STATUS_STYLES:
        raise ValueError(f"unknown status style {style!r}; one of {', '.join(payloads.STATUS_STYLES)}")
    return style


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Simulator:
    """A W-API stand-in on loopback. See the module docstring and payloads.BEHAVIOURS."""

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

    def __repr__(self) -> str:
        return f"Simulator(base_url={self.base_url if self._port else None!r}, instances={len(self._instances)})"

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._host = host
        self._port = int(sock.getsockname()[1])
        self.dialects.bound_to(self._port)
        self._session = ClientSession(timeout=ClientTimeout(total=WEBHOOK_POST_TIMEOUT))
        runner = web.AppRunner(
            build_app(self), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None
        )
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        logger.debug("simulator listening on %s", self.base_url)

    async def stop(self) -> None:
        """Stops serving, wakes hanging handlers and cancels every pending webhook task."""
        self._closed = True
        self._stopping.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Simulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

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

    # --- configuration ---------------------------------------------------------------------------

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
            behaviour=_check_behaviour(behaviour),
            phone=phone,
            plan=plan.upper(),
            status_style=_check_style(status_style),
            lid=lid,
            acks=_check_acks(acks),
        )

    def set_behaviour(self, instance_id: str, behaviour: str) -> None:
        instance = self._instance(instance_id)
        instance.behaviour = _check_behaviour(behaviour)
        instance.gateway_counter = 0

    def set_acks(self, instance_id: str, acks: str) -> None:
        """How the instance acks accepted sends from now on (payloads.ACK_STYLES; "none": off)."""
        self._instance(instance_id).acks = _check_acks(acks)

    def set_status_style(self, instance_id: str, status_style: str) -> None:
        self._instance(instance_id).status_style = _check_style(status_style)

    def set_webhook_url(self, url: str | None) -> None:
        self.webhook_url = url

    def sends(self, instance_id: str) -> list[JSONDict]:
        """Every send request received for this instance, in order:
        ``{"endpoint", "body", "status", "message_id"}``."""
        return list(self._sends.get(instance_id, []))

    def instance_ids(self) -> list[str]:
        return list(self._instances)

    def _instance(self, instance_id: str) -> SimInstance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise KeyError(f"unknown simulator instance {instance_id!r}") from None

    # --- webhooks --------------------------------------------------------------------------------

    async def emit(self, instance_id: str, kind: str, **kw: Any) -> list[JSONDict]:
        """Post webhook(s) of `kind` now (awaited, in order); returns the bodies posted.

        kinds: status(message_id, status="delivered", to=None), duplicate_status(same),
        out_of_order(message_id, to=None), eventless(chat, status="available"), connected(phone=None),
        connected_without_phone(), disconnected(), delivery(message_id=None, to=None, text=""),
        received(sender="5511988887777", text="oi", message_id=None, push_name="Cliente").
        Emitting only posts: it does not change the instance's behaviour.
        """
        builder = self._builders().get(kind)
        if builder is None:
            raise ValueError(f"unknown emit kind {kind!r}; one of {', '.join(payloads.EMIT_KINDS)}")
        instance = self._instance(instance_id)
        bodies = builder(instance, **kw)
        for body in bodies:
            url = self._webhook_target(instance, body)
            if url is None:
                raise RuntimeError("no webhook URL configured (Simulator(webhook_url=...) or set_webhook_url)")
            await self._post(url, body)
        return bodies

    def _builders(self) -> dict[str, Callable[..., list[JSONDict]]]:
        return {
            "status": self._emit_status,
            "duplicate_status": self._emit_duplicate_status,
            "out_of_order": self._emit_out_of_order,
            "eventless": self._emit_eventless,
            "connected": self._emit_connected,
            "connected_without_phone": self._emit_connected_without_phone,
            "disconnected": self._emit_disconnected,
            "delivery": self._emit_delivery,
            "received": self._emit_received,
        }

    def _recipient_of(self, instance: SimInstance, message_id: str) -> str:
        for send in self._sends.get(instance.instance_id, []):
            if send.get("message_id") == message_id:
                body = send.get("body")
                if isinstance(body, Mapping) and isinstance(body.get("phone"), str):
                    return str(body["phone"])
        return "5511988887777"

    def _emit_status(
        self, instance: SimInstance, message_id: str, status: str = "delivered", to: str | None = None
    ) -> list[JSONDict]:
        to = to or self._recipient_of(instance, message_id)
        return [payloads.webhook_status(instance.instance_id, instance.phone, message_id, status, to)]

    def _emit_duplicate_status(
        self, instance: SimInstance, message_id: str, status: str = "delivered", to: str | None = None
    ) -> list[JSONDict]:
        body = self._emit_status(instance, message_id, status, to)[0]
        return [body, dict(body)]

    def _emit_out_of_order(self, instance: SimInstance, message_id: str, to: str | None = None) -> list[JSONDict]:
        to = to or self._recipient_of(instance, message_id)
        read = payloads.webhook_status(instance.instance_id, instance.phone, message_id, "read", to)
        delivered = payloads.webhook_status(instance.instance_id, instance.phone, message_id, "delivered", to)
        return [read, delivered]

    def _emit_eventless(
        self, instance: SimInstance, chat: str = "5511988887777", status: str = "available"
    ) -> list[JSONDict]:
        return [payloads.webhook_eventless(instance.instance_id, instance.phone, chat, status, instance.lid)]

    def _emit_connected(self, instance: SimInstance, phone: str | None = None) -> list[JSONDict]:
        return [payloads.webhook_connected(instance.instance_id, phone or instance.phone)]

    def _emit_connected_without_phone(self, instance: SimInstance) -> list[JSONDict]:
        return [payloads.webhook_connected(instance.instance_id, None)]

    def _emit_disconnected(self, instance: SimInstance) -> list[JSONDict]:
        return [payloads.webhook_disconnected(instance.instance_id)]

    def _emit_delivery(
        self, instance: SimInstance, message_id: str | None = None, to: str | None = None, text: str = ""
    ) -> list[JSONDict]:
        message_id = message_id or payloads.new_message_id()
        to = to or self._recipient_of(instance, message_id)
        return [
            payloads.webhook_delivery(instance.instance_id, instance.phone, message_id, to, text=text, lid=instance.lid)
        ]

    def _emit_received(
        self,
        instance: SimInstance,
        sender: str = "5511988887777",
        text: str = "oi",
        message_id: str | None = None,
        push_name: str = "Cliente",
    ) -> list[JSONDict]:
        return [
            payloads.webhook_received(
                instance.instance_id,
                instance.phone,
                message_id or payloads.new_message_id(),
                sender,
                text=text,
                push_name=push_name,
            )
        ]

    def _webhook_target(self, instance: SimInstance, body: Mapping[str, Any]) -> str | None:
        kind = _WEBHOOK_KIND.get(str(body.get("event", "")), "")
        return instance.webhook_urls.get(kind) or self.webhook_url

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Fire and forget, tracked: stop() cancels whatever is still pending."""
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_later(self, delay: float, instance: SimInstance, body: JSONDict) -> None:
        await asyncio.sleep(max(delay, 0.0))
        url = self._webhook_target(instance, body)
        if url is not None:
            await self._post(url, body)

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

    def _schedule_ack(self, instance: SimInstance, message_id: str, to: str) -> None:
        """The send left the phone: a `sent` status and/or a webhookDelivery after acked_after s,
        whether or not the recipient is online."""
        bodies: list[JSONDict] = []
        if instance.acks in ("status", "both"):
            bodies.append(payloads.webhook_status(instance.instance_id, instance.phone, message_id, "sent", to))
        if instance.acks in ("delivery", "both"):
            bodies.append(
                payloads.webhook_delivery(instance.instance_id, instance.phone, message_id, to, lid=instance.lid)
            )
        for body in bodies:
            self._spawn(self._post_later(self.acked_after, instance, body))

    def _schedule_receipts(self, instance: SimInstance, message_id: str, to: str) -> None:
        """Healthy delivery: `delivered` after delivered_after s, `read` after read_after s, unless
        the recipient has its own behaviour (set_recipient)."""
        recipient = self.recipient(to)
        if not recipient.confirms:
            return
        delivered = self.delivered_after if recipient.delivered_after is None else recipient.delivered_after
        read = self.read_after if recipient.read_after is None else recipient.read_after
        for delay, status in ((delivered, "delivered"), (max(read, delivered), "read")):
            if status == "read" and read < 0:
                continue
            body = payloads.webhook_status(instance.instance_id, instance.phone, message_id, status, to)
            self._spawn(self._post_later(delay, instance, body))

    # --- W-API endpoints -------------------------------------------------------------------------

    async def handle_api(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "").strip("/")
        instance_id = request.query.get("instanceId", "")
        instance = self._instances.get(instance_id)
        token = _bearer(request.headers.get("Authorization", ""))
        valid = (
            instance is not None and token is not None and hmac.compare_digest(token.encode(), instance.token.encode())
        )
        query = {k: ("***" if k.lower() in _REDACTED_QUERY_KEYS else v) for k, v in request.query.items()}
        self.requests.append(SimRequest(request.method, f"/{tail}", query, valid))

        body: Any = None
        is_send = tail.startswith("message/send-")
        if request.method in ("POST", "PUT") and request.can_read_body:
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                body = None
        send: JSONDict = {"endpoint": f"/{tail}", "body": body, "status": None, "message_id": None}
        if is_send and instance_id:
            self._sends.setdefault(instance_id, []).append(send)
        response = await self._answer(request.method, tail, instance, valid, body, query, send)
        send["status"] = response.status
        return response

    async def _answer(
        self,
        method: str,
        tail: str,
        instance: SimInstance | None,
        valid_auth: bool,
        body: Any,
        query: Mapping[str, str],
        send: JSONDict,
    ) -> web.StreamResponse:
        if not query.get("instanceId"):
            return _json(payloads.error_body("instanceId is required"), 400)
        if instance is None:
            return _json(payloads.error_body("Instância não encontrada"), 404)
        behaviour = instance.behaviour
        if behaviour == "token_invalid":
            return _json(payloads.error_body("Token inválido ou expirado"), 401)
        if behaviour == "deleted":
            return _json(payloads.error_body("Instância não encontrada"), 404)
        if not valid_auth:
            return _json(payloads.error_body("Token inválido ou expirado"), 401)
        if behaviour == "timeout":
            await self._hang()
            variant = payloads.GATEWAY_VARIANTS[2]  # what a proxy says after its own timeout
            return web.Response(status=variant.status, body=variant.body, content_type="text/html")
        if behaviour == "gateway_error":
            variant = payloads.GATEWAY_VARIANTS[instance.gateway_counter % len(payloads.GATEWAY_VARIANTS)]
            instance.gateway_counter += 1
            return web.Response(
                status=variant.status, body=variant.body, headers={"Content-Type": variant.content_type}
            )

        if tail.startswith("message/send-"):
            if method != "POST":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_send(instance, tail.removeprefix("message/"), body, send)
        if tail in ("webhook/fetch-webhook-logs", "webhook/get-webhook-log") or tail.startswith(
            "webhook/fetch-webhook-log/"
        ):
            if method != "GET":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_webhook_logs(instance, tail.removeprefix("webhook/"), query)
        if tail.startswith("webhook/update-webhook-"):
            if method != "PUT":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_update_webhook(instance, tail.removeprefix("webhook/update-webhook-"), body)
        if tail.startswith("instance/"):
            if method != "GET":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_instance(instance, tail.removeprefix("instance/"), query)
        return _json(payloads.error_body(f"rota não encontrada: /{tail}"), 404)

    async def _hang(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), HANG_SECONDS)

    def _connected(self, instance: SimInstance) -> bool:
        return instance.behaviour != "disconnected"

    def _answer_send(self, instance: SimInstance, endpoint: str, body: Any, send: JSONDict) -> web.Response:
        problem = payloads.validate_send(endpoint, body, instance.plan)
        if problem is not None:
            return _json(payloads.error_body(problem), 400)
        behaviour = instance.behaviour
        if behaviour == "disconnected":
            return _json(payloads.error_body("instance not connected"), 400)  # (guess) status code
        if behaviour == "accepted_with_error":
            return _json(payloads.error_body("Falha ao enviar mensagem"))
        if behaviour == "accepted_without_id":
            return _json(payloads.send_accepted_without_id())
        if behaviour == "accepted_queued":
            return _json(payloads.send_queued(payloads.new_message_id()))
        message_id = payloads.new_message_id()
        send["message_id"] = message_id
        if behaviour in ("healthy", "acking_stall"):
            self._schedule_ack(instance, message_id, str(body["phone"]))
        if behaviour == "healthy":
            self._schedule_receipts(instance, message_id, str(body["phone"]))
        # session_incomplete and silent_stall: accepted with an id, never acked nor delivered;
        # acking_stall: acked (on WhatsApp's servers), never delivered.
        return _json(payloads.send_accepted(message_id))

    def _answer_instance(self, instance: SimInstance, name: str, query: Mapping[str, str]) -> web.StreamResponse:
        behaviour = instance.behaviour
        connected = self._connected(instance)
        phone = None if behaviour == "session_incomplete" else instance.phone
        if name == "status-instance":
            if behaviour == "disconnected":
                return _json(payloads.status_disconnected())
            if behaviour == "session_incomplete":
                return _json(payloads.status_incomplete(instance.status_style))
            return _json(payloads.status_connected(instance.phone, instance.status_style))
        if name == "qr-code":
            return self._answer_qr_code(instance, connected, query)
        if name == "pairing-code":
            return self._answer_pairing_code(instance, query)
        if name == "restart":
            return self._answer_restart(instance)
        if name == "disconnect":
            instance.behaviour = "disconnected"
            body = payloads.webhook_disconnected(instance.instance_id)
            self._spawn(self._post_later(0.0, instance, body))
            instance.recovery.pairing = None
            return _json(recovery.disconnect_answer())
        if name == "fetch-instance":
            answer = payloads.fetch_instance_answer(instance.instance_id, phone, connected, instance.plan)
            answer.update(recovery.fetch_instance_webhooks(instance.webhook_urls))
            return _json(answer)
        return _json(payloads.error_body(f"rota não encontrada: /instance/{name}"), 404)

    def _answer_update_webhook(self, instance: SimInstance, kind: str, body: Any) -> web.Response:
        if kind not in recovery.WEBHOOK_KINDS:
            return _json(payloads.error_body(f"rota não encontrada: /webhook/update-webhook-{kind}"), 404)
        url = recovery.webhook_url_of(body)
        if url is None:
            return _json(payloads.error_body("value (urlWebhook) is required"), 400)
        instance.webhook_urls[kind] = url
        return _json({"error": False, "message": "webhook updated"})

    # --- recovery (pairing, restart, webhook log) -------------------------------------------------

    def _answer_qr_code(self, instance: SimInstance, connected: bool, query: Mapping[str, str]) -> web.Response:
        if connected and instance.behaviour != "session_incomplete":
            return _json(payloads.qr_code_answer(True))
        state = instance.recovery
        if not state.qr_png:  # one QR per pairing attempt, like WhatsApp's (refreshed after a pairing)
            state.qr_png = recovery.qr_png(instance.instance_id)
        png = state.qr_png
        if query.get("image") == "enable":
            return web.Response(body=png, content_type="image/png")
        return _json(recovery.qr_answer(png))

    def _answer_pairing_code(self, instance: SimInstance, query: Mapping[str, str]) -> web.Response:
        state = instance.recovery
        state.pairing_requests += 1
        if instance.behaviour in ("healthy", "silent_stall", "acking_stall", "accepted_queued"):
            return _json(recovery.already_connected_answer(instance.phone))
        phone = recovery.pairing_phone(query)
        if phone is None:
            return _json(payloads.error_body("phoneNumber inválido (apenas dígitos, com DDI e DDD)"), 400)
        state.pairing = recovery.PendingPairing(recovery.new_pairing_code(), phone, time.monotonic())
        return _json(recovery.pairing_answer(state.pairing.code))

    def _answer_restart(self, instance: SimInstance) -> web.Response:
        """Restarting keeps the session as it was (an incomplete one stays incomplete): the
        disconnection and the new connection are posted as webhooks."""
        instance.recovery.restarts += 1
        self._spawn(self._post_later(0.0, instance, payloads.webhook_disconnected(instance.instance_id)))
        if instance.behaviour != "disconnected":
            phone = None if instance.behaviour == "session_incomplete" else instance.phone
            self._spawn(
                self._post_later(self.restart_after, instance, payloads.webhook_connected(instance.instance_id, phone))
            )
        return _json(recovery.restart_answer())

    def _answer_webhook_logs(self, instance: SimInstance, name: str, query: Mapping[str, str]) -> web.Response:
        if instance.plan != "PRO":
            return _json(payloads.error_body("Recurso disponível apenas no plano PRO"), 400)  # (guess) code
        if name == "fetch-webhook-logs":
            body, status = recovery.logs_page(instance.recovery, query)
            return _json(body, status)
        log_id = query.get("id", "") if name == "get-webhook-log" else name.rsplit("/", 1)[-1]
        body, status = recovery.log_entry(instance.recovery, log_id)
        return _json(body, status)

    async def type_pairing_code(self, instance_id: str, code: str) -> JSONDict:
        """The operator typed the pairing code on the phone: the session pairs with that phone."""
        instance = self._instance(instance_id)
        pending = instance.recovery.pairing
        if pending is None or not hmac.compare_digest(pending.code.encode(), code.strip().upper().encode()):
            raise ValueError("no pairing code like that is pending for this instance")
        instance.recovery.pairing = None
        instance.recovery.qr_png = b""
        instance.phone = pending.phone
        instance.behaviour = "healthy"
        instance.gateway_counter = 0
        if self.forget_webhooks_on_pairing:
            instance.webhook_urls.clear()
        body = payloads.webhook_connected(instance.instance_id, pending.phone)
        url = self._webhook_target(instance, body)
        if url is not None:
            await self._post(url, body)
        return {"instance_id": instance_id, "phone": pending.phone}

    def pending_pairing_code(self, instance_id: str) -> str | None:
        pending = self._instance(instance_id).recovery.pairing
        return pending.code if pending else None

    def webhook_log(self, instance_id: str) -> list[JSONDict]:
        return list(self._instance(instance_id).recovery.log)

    def configured_webhooks(self, instance_id: str) -> dict[str, str]:
        return dict(self._instance(instance_id).webhook_urls)

    # --- control API (/_sim/) --------------------------------------------------------------------

    async def handle_control(self, request: web.Request) -> web.StreamResponse:
        """A tiny JSON API so another process can drive the simulator. Loopback test tool only."""
        parts = [p for p in request.match_info.get("tail", "").split("/") if p]
        body: Any = {}
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "body must be a JSON object"}, 400)
        try:
            return await self._control(request.method, parts, body)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            status = 404 if isinstance(exc, KeyError) else 400
            return _json({"error": str(exc).strip("'\"")}, status)

    async def _control(self, method: str, parts: list[str], body: JSONDict) -> web.Response:
        if parts == ["health"] and method == "GET":
            return _json({"ok": True, "base_url": self.base_url, "instances": self.instance_ids()})
        if parts == ["instances"] and method == "POST":
            self.add_instance(
                str(body["instance_id"]),
                str(body["token"]),
                behaviour=str(body.get("behaviour", "healthy")),
                phone=str(body.get("phone", "5511999990000")),
                plan=str(body.get("plan", "PRO")),
                status_style=str(body.get("status_style", "phone")),
                acks=str(body.get("acks", "status")),
            )
            return _json({"instance_id": body["instance_id"]}, 201)
        if len(parts) == 3 and parts[0] == "instances":
            instance_id, action = parts[1], parts[2]
            if action == "behaviour" and method == "POST":
                self.set_behaviour(instance_id, str(body["behaviour"]))
                return _json({"instance_id": instance_id, "behaviour": body["behaviour"]})
            if action == "acks" and method == "POST":
                self.set_acks(instance_id, str(body["acks"]))
                return _json({"instance_id": instance_id, "acks": body["acks"]})
            if action == "emit" and method == "POST":
                kw = dict(body)
                kind = str(kw.pop("kind"))
                return _json({"posted": await self.emit(instance_id, kind, **kw)})
            if action == "sends" and method == "GET":
                self._instance(instance_id)
                return _json({"sends": self.sends(instance_id)})
            if action == "type-pairing-code" and method == "POST":
                return _json(await self.type_pairing_code(instance_id, str(body.get("code", ""))))
            if action == "pairing-code" and method == "GET":
                return _json({"code": self.pending_pairing_code(instance_id)})
            if action == "webhooks" and method == "GET":
                return _json({"urls": self.configured_webhooks(instance_id), "log": self.webhook_log(instance_id)})
        if parts == ["recipients"] and method == "POST":
            self.set_recipient(
                str(body["phone"]),
                confirms=bool(body.get("confirms", True)),
                delivered_after=None if body.get("delivered_after") is None else float(body["delivered_after"]),
                read_after=None if body.get("read_after") is None else float(body["read_after"]),
            )
            return _json({"phone": body["phone"]}, 201)
        if parts == ["webhook-url"] and method == "POST":
            url = body.get("url")
            self.set_webhook_url(str(url) if url else None)
            return _json({"webhook_url": self.webhook_url})
        if parts == ["requests"] and method == "GET":
            return _json({"requests": [r._asdict() for r in self.requests]})
        if parts == ["webhooks"] and method == "GET":
            return _json({"posts": self.webhook_posts, "errors": self.webhook_errors})
        return _json({"error": f"no control route {method} /_sim/{'/'.join(parts)}"}, 404)


def build_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)  # base64 media bodies are large
    app.router.add_route("*", API_PREFIX + "/{tail:.*}", sim.handle_api)
    app.router.add_route("*", "/_sim/{tail:.*}", sim.handle_control)
    sim.dialects.attach(app)  # Z-API and Evolution (issue 24)
    return app
