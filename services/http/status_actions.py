"""Per-instance actions on the status page: show the QR code, ask for a pairing code, restart an
instance, clear a delivery stall, retry a failed message (and, through these checks, set the send
policy: status_policy.py). Plain HTML forms (they work without JavaScript), each a POST
protected by the page's auth (the same tokens, the same instance scopes) and by CSRF checks:

- a token in every form, HMAC of the viewer's identity under a key only the server knows (stable
  across replicas when API tokens or a webhook secret are configured), compared in constant time;
- the browser's `Origin` (or `Sec-Fetch-Site`) must say the request comes from this page's origin;
- the body must be a form post (a cross-site `fetch` with JSON cannot pass for one).
"""

from __future__ import annotations

import base64
import logging
import math
from typing import Any

from aiohttp import web

from services.app.errors import classify
from services.app.principals import Principal
from services.app.recovery import NOT_STALLED, Recovery
from services.app.sending import Sending
from services.http.status_snapshot import StatusReads
from services.http.status_viewer import Csrf, Viewer
from services.http.status_views import action_text as _a
from services.http.status_views import esc as _e
from services.i18n import reason_label, state_view, violation_text
from statemachine.errors import GuardError, InvalidRequest, RecoveryRefused

log = logging.getLogger("wapi_guard.status")


class StatusActions:
    def __init__(self, viewer: Viewer, reads: StatusReads, sending: Sending, recovery: Recovery, csrf: Csrf) -> None:
        self.viewer = viewer  # auth, language, headers
        self.reads = reads
        self.sending = sending
        self.recovery = recovery
        self.csrf = csrf

    async def _guard(self, request: web.Request) -> tuple[Principal, str, dict[str, str]] | web.Response:
        form = (
            await request.post()
            if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
            else None
        )
        lang = self.viewer.lang(request)
        if form is not None and str(form.get("lang", "")) in ("en", "pt-BR"):
            lang = str(form["lang"])
        principal = self.viewer.principal(request)
        if principal is None:
            return self.viewer.denied(lang, as_json=False)
        fields = {k: str(v) for k, v in (form or {}).items() if isinstance(v, str)}
        if form is None or not self.csrf.valid(request, principal, fields.get("csrf", "")):
            return self._page(lang, _a(lang, "failed_title"), f"<p>{_e(_a(lang, 'csrf'))}</p>", status=403)
        return principal, lang, fields

    def _page(
        self, lang: str, title: str, body: str, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> web.Response:
        html = f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,"><title>{_e(title)} — wapi-guard</title>
<link rel="stylesheet" href="/status/static/status.css"></head>
<body><main class="action-result"><h1>{_e(title)}</h1>{body}
<p><a href="/status?lang={lang}" id="back">{_e(_a(lang, "back"))}</a></p></main></body></html>"""
        return web.Response(
            text=html,
            status=status,
            content_type="text/html",
            charset="utf-8",
            headers={**self.viewer.headers(), **(headers or {})},
        )

    def _failure(self, lang: str, error: Exception) -> web.Response:
        status = classify(error)
        if status is None:
            log.exception("status page action failed")
            return self._page(lang, _a(lang, "failed_title"), "<p>internal error</p>", status=500)
        reason = error.reason.value if isinstance(error, GuardError) else "STORAGE_UNAVAILABLE"
        detail = ""
        if isinstance(error, InvalidRequest):
            detail = "".join(
                f'<li data-field="{_e(v.field)}">{_e(v.field)}: {_e(violation_text(v.description, lang))}</li>'
                for v in error.violations
            )
        body = f'<p class="reason" data-reason="{_e(reason)}">{_e(reason_label(reason, lang))} ({_e(reason)})</p>'
        if detail:
            body += f'<ul id="violations">{detail}</ul>'
        extra: dict[str, str] = {}
        retry_after = getattr(error, "retry_after", None)
        if isinstance(error, RecoveryRefused) and retry_after is not None:
            seconds = f"{math.ceil(retry_after):d}"
            extra["Retry-After"] = seconds
            body += f'<p id="retry-after" data-seconds="{seconds}">{_e(_a(lang, "retry_after", seconds=seconds))}</p>'
        code = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429}
        return self._page(
            lang,
            _a(lang, "failed_title"),
            body,
            status=code.get(
                status.outcome.value, 409 if status.outcome.value in ("FAILED_PRECONDITION", "ABORTED") else 502
            ),
            headers=extra,
        )

    def _state(self, record: Any, lang: str, next_step: str) -> str:
        reason = self.reads.instances.view(record, lang).reason
        view = state_view(record.state.value, reason, lang)
        html = (
            f'<p>{_e(_a(lang, "state"))}: <span class="badge tone-{view.tone}" id="state" '
            f'data-state="{_e(record.state.value)}" data-reason="{_e(reason)}">{_e(view.label)}</span> '
            f"{_e(reason_label(reason, lang))}</p>"
        )
        if next_step:
            html += f'<p id="next-step"><strong>{_e(_a(lang, "next"))}:</strong> {_e(next_step)}</p>'
        return html

    async def _instance_action(self, request: web.Request, action: str) -> web.Response:
        guarded = await self._guard(request)
        if isinstance(guarded, web.Response):
            return guarded
        principal, lang, fields = guarded
        instance_id = request.match_info["instance_id"]
        if not principal.may_use(instance_id):
            return self._page(lang, _a(lang, "failed_title"), "<p>PERMISSION_DENIED</p>", status=403)
        from services.app.principals import current_principal

        token = current_principal.set(principal)
        try:
            if action == "qr":
                result = await self.recovery.qr_code(instance_id, lang)
            elif action == "pairing-code":
                result = await self.recovery.pairing_code(instance_id, fields.get("phone", ""), lang)
            elif action == "clear-stall":
                result = await self.recovery.clear_stall(instance_id, lang)
            else:
                result = await self.recovery.restart(instance_id, lang)
        except Exception as error:
            return self._failure(lang, error)
        finally:
            current_principal.reset(token)
        name = result.health.name or instance_id
        outcome = result.outcome
        if action == "qr":
            title = _a(lang, "qr_title", name=name)
            if outcome.png:
                image = base64.b64encode(outcome.png).decode()
                body = (
                    f'<p>{_e(_a(lang, "qr_hint"))}</p><img id="qr" alt="QR code" src="data:image/png;base64,{image}">'
                )
            else:
                body = f"<p>{_e(_a(lang, 'already'))}</p>"
        elif action == "pairing-code":
            title = _a(lang, "pair_title", name=name)
            if outcome.pairing_code:
                body = f'<p class="pairing-code"><output id="pairing-code">{_e(outcome.pairing_code)}</output></p>'
            else:
                body = f"<p>{_e(_a(lang, 'already'))}</p>"
        elif action == "clear-stall":
            title = _a(lang, "clear_stall_title", name=name)
            done = outcome.detail != NOT_STALLED
            text = _a(lang, "stall_cleared" if done else "not_stalled")
            body = f'<p id="cleared" data-cleared="{str(done).lower()}">{_e(text)}</p>'
        else:
            title = _a(lang, "restart_title", name=name)
            body = f"<p>{_e(outcome.message)}</p>"
        return self._page(lang, title, body + self._state(result.health, lang, result.next_step))

    async def qr(self, request: web.Request) -> web.Response:
        return await self._instance_action(request, "qr")

    async def pairing_code(self, request: web.Request) -> web.Response:
        return await self._instance_action(request, "pairing-code")

    async def restart(self, request: web.Request) -> web.Response:
        return await self._instance_action(request, "restart")

    async def clear_stall(self, request: web.Request) -> web.Response:
        return await self._instance_action(request, "clear-stall")

    async def retry(self, request: web.Request) -> web.Response:
        guarded = await self._guard(request)
        if isinstance(guarded, web.Response):
            return guarded
        principal, lang, _fields = guarded
        message_id = request.match_info["message_id"]
        try:
            msg = await self.reads.messages.get_message(message_id)
            if not principal.may_use(msg.instance_id):
                return self._page(lang, _a(lang, "failed_title"), "<p>PERMISSION_DENIED</p>", status=403)
            msg = await self.sending.retry(message_id)
        except Exception as error:
            return self._failure(lang, error)
        body = (
            f'<p id="retried" data-state="{_e(msg.state.value)}">{_e(_a(lang, "retried", state=msg.state.value))}</p>'
        )
        return self._page(lang, _a(lang, "retry_title"), body)


def add_action_routes(app: web.Application, actions: StatusActions) -> None:
    app.router.add_post("/status/instances/{instance_id}/qr", actions.qr)
    app.router.add_post("/status/instances/{instance_id}/pairing-code", actions.pairing_code)
    app.router.add_post("/status/instances/{instance_id}/restart", actions.restart)
    app.router.add_post("/status/instances/{instance_id}/clear-stall", actions.clear_stall)
    app.router.add_post("/status/messages/{message_id}/retry", actions.retry)
