"""The send policy on the status page (docs/send-policy.md): a form on each instance card, for a
viewer the page lets act, posted like the other actions (status_actions.py: the page's auth, the
instance scope, CSRF) and stored through the SendPolicies use case exactly like the gRPC
SetSendPolicy: the same validation (a bad value answers its reason code and field, nothing is
stored) and the same audit row in send_policy_audit, with the operator's principal as `by`.

Empty fields mean "no limit" (0) or "none" (quiet hours); "Remove policy" sets every limit to 0
(the number's traffic passes unchanged again), keeping its opt-out list."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import time

from aiohttp import web

from services.app.send_policy import SendPolicies
from services.http.status_actions import StatusActions
from services.http.status_protection import CLOCKS, COUNTS, SECONDS, policy_value
from services.http.status_views import action_text as _a
from services.http.status_views import esc as _e
from statemachine.errors import InstanceNotFound, InvalidRequest
from statemachine.optout import list_name_problem
from statemachine.send_policy import SendPolicy
from statemachine.validation import Violation

TRUE = ("1", "on", "true", "yes")


def _number(fields: dict[str, str], name: str, whole: bool, problems: list[Violation]) -> float:
    raw = fields.get(name, "").strip().replace(",", ".")
    if not raw:
        return 0
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        problems.append(Violation(f"policy.{name}", "must be a whole number" if whole else "must be a number"))
        return 0
    if not math.isfinite(value):
        problems.append(Violation(f"policy.{name}", "must be a number"))
        return 0
    return value


def _clock(fields: dict[str, str], name: str, problems: list[Violation]) -> time | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        return time.fromisoformat(raw)
    except ValueError:
        problems.append(Violation(f"policy.{name}", "must be a local time HH:MM"))
        return None


def policy_from_form(fields: dict[str, str]) -> tuple[SendPolicy, str]:
    """The form's policy and opt-out list ('' = the instance's own). Values the form cannot carry
    raise InvalidRequest here; the limits themselves are checked by the use case (validate_policy)."""
    problems: list[Violation] = []
    seconds = {name: float(_number(fields, name, False, problems)) for name in SECONDS}
    counts = {name: int(_number(fields, name, True, problems)) for name in COUNTS}
    clocks = {name: _clock(fields, name, problems) for name in CLOCKS}
    optout_list = fields.get("optout_list", "").strip()
    if optout_list and (problem := list_name_problem(optout_list)):
        problems.append(Violation("optout_list", problem))
    if problems:
        raise InvalidRequest(problems)
    policy = SendPolicy(
        min_interval_seconds=seconds["min_interval_seconds"],
        jitter_seconds=seconds["jitter_seconds"],
        max_per_minute=counts["max_per_minute"],
        new_recipients_per_hour=counts["new_recipients_per_hour"],
        new_recipients_per_day=counts["new_recipients_per_day"],
        warmup_start_per_day=counts["warmup_start_per_day"],
        warmup_days=counts["warmup_days"],
        quiet_start=clocks["quiet_start"],
        quiet_end=clocks["quiet_end"],
        time_zone=fields.get("time_zone", "").strip() or "UTC",
        release_requires_confirmation=fields.get("release_requires_confirmation", "").lower() in TRUE,
    )
    return policy, optout_list


def _saved(policy: SendPolicy, optout_list: str, by: str, lang: str) -> str:
    rows = "".join(
        f'<dt>{_e(_a(lang, "p_" + name))}</dt><dd data-field="{name}">{_e(policy_value(policy, name) or "—")}</dd>'
        for name in (*SECONDS, *COUNTS, *CLOCKS)
    )
    rows += f'<dt>{_e(_a(lang, "p_time_zone"))}</dt><dd data-field="time_zone">{_e(policy.time_zone)}</dd>'
    rows += f'<dt>{_e(_a(lang, "p_optout_list"))}</dt><dd data-field="optout_list">{_e(optout_list or "—")}</dd>'
    confirm = _a(lang, "p_yes" if policy.release_requires_confirmation else "p_no")
    rows += (
        f"<dt>{_e(_a(lang, 'p_release_requires_confirmation'))}</dt>"
        f'<dd data-field="release_requires_confirmation">{_e(confirm)}</dd>'
    )
    state = _a(lang, "policy_active" if policy.active else "policy_inactive")
    return (
        f'<p id="policy-state" data-active="{str(policy.active).lower()}">{_e(state)}</p>'
        f'<dl id="policy">{rows}</dl><p id="policy-by" data-by="{_e(by)}">{_e(_a(lang, "policy_by", by=by))}</p>'
    )


class PolicyAction:
    """POST /status/instances/{instance_id}/send-policy."""

    def __init__(
        self, actions: StatusActions, policies: SendPolicies, lists_changed: Callable[[], None] | None = None
    ) -> None:
        self.actions = actions
        self.policies = policies
        self.lists_changed = lists_changed  # this replica's opt-outs re-read which list is whose

    async def set_policy(self, request: web.Request) -> web.Response:
        guarded = await self.actions._guard(request)
        if isinstance(guarded, web.Response):
            return guarded
        principal, lang, fields = guarded
        instance_id = request.match_info["instance_id"]
        if not principal.may_use(instance_id):
            return self.actions._page(lang, _a(lang, "failed_title"), "<p>PERMISSION_DENIED</p>", status=403)
        try:
            instance = await self.actions.reads.instances.cached(instance_id)
            if instance is None:
                raise InstanceNotFound(instance_id)
            if fields.get("clear"):
                current = await self.policies.get(instance_id)
                policy, optout_list = SendPolicy(), (current.optout_list or "") if current else ""
            else:
                policy, optout_list = policy_from_form(fields)
            record = await self.policies.set(instance_id, policy, by=principal.name, optout_list=optout_list)
        except Exception as error:
            return self.actions._failure(lang, error)
        if self.lists_changed is not None:
            self.lists_changed()
        title = _a(lang, "policy_title", name=instance.record.name or instance_id)
        return self.actions._page(lang, title, _saved(record.policy, record.optout_list or "", principal.name, lang))
