"""Send preflight: only a CONNECTED instance sends, and a LITE plan only sends what LITE supports."""

from __future__ import annotations

import pytest

from statemachine.domain import InstanceState, MessageKind, Plan, Reason
from statemachine.preflight import block_reason, plan_allows

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
