"""The send policy of an instance: pacing, new-recipient budgets, warm-up and quiet hours. Pure, O(1).

The rule decides from a handful of counters the store keeps per instance (`PolicyCounters`): the
earliest time the next send may go, and fixed-window counts for the current minute, hour and day.
No history is read per send. `decide` says whether a send may go now and, if not, why and for how
long; `consume` returns the counters after a send that went. See docs/send-policy.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from enum import Enum
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from statemachine.domain import Reason

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class SendPolicy:
    """Limits of one instance. Zero means "no limit" for every field (the policy of a number that
    never had one set: today's traffic passes unchanged)."""

    min_interval_seconds: float = 0.0  # floor between two sends of the instance
    jitter_seconds: float = 0.0  # a random extra in [0, jitter) added to the floor after each send
    max_per_minute: int = 0  # sends of any kind per clock minute
    new_recipients_per_hour: int = 0  # recipients never messaged by this number and never heard from
    new_recipients_per_day: int = 0  # the daily target (the warm-up ramp climbs to it)
    warmup_start_per_day: int = 0  # daily new-recipient budget on the first day of the ramp
    warmup_days: int = 0  # days to climb from warmup_start_per_day to new_recipients_per_day
    quiet_start: time | None = None  # local time (time_zone) the quiet hours start; None: none
    quiet_end: time | None = None
    time_zone: str = "UTC"
    # Messages held for the instance's health wait for the operator's ReleaseHeld after a recovery
    # (statemachine/hold.py); not a limit: it does not make the policy active.
    release_requires_confirmation: bool = False

    @property
    def active(self) -> bool:
        return replace(self, release_requires_confirmation=False) != SendPolicy(time_zone=self.time_zone)


@dataclass(frozen=True, slots=True)
class PolicyCounters:
    """What the store keeps per instance (one row), updated by `consume` on every send that goes."""

    next_send_at: datetime | None = None
    minute_start: datetime | None = None
    minute_count: int = 0
    hour_start: datetime | None = None
    hour_new: int = 0
    day_start: datetime | None = None
    day_new: int = 0


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    reason: Reason | None  # None: the send may go now
    retry_after: float = 0.0  # seconds until it could (0 when it may go)
    limit: int = 0  # the limit that refused it (a count; 0 for time limits)

    @property
    def allowed(self) -> bool:
        return self.reason is None


ALLOW = PolicyVerdict(None)


def validate_policy(policy: SendPolicy) -> list[tuple[str, str]]:
    """(field, problem) for every value the rule cannot use."""
    problems: list[tuple[str, str]] = []
    for name in ("min_interval_seconds", "jitter_seconds"):
        value = getattr(policy, name)
        if not 0 <= value <= 3600:
            problems.append((name, "must be between 0 and 3600 seconds"))
    for name in (
        "max_per_minute",
        "new_recipients_per_hour",
        "new_recipients_per_day",
        "warmup_start_per_day",
        "warmup_days",
    ):
        value = getattr(policy, name)
        if not 0 <= value <= 1_000_000:
            problems.append((name, "must be between 0 and 1000000"))
    if policy.warmup_days and not policy.new_recipients_per_day:
        problems.append(("warmup_days", "a warm-up needs new_recipients_per_day (its target)"))
    if policy.warmup_days and policy.warmup_start_per_day > policy.new_recipients_per_day:
        problems.append(("warmup_start_per_day", "must not exceed new_recipients_per_day"))
    if (policy.quiet_start is None) != (policy.quiet_end is None):
        problems.append(("quiet_hours", "give both start and end, or neither"))
    if policy.quiet_start is not None and policy.quiet_start == policy.quiet_end:
        problems.append(("quiet_hours", "start and end must differ"))
    try:
        ZoneInfo(policy.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(("time_zone", "not an IANA time zone (e.g. America/Sao_Paulo)"))
    return problems


def daily_new_budget(policy: SendPolicy, now: datetime, warmup_anchor: datetime | None) -> int:
    """The day's new-recipient budget: the target, or the warm-up ramp's value on this day
    (linear from warmup_start_per_day on day 0 to the target on day warmup_days)."""
    target = policy.new_recipients_per_day
    if not policy.warmup_days or warmup_anchor is None:
        return target
    day = max(0, (now - warmup_anchor) // DAY)
    if day >= policy.warmup_days:
        return target
    start = policy.warmup_start_per_day
    return start + (target - start) * day // policy.warmup_days


def _window(start: datetime | None, now: datetime, size: timedelta) -> datetime:
    """The start of the fixed window holding `now` (aligned on the epoch, so every replica agrees)."""
    return window_start(now, size)


def window_start(now: datetime, size: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    return epoch + ((now - epoch) // size) * size


def lease_size(limit: int) -> int:
    """How many sends of a per-minute cap one replica reserves at a time (a slice it then spends in
    memory): an eighth of the cap, 1 to 256. Reservations are counted in the shared row, so replicas
    never exceed the cap together; a slice a replica does not spend is lost until the minute ends
    (at most replicas x slice - 1 sends under the cap in a minute of uneven traffic)."""
    return max(1, min(limit // 8, 256))


def paces(policy: SendPolicy) -> bool:
    """Whether the policy spaces every send (an interval or a jitter): decided per send across replicas."""
    return policy.min_interval_seconds > 0 or policy.jitter_seconds > 0


def _count(start: datetime | None, count: int, window_start: datetime) -> int:
    return count if start == window_start else 0


def quiet_wait(policy: SendPolicy, now: datetime) -> float:
    """Seconds until the quiet hours end (0 outside them)."""
    if policy.quiet_start is None or policy.quiet_end is None:
        return 0.0
    local = now.astimezone(ZoneInfo(policy.time_zone))
    at = local.time().replace(tzinfo=None)
    start, end = policy.quiet_start, policy.quiet_end
    inside = start <= at < end if start < end else (at >= start or at < end)
    if not inside:
        return 0.0
    ends = datetime.combine(local.date(), end, tzinfo=local.tzinfo)
    if ends <= local:
        ends += DAY
    return max(1.0, (ends - local).total_seconds())


def decide(
    policy: SendPolicy,
    counters: PolicyCounters,
    now: datetime,
    *,
    new_recipient: bool,
    warmup_anchor: datetime | None = None,
) -> PolicyVerdict:
    """May this send go now? `new_recipient`: never messaged by this number and no inbound from it
    in the last 24 h (a reply in an open conversation is not new)."""
    if not policy.active:
        return ALLOW
    quiet = quiet_wait(policy, now)
    if quiet:
        return PolicyVerdict(Reason.QUIET_HOURS, quiet)
    if counters.next_send_at is not None and now < counters.next_send_at:
        return PolicyVerdict(Reason.SEND_INTERVAL, (counters.next_send_at - now).total_seconds())
    if policy.max_per_minute:
        minute = _window(counters.minute_start, now, MINUTE)
        if _count(counters.minute_start, counters.minute_count, minute) >= policy.max_per_minute:
            return PolicyVerdict(
                Reason.SEND_RATE_PER_MINUTE, (minute + MINUTE - now).total_seconds(), policy.max_per_minute
            )
    if new_recipient:
        if policy.new_recipients_per_hour:
            hour = _window(counters.hour_start, now, HOUR)
            if _count(counters.hour_start, counters.hour_new, hour) >= policy.new_recipients_per_hour:
                return PolicyVerdict(
                    Reason.NEW_RECIPIENTS_HOURLY, (hour + HOUR - now).total_seconds(), policy.new_recipients_per_hour
                )
        budget = daily_new_budget(policy, now, warmup_anchor)
        if policy.new_recipients_per_day:
            day = _window(counters.day_start, now, DAY)
            if _count(counters.day_start, counters.day_new, day) >= budget:
                return PolicyVerdict(Reason.NEW_RECIPIENTS_DAILY, (day + DAY - now).total_seconds(), budget)
    return ALLOW


def new_recipient_refusal(
    policy: SendPolicy, counters: PolicyCounters, now: datetime, warmup_anchor: datetime | None
) -> PolicyVerdict:
    """Why the store refused to count a new recipient: the hour's budget, else the day's (also when
    another replica filled it between the store's answer and these counters)."""
    budgets = replace(
        policy, min_interval_seconds=0.0, jitter_seconds=0.0, max_per_minute=0, quiet_start=None, quiet_end=None
    )
    verdict = decide(
        budgets, replace(counters, next_send_at=None), now, new_recipient=True, warmup_anchor=warmup_anchor
    )
    if verdict.allowed:
        day = window_start(now, DAY)
        return PolicyVerdict(
            Reason.NEW_RECIPIENTS_DAILY, (day + DAY - now).total_seconds(), daily_new_budget(policy, now, warmup_anchor)
        )
    return verdict


@dataclass(frozen=True, slots=True)
class Budgets:
    """What is used and left of each budget at `now` (a limit of 0: none; left is 0 then too)."""

    active: bool = False
    sends_this_minute: int = 0
    max_per_minute: int = 0
    new_this_hour: int = 0
    new_per_hour: int = 0
    new_today: int = 0
    today_budget: int = 0
    warmup_day: int = 0
    warmup_days: int = 0

    @property
    def sends_left(self) -> int:
        return max(0, self.max_per_minute - self.sends_this_minute) if self.max_per_minute else 0

    @property
    def new_left_this_hour(self) -> int:
        return max(0, self.new_per_hour - self.new_this_hour) if self.new_per_hour else 0

    @property
    def new_left_today(self) -> int:
        return max(0, self.today_budget - self.new_today) if self.today_budget else 0


def budgets(policy: SendPolicy, counters: PolicyCounters, now: datetime, warmup_anchor: datetime | None) -> Budgets:
    """The counters read against the policy at `now` (a count from a past window is 0)."""
    if not policy.active:
        return Budgets()
    day = max(0, (now - warmup_anchor) // DAY) if warmup_anchor is not None and policy.warmup_days else 0
    return Budgets(
        active=True,
        sends_this_minute=_count(counters.minute_start, counters.minute_count, window_start(now, MINUTE)),
        max_per_minute=policy.max_per_minute,
        new_this_hour=_count(counters.hour_start, counters.hour_new, window_start(now, HOUR)),
        new_per_hour=policy.new_recipients_per_hour,
        new_today=_count(counters.day_start, counters.day_new, window_start(now, DAY)),
        today_budget=daily_new_budget(policy, now, warmup_anchor) if policy.new_recipients_per_day else 0,
        warmup_day=min(day, policy.warmup_days),
        warmup_days=policy.warmup_days,
    )


def consume(
    policy: SendPolicy, counters: PolicyCounters, now: datetime, *, new_recipient: bool, jitter_fraction: float
) -> PolicyCounters:
    """The counters after a send that went. `jitter_fraction` in [0, 1) (the caller's randomness:
    the rule stays deterministic)."""
    minute = _window(counters.minute_start, now, MINUTE)
    hour = _window(counters.hour_start, now, HOUR)
    day = _window(counters.day_start, now, DAY)
    gap = policy.min_interval_seconds + policy.jitter_seconds * jitter_fraction
    return replace(
        counters,
        next_send_at=now + timedelta(seconds=gap) if gap > 0 else None,
        minute_start=minute,
        minute_count=_count(counters.minute_start, counters.minute_count, minute) + 1,
        hour_start=hour,
        hour_new=_count(counters.hour_start, counters.hour_new, hour) + int(new_recipient),
        day_start=day,
        day_new=_count(counters.day_start, counters.day_new, day) + int(new_recipient),
    )


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """An instance's stored policy, its warm-up anchor and counters (what GetSendPolicy shows)."""

    instance_id: str
    policy: SendPolicy
    warmup_anchor: datetime | None
    counters: PolicyCounters
    updated_at: datetime
    updated_by: str
    warmup_phone: str | None = None  # the phone identity the ramp was anchored on
    optout_list: str | None = None  # the shared suppression list named (None: its own)


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One audited change of an instance's policy (the store's send_policy_audit)."""

    instance_id: str
    at: datetime
    by: str
    change: str  # SET, NEW_NUMBER, WARMUP_RESTART, OPTOUT_LIST
    before: dict[str, object] | None
    after: dict[str, object]


class NewRecipient(Enum):
    """The store's answer to "count this recipient as new": it was known already, it is counted now
    (and known from now on), or the hour's or the day's budget is spent."""

    KNOWN = "KNOWN"
    COUNTED = "COUNTED"
    REFUSED = "REFUSED"


class SendPolicyStore(Protocol):
    """The port the send policy's use cases store through (adapters/persistence/send_policies.py)."""

    async def policies(self) -> dict[str, PolicyRecord]:
        """Every stored policy (a replica's periodic refresh; the send path reads its copy)."""
        ...

    async def get_policy(self, instance_id: str) -> PolicyRecord | None: ...

    async def note_inbound(self, instance_id: str, sender: str, at: datetime) -> None:
        """A message from `sender` arrived: it is not a new recipient for this instance."""
        ...

    async def known(self, instance_id: str, recipient: str) -> bool:
        """Whether the number has messaged or heard from this recipient (a primary-key read)."""
        ...

    async def had_session(self, instance_id: str) -> bool:
        """Whether the instance was ever seen with a WhatsApp session (then a pairing is not its first)."""
        ...

    async def message_id_by_key(self, instance_id: str, idempotency_key: str) -> str | None:
        """The id of the message stored under this idempotency key, if any (a replay is answered first)."""
        ...

    async def set_policy(
        self,
        instance_id: str,
        policy: SendPolicy,
        *,
        warmup_anchor: datetime | None,
        by: str,
        now: datetime,
        change: str = "SET",
        warmup_phone: str | None = None,
        optout_list: str | None = None,
    ) -> PolicyRecord:
        """Stores the policy and its audit row (before/after) in one transaction."""
        ...

    async def anchor_warmup(
        self,
        instance_id: str,
        *,
        phone: str | None,
        restart: bool,
        policy_if_inactive: SendPolicy | None,
        change: str,
        now: datetime,
        by: str = "connection",
    ) -> PolicyRecord:
        """One transaction: the ramp's phone identity (None: kept, or "" = awaiting the first phone;
        and, `restart`, its anchor now); the stored policy kept when active, else
        `policy_if_inactive` when given. Audited."""
        ...

    async def history(self, instance_id: str, *, limit: int, before_id: int) -> list[tuple[int, PolicyChange]]:
        """The audited changes, newest first."""
        ...

    async def reserve_sends(self, instance_id: str, minute: datetime, want: int, limit: int) -> bool:
        """One statement: count `want` sends in this minute if the cap allows them all."""
        ...

    async def release_sends(self, instance_id: str, minute: datetime, count: int) -> None:
        """Gives back reserved sends this replica did not spend (the minute still running)."""
        ...

    async def reserve_interval(self, instance_id: str, now: datetime, next_at: datetime) -> datetime | None:
        """One statement: when the floor has passed, move it to `next_at` (None); else the floor."""
        ...

    async def count_new(
        self, instance_id: str, recipient: str, now: datetime, *, per_hour: int, per_day: int
    ) -> NewRecipient:
        """One transaction: learn the recipient and count it against the hour's and the day's
        budgets (0: none), or answer KNOWN / REFUSED and change nothing."""
        ...


def policy_to_dict(policy: SendPolicy) -> dict[str, object]:
    return {
        "min_interval_seconds": policy.min_interval_seconds,
        "jitter_seconds": policy.jitter_seconds,
        "max_per_minute": policy.max_per_minute,
        "new_recipients_per_hour": policy.new_recipients_per_hour,
        "new_recipients_per_day": policy.new_recipients_per_day,
        "warmup_start_per_day": policy.warmup_start_per_day,
        "warmup_days": policy.warmup_days,
        "quiet_start": policy.quiet_start.strftime("%H:%M") if policy.quiet_start else "",
        "quiet_end": policy.quiet_end.strftime("%H:%M") if policy.quiet_end else "",
        "time_zone": policy.time_zone,
        "release_requires_confirmation": policy.release_requires_confirmation,
    }


def policy_from_dict(data: dict[str, object]) -> SendPolicy:
    def clock(value: object) -> time | None:
        return time.fromisoformat(str(value)) if value else None

    return SendPolicy(
        min_interval_seconds=float(str(data.get("min_interval_seconds", 0))),
        jitter_seconds=float(str(data.get("jitter_seconds", 0))),
        max_per_minute=int(str(data.get("max_per_minute", 0))),
        new_recipients_per_hour=int(str(data.get("new_recipients_per_hour", 0))),
        new_recipients_per_day=int(str(data.get("new_recipients_per_day", 0))),
        warmup_start_per_day=int(str(data.get("warmup_start_per_day", 0))),
        warmup_days=int(str(data.get("warmup_days", 0))),
        quiet_start=clock(data.get("quiet_start")),
        quiet_end=clock(data.get("quiet_end")),
        time_zone=str(data.get("time_zone") or "UTC"),
        release_requires_confirmation=bool(data.get("release_requires_confirmation", False)),
    )
