"""Send preflight: only a CONNECTED instance sends, and a LITE plan only sends what LITE supports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from statemachine.domain import InstanceState, MessageKind, Plan, Reason
from statemachine.preflight import (
    WebhookEvidence,
    WebhookPolicy,
    block_reason,
    health_verdict,
    plan_allows,
    webhooks_block_sends,
)

IS = InstanceState
K = MessageKind
ALL_KINDS = list(MessageKind)
# docs/wapi-contract.md "Basics": LITE sends text, image, audio, video, document, location, single contact.
LITE_OK = {K.TEXT, K.IMAGE, K.AUDIO, K.VIDEO, K.DOCUMENT, K.LOCATION, K.CONTACT}
LITE_REFUSED = {K.STICKER, K.REACTION}

# (state, stored reason) → the reason the send is blocked with.
BLOCKED: list[tuple[InstanceState, str, Reason]] = [
    (IS.UNKNOWN, "", Reason.HEALTH_UNKNOWN),
    (IS.UNKNOWN, Reason.REGISTERED, Reason.HEALTH_UNKNOWN),
    (IS.SESSION_INCOMPLETE, Reason.SESSION_INCOMPLETE, Reason.SESSION_INCOMPLETE),
    (IS.SESSION_INCOMPLETE, "", Reason.SESSION_INCOMPLETE),
    (IS.DEGRADED, Reason.TIMEOUT_OR_GATEWAY, Reason.TIMEOUT_OR_GATEWAY),
    (IS.DEGRADED, "", Reason.TIMEOUT_OR_GATEWAY),
    (IS.DEGRADED, Reason.DELIVERY_STALLED, Reason.DELIVERY_STALLED),
    (IS.DISCONNECTED, Reason.INSTANCE_DISCONNECTED, Reason.INSTANCE_DISCONNECTED),
    (IS.DISCONNECTED, "", Reason.INSTANCE_DISCONNECTED),
    (IS.DISCONNECTED, Reason.TOKEN_INVALID, Reason.TOKEN_INVALID),
    (IS.DISCONNECTED, Reason.INSTANCE_NOT_FOUND, Reason.INSTANCE_NOT_FOUND),
    # Specific stored reasons win whatever the state.
    (IS.UNKNOWN, Reason.TOKEN_INVALID, Reason.TOKEN_INVALID),
    (IS.UNKNOWN, Reason.INSTANCE_NOT_FOUND, Reason.INSTANCE_NOT_FOUND),
]
BLOCKED_IDS = [f"{s}-{r or 'none'}" for s, r, _ in BLOCKED]


def test_blocked_table_covers_every_state_but_connected() -> None:
    assert {s for s, _, _ in BLOCKED} == set(InstanceState) - {IS.CONNECTED}


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("plan", list(Plan))
def test_connected_passes(plan: Plan, kind: MessageKind) -> None:
    expected = None if plan is Plan.PRO or kind in LITE_OK else Reason.NOT_SUPPORTED_BY_PLAN
    assert block_reason(IS.CONNECTED, Reason.PHONE_CONFIRMED, plan, kind) == expected


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize(("state", "stored", "expected"), BLOCKED, ids=BLOCKED_IDS)
def test_every_kind_is_blocked_when_not_connected(
    state: InstanceState, stored: str, expected: Reason, kind: MessageKind
) -> None:
    """The old preflight checked only six actions; here every kind goes through the same gate."""
    result = block_reason(state, stored, Plan.PRO, kind)
    assert result is not None
    assert result == expected


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("stored", [Reason.TIMEOUT_OR_GATEWAY, Reason.DELIVERY_STALLED])
def test_degraded_is_blocked(stored: Reason, kind: MessageKind) -> None:
    """docs/wapi-contract.md, replaced-system item 2: the replaced preflight let degraded/TIMEOUT_OR_GATEWAY through."""
    assert block_reason(IS.DEGRADED, stored, Plan.PRO, kind) is not None
    assert block_reason(IS.DEGRADED, stored, Plan.PRO, kind) == stored


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_session_incomplete_is_blocked_even_with_a_healthy_looking_reason(kind: MessageKind) -> None:
    assert block_reason(IS.SESSION_INCOMPLETE, Reason.PHONE_CONFIRMED, Plan.PRO, kind) == (Reason.SESSION_INCOMPLETE)


@pytest.mark.parametrize(
    ("state", "stored"),
    [
        (IS.DISCONNECTED, Reason.SESSION_NEEDS_RESTORE),
        (IS.DISCONNECTED, Reason.LOGGED_OUT),
        (IS.DISCONNECTED, Reason.QR_REFUSED),
        (IS.DEGRADED, Reason.PHONE_OFFLINE),
    ],
)
def test_a_providers_own_session_reason_is_the_block_reason(state: InstanceState, stored: Reason) -> None:
    """Z-API's restore-session, Evolution's logout and QR limit, a phone offline: the caller is told
    which, since each has its own remedy, not the state's generic reason."""
    assert block_reason(state, stored.value, Plan.PRO, K.TEXT) is stored


def test_block_reason_returns_a_reason_enum() -> None:
    result = block_reason(IS.DISCONNECTED, "TOKEN_INVALID", Plan.PRO, K.TEXT)
    assert isinstance(result, Reason)
    assert result is Reason.TOKEN_INVALID


# --- plans --------------------------------------------------------------------------------------


def test_every_kind_is_classified() -> None:
    assert set(MessageKind) == LITE_OK | LITE_REFUSED
    assert not LITE_OK & LITE_REFUSED


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_plan_allows(kind: MessageKind) -> None:
    assert plan_allows(Plan.PRO, kind) is True
    assert plan_allows(Plan.LITE, kind) is (kind in LITE_OK)


@pytest.mark.parametrize("kind", sorted(LITE_REFUSED))
def test_lite_refuses_pro_only_kinds_even_when_connected(kind: MessageKind) -> None:
    assert block_reason(IS.CONNECTED, Reason.PHONE_CONFIRMED, Plan.LITE, kind) == Reason.NOT_SUPPORTED_BY_PLAN


@pytest.mark.parametrize("kind", sorted(LITE_OK))
def test_lite_sends_its_kinds_when_connected(kind: MessageKind) -> None:
    assert block_reason(IS.CONNECTED, Reason.PHONE_CONFIRMED, Plan.LITE, kind) is None


@pytest.mark.parametrize("kind", sorted(LITE_REFUSED))
@pytest.mark.parametrize(("state", "stored", "_health"), BLOCKED, ids=BLOCKED_IDS)
def test_plan_is_reported_before_health(state: InstanceState, stored: str, _health: Reason, kind: MessageKind) -> None:
    """A retry never fixes the plan, so it is the reason given even on an unhealthy instance."""
    assert block_reason(state, stored, Plan.LITE, kind) == Reason.NOT_SUPPORTED_BY_PLAN


@pytest.mark.parametrize("kind", sorted(LITE_OK))
@pytest.mark.parametrize(("state", "stored", "expected"), BLOCKED, ids=BLOCKED_IDS)
def test_lite_kinds_still_get_the_health_reason(
    state: InstanceState, stored: str, expected: Reason, kind: MessageKind
) -> None:
    assert block_reason(state, stored, Plan.LITE, kind) == expected


# --- webhooks in the verdict ------------------------------------------------------------------

NOW = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)
DEFAULT = WebhookPolicy()
REQUIRED = WebhookPolicy(require=True, evidence_window=3600)


@pytest.mark.parametrize("webhooks", ["UNCONFIGURED", "FAILED"])
def test_a_connected_instance_without_confirmed_webhooks_is_not_plainly_healthy(webhooks: str) -> None:
    verdict = health_verdict(IS.CONNECTED, Reason.PHONE_CONFIRMED, webhooks, None, NOW, DEFAULT)
    assert (verdict.reason, verdict.can_send, verdict.delivery_confirmable) == ("WEBHOOKS_UNCONFIGURED", True, False)
    assert verdict.evidence == WebhookEvidence(webhooks)
    required = health_verdict(IS.CONNECTED, Reason.PHONE_CONFIRMED, webhooks, None, NOW, REQUIRED)
    assert (required.reason, required.can_send) == ("WEBHOOKS_UNCONFIGURED", False)
    assert webhooks_block_sends(webhooks, None, NOW, REQUIRED)
    assert not webhooks_block_sends(webhooks, None, NOW, DEFAULT)
    blocked = block_reason(IS.CONNECTED, Reason.PHONE_CONFIRMED, Plan.PRO, MessageKind.TEXT, webhooks_blocked=True)
    assert blocked is Reason.WEBHOOKS_UNCONFIGURED


def test_configured_webhooks_or_recent_receipts_make_it_plainly_healthy() -> None:
    configured = health_verdict(IS.CONNECTED, Reason.PHONE_CONFIRMED, "CONFIGURED", None, NOW, REQUIRED)
    assert (configured.reason, configured.can_send, configured.evidence) == ("PHONE_CONFIRMED", True, "CONFIGURED")
    # Wired by hand (or pointing elsewhere by the last check), but receipts arrive: evidence wins.
    recent = NOW - timedelta(minutes=59)
    for stored in ("UNCONFIGURED", "FAILED"):
        wired = health_verdict(IS.CONNECTED, Reason.PHONE_CONFIRMED, stored, recent, NOW, REQUIRED)
        assert (wired.reason, wired.can_send, wired.evidence) == ("PHONE_CONFIRMED", True, "RECEIPTS")
        assert not webhooks_block_sends(stored, recent, NOW, REQUIRED)
    old = NOW - timedelta(minutes=61)
    assert health_verdict(IS.CONNECTED, Reason.PHONE_CONFIRMED, "UNCONFIGURED", old, NOW, REQUIRED).can_send is False


@pytest.mark.parametrize("state", [IS.DISCONNECTED, IS.SESSION_INCOMPLETE, IS.DEGRADED, IS.UNKNOWN])
def test_other_states_keep_their_own_reason(state: IS) -> None:
    verdict = health_verdict(state, "INSTANCE_DISCONNECTED", "UNCONFIGURED", None, NOW, REQUIRED)
    assert (verdict.reason, verdict.can_send) == ("INSTANCE_DISCONNECTED", False)
