"""Stall detection learned from an instance's own delivery history: a pure, replayable rule.

The question asked after every tick is "is this session still delivering?". Each send that is
still unconfirmed is evidence against it, weighed by how unlikely that silence is for *this*
instance and *this* recipient when the session is healthy:

    p0 = P(no receipt by this age | healthy) = q + (1 - q) * S(age)

where S is the instance's own receipt-latency survival curve (how many of its recent receipts
took longer than this) and q the share of its sends that never confirm, learned separately for
recipients who confirmed minutes ago ("warm": silence is strong evidence), earlier ("known")
and never ("new": weak) -- per hour of the day of the send (nights differ from days) and never
below the class's share over its last few outcomes (a group of recipients gone quiet at once).
Under a stalled session nothing confirms, so one silent recipient multiplies the likelihood ratio
"stalled : delivering" by 1/p0. A receipt has probability 0 under a stall, so it
resets the evidence to zero: this is a CUSUM (Page, 1954) of those log-ratios. Only the oldest
open send per recipient counts, so one recipient whose phone is off cannot stall an instance.

Server acks are a second, recipient-independent feed: W-API's `sent` status (or a webhookDelivery
with fromApi) says a message left the phone, offline recipient or not. Per instance the model learns
the share of sends never acked (near 1 where the webhooks send no acks: then acks weigh nothing and
the test is the receipt-only one) and the ack latency curve; each send still unacked after the
latest ack or receipt adds -log(m + (1 - m) * S_ack(age)) nats, m the never-ack share. A session
that cannot get its messages out is then called within a handful of sends, near rate x ack latency.
Receipts missing while acks keep coming is what a group of recipients away at once looks like, so
on an instance whose recent share cannot follow such a group in time (low rates) the receipt
evidence of an acked send is weighed at half.

The log-ratio of each recipient is a martingale under "healthy" (E[1{silent}/p0] = 1), so by
Ville's inequality one run of evidence crosses log(1/a) with probability at most a; with n runs
per day (one per receipt, the CUSUM's reset), a threshold of log(n / alpha) bounds false blocks
per instance-day by alpha. n comes from the instance's own receipt rate. The bound holds as far as
recipients' silences are independent given the model; correlated silences (an offline burst at a
low rate) break it, which the detection benchmark measures.

Everything here is plain data and arithmetic: no clock is read (callers pass `now`), no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from statemachine.detection_config import (
    CLASS_NAMES,
    KNOWN,
    NEW,
    SECONDS_PER_DAY,
    WARM,
    DetectionConfig,
    OpenSend,
    _Share,
)


@dataclass(slots=True)
class DeliveryModel:
    """One instance's recent delivery behaviour, in bounded form (a few KB)."""

    config: DetectionConfig = field(default_factory=DetectionConfig)
    latencies: deque[float] = field(default_factory=deque)
    shares: tuple[_Share, _Share, _Share] = field(default_factory=lambda: (_Share(), _Share(), _Share()))
    recent: tuple[_Share, _Share, _Share] = field(default_factory=lambda: (_Share(), _Share(), _Share()))
    # klass * 24 + hour of the day of the send (UTC).
    hourly: list[_Share] = field(default_factory=lambda: [_Share() for _ in range(3 * 24)])
    # recipient -> time of their latest receipt, oldest first (LRU-bounded).
    recipients: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # message id -> open send (no receipt yet), in send order.
    open: OrderedDict[str, OpenSend] = field(default_factory=OrderedDict)
    last_receipt_at: float | None = None
    sends_rate: float = 0.0  # sends per second, exponentially weighted
    rate_at: float | None = None
    receipts_rate: float = 0.0  # receipts per second, exponentially weighted
    receipts_rate_at: float | None = None
    _sorted: list[float] = field(default_factory=list)
    # Server acks: their latencies (SENT -> ack), the never-ack share, the sends not acked yet.
    ack_latencies: deque[float] = field(default_factory=deque)
    ack_share: _Share = field(default_factory=_Share)
    ack_recent: _Share = field(default_factory=_Share)
    unacked: OrderedDict[str, float] = field(default_factory=OrderedDict)  # message id -> sent at
    last_ack_at: float | None = None
    acks_rate: float = 0.0  # acks per second, exponentially weighted
    acks_rate_at: float | None = None
    _ack_sorted: list[float] = field(default_factory=list)

    # --- learning ----------------------------------------------------------------------------

    def on_sent(self, message_id: str, recipient: str, at: float) -> None:
        """A send the provider accepted (SENT) at `at`."""
        if message_id in self.open:
            return
        cfg = self.config
        last = self.recipients.get(recipient)
        klass = NEW if last is None else WARM if at - last <= cfg.warm_for else KNOWN
        self.open[message_id] = OpenSend(message_id, recipient, at, klass)
        while len(self.open) > cfg.max_open:
            self.open.popitem(last=False)
        self.unacked[message_id] = at
        while len(self.unacked) > cfg.max_open:
            self.unacked.popitem(last=False)
        if self.rate_at is None:
            self.sends_rate, self.rate_at = 1.0 / cfg.rate_window, at
        else:
            elapsed = max(0.0, at - self.rate_at)
            self.sends_rate = self.sends_rate * math.exp(-elapsed / cfg.rate_window) + 1.0 / cfg.rate_window
            self.rate_at = max(self.rate_at, at)

    def on_receipt(self, message_id: str, recipient: str, sent_at: float, at: float) -> None:
        """A DELIVERED/READ for a message sent at `sent_at`, received at `at`.

        A receipt proves the session delivered at `at`: sends older than the never-confirm horizon
        before it, still silent, are learned as "never confirms" for their recipient class.
        """
        cfg = self.config
        send = self.open.pop(message_id, None)
        horizon = self.never_after()
        latency = max(0.0, at - sent_at)
        if send is not None:
            self._learn(send, latency > horizon)
            if latency <= horizon:
                self._add_latency(latency)
        if self.receipts_rate_at is None:
            self.receipts_rate, self.receipts_rate_at = 1.0 / cfg.rate_window, at
        else:
            elapsed = max(0.0, at - self.receipts_rate_at)
            self.receipts_rate = self.receipts_rate * math.exp(-elapsed / cfg.rate_window) + 1.0 / cfg.rate_window
            self.receipts_rate_at = max(self.receipts_rate_at, at)
        self.recipients[recipient] = max(at, self.recipients.pop(recipient, at))
        while len(self.recipients) > cfg.max_recipients:
            self.recipients.popitem(last=False)
        if self.last_receipt_at is None or at > self.last_receipt_at:
            self.last_receipt_at = at
        # Open sends are kept in send order: the expired ones are a prefix (no scan of the rest).
        while self.open:
            stale = next(iter(self.open.values()))
            if stale.sent_at + horizon >= at:
                break
            del self.open[stale.message_id]
            self._learn(stale, True)
        self._expire_unacked(at)

    def on_ack(self, message_id: str, sent_at: float, at: float) -> None:
        """The provider's server ack of a message sent at `sent_at`, received at `at`: a "sent"
        status or a webhookDelivery with fromApi (the message left the phone). It comes whether or
        not the recipient is online, and proves the session got a message out at `at`."""
        cfg = self.config
        horizon = self.ack_never_after()
        if self.unacked.pop(message_id, None) is not None:
            latency = max(0.0, at - sent_at)
            self._learn_ack(latency > horizon)
            if latency <= horizon:
                self._add_ack_latency(latency)
        send = self.open.get(message_id)
        if send is not None:
            send.acked = True
        if self.acks_rate_at is None:
            self.acks_rate, self.acks_rate_at = 1.0 / cfg.rate_window, at
        else:
            elapsed = max(0.0, at - self.acks_rate_at)
            self.acks_rate = self.acks_rate * math.exp(-elapsed / cfg.rate_window) + 1.0 / cfg.rate_window
            self.acks_rate_at = max(self.acks_rate_at, at)
        if self.last_ack_at is None or at > self.last_ack_at:
            self.last_ack_at = at
        self._expire_unacked(at)

    def _expire_unacked(self, at: float) -> None:
        """The session proved alive at `at` (an ack or a receipt): sends older than the ack horizon
        still without an ack are learned as "never acked" (an instance without acks learns ~0)."""
        horizon = self.ack_never_after()
        while self.unacked:
            message_id, sent_at = next(iter(self.unacked.items()))
            if sent_at + horizon >= at:
                break
            del self.unacked[message_id]
            self._learn_ack(True)

    def _learn_ack(self, miss: bool) -> None:
        self.ack_share.add(miss, self.config.ack_memory)
        self.ack_recent.add(miss, self.config.ack_recent_memory)

    def on_closed(self, message_id: str) -> None:
        """The message left SENT without a receipt (failed): it is no evidence either way."""
        self.open.pop(message_id, None)
        self.unacked.pop(message_id, None)

    def _learn(self, send: OpenSend, miss: bool) -> None:
        cfg = self.config
        self.shares[send.klass].add(miss, cfg.class_memory)
        self.recent[send.klass].add(miss, cfg.recent_memory)
        self.hourly[send.klass * 24 + _hour(send.sent_at)].add(miss, cfg.hourly_memory)

    def _add_latency(self, latency: float) -> None:
        self.latencies.append(latency)
        bisect.insort(self._sorted, latency)
        if len(self.latencies) > self.config.latency_samples:
            old = self.latencies.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def _add_ack_latency(self, latency: float) -> None:
        self.ack_latencies.append(latency)
        bisect.insort(self._ack_sorted, latency)
        if len(self.ack_latencies) > self.config.ack_samples:
            old = self.ack_latencies.popleft()
            del self._ack_sorted[bisect.bisect_left(self._ack_sorted, old)]

    # --- what the history says ---------------------------------------------------------------

    @property
    def warmed_up(self) -> bool:
        return len(self._sorted) >= self.config.min_latency_samples

    def latency_quantile(self, q: float) -> float | None:
        if not self._sorted:
            return None
        index = min(len(self._sorted) - 1, max(0, math.ceil(q * len(self._sorted)) - 1))
        return self._sorted[index]

    def never_after(self) -> float:
        cfg = self.config
        p99 = self.latency_quantile(0.99) if self.warmed_up else None
        return max(cfg.never_after_min, cfg.never_after_factor * (p99 if p99 is not None else cfg.cold_wait))

    def survival(self, age: float) -> float:
        """P(a receipt that comes takes longer than `age`), smoothed so it is never 0."""
        if not self.warmed_up:
            return 1.0 if age < self.config.cold_wait else 1.0 / (self.config.min_latency_samples + 1)
        n = len(self._sorted)
        longer = n - bisect.bisect_right(self._sorted, age)
        return (longer + 1.0) / (n + 1.0)

    @property
    def acks_warmed_up(self) -> bool:
        return len(self._ack_sorted) >= self.config.min_ack_samples

    def ack_quantile(self, q: float) -> float | None:
        if not self._ack_sorted:
            return None
        index = min(len(self._ack_sorted) - 1, max(0, math.ceil(q * len(self._ack_sorted)) - 1))
        return self._ack_sorted[index]

    def ack_never_after(self) -> float:
        cfg = self.config
        p99 = self.ack_quantile(0.99) if self.acks_warmed_up else None
        return max(cfg.ack_never_after_min, cfg.ack_never_after_factor * (p99 or 0.0))

    def ack_survival(self, age: float) -> float:
        """P(an ack that comes takes longer than `age`); 1 (no evidence) until acks are learned."""
        if not self.acks_warmed_up:
            return 1.0
        n = len(self._ack_sorted)
        longer = n - bisect.bisect_right(self._ack_sorted, age)
        return (longer + 1.0) / (n + 1.0)

    def never_acked_share(self) -> float:
        """P(a send is never acked | healthy): ~1 on an instance whose webhooks send no acks; never
        below the share over the last few outcomes (acks that stopped coming)."""
        cfg = self.config
        q = self.ack_share.rate(cfg.ack_prior, cfg.ack_miss_floor)
        recent = self.ack_recent.rate((cfg.recent_weight * q, cfg.recent_weight * (1.0 - q)), cfg.ack_miss_floor)
        return max(q, recent)

    def acks_per_day(self, now: float) -> float:
        if self.acks_rate_at is None:
            return 0.0
        return self.acks_rate * math.exp(-max(0.0, now - self.acks_rate_at) / self.config.rate_window) * SECONDS_PER_DAY

    def never_share(self, klass: int, sent_at: float | None = None) -> float:
        """P(a send of this class never confirms | healthy). Given `sent_at`, the class's share at
        that hour of the day (its own counts, leaning on the class's long-run share while they are
        few: nights differ from days); never below the class's share over its last few outcomes
        (a group of recipients gone quiet at once) nor below the floor."""
        cfg = self.config
        q = self.shares[klass].rate(cfg.priors[klass], cfg.miss_floor)
        if sent_at is not None:
            hour = self.hourly[klass * 24 + _hour(sent_at)]
            q = hour.rate((cfg.hourly_weight * q, cfg.hourly_weight * (1.0 - q)), cfg.miss_floor)
        recent = self.recent[klass].rate((cfg.recent_weight * q, cfg.recent_weight * (1.0 - q)), cfg.miss_floor)
        return max(q, recent)

    def acked_silence_weight(self) -> float:
        """How much the receipt silence of an acked send weighs (see DetectionConfig), from the send
        rate as of the latest send: constant between events, so a verdict can only turn "stalled"
        as silences age."""
        cfg = self.config
        rate = self.sends_rate
        lag = (cfg.recent_memory / rate if rate > 0.0 else math.inf) + self.never_after()
        full_below = cfg.burst_lag / 4.0
        if lag <= full_below:
            return 1.0
        if lag >= cfg.burst_lag:
            return cfg.acked_silence_weight
        return 1.0 - (1.0 - cfg.acked_silence_weight) * (lag - full_below) / (cfg.burst_lag - full_below)

    def sends_per_day(self, now: float) -> float:
        if self.rate_at is None:
            return 0.0
        return self.sends_rate * math.exp(-max(0.0, now - self.rate_at) / self.config.rate_window) * SECONDS_PER_DAY

    def receipts_per_day(self, now: float) -> float:
        """Receipts per day: each one starts a new run of evidence (the CUSUM's reset)."""
        if self.receipts_rate_at is None:
            return 0.0
        decay = math.exp(-max(0.0, now - self.receipts_rate_at) / self.config.rate_window)
        return self.receipts_rate * decay * SECONDS_PER_DAY


def _hour(at: float) -> int:
    return int(at % SECONDS_PER_DAY // 3600.0)


@dataclass(frozen=True, slots=True)
class Assessment:
    """The verdict of one tick, with what it was based on (for logs, traces and the benchmark)."""

    evidence: float  # nats against "still delivering" (receipts and acks)
    threshold: float
    silent_recipients: int
    suspicious: bool
    stalled: bool
    cold: bool
    ack_evidence: float = 0.0  # the part of `evidence` from sends without a server ack
    unacked: int = 0  # sends after the latest ack or receipt still without an ack


def assess(model: DeliveryModel, now: float, *, since: float | None = None) -> Assessment:
    """Weighs the silent sends made after the latest receipt (and after `since`, when the instance
    was last cleared) and the unacked sends made after the latest ack or receipt, and says whether
    the session should be considered stalled."""
    cfg = model.config
    start = max(x for x in (model.last_receipt_at, since, -math.inf) if x is not None)
    oldest: dict[str, OpenSend] = {}
    for send in reversed(model.open.values()):  # newest first: stop at the reset
        if send.sent_at <= start:
            break
        if send.sent_at > now:
            continue
        seen = oldest.get(send.recipient)
        if seen is None or send.sent_at < seen.sent_at:
            oldest[send.recipient] = send
    evidence = 0.0
    acked_weight = model.acked_silence_weight() if oldest else 1.0
    for send in oldest.values():
        q = model.never_share(send.klass, send.sent_at)
        p0 = q + (1.0 - q) * model.survival(now - send.sent_at)
        weight = acked_weight if send.acked else 1.0
        evidence += -weight * math.log(min(1.0, p0))
    # Server acks do not depend on the recipient: every unacked send counts, not one per recipient.
    ack_evidence, unacked = 0.0, 0
    if model.acks_warmed_up:
        ack_start = max(start, model.last_ack_at if model.last_ack_at is not None else -math.inf)
        miss = model.never_acked_share()
        for sent_at in reversed(model.unacked.values()):
            if sent_at <= ack_start:
                break
            if sent_at > now:
                continue
            unacked += 1
            p0 = miss + (1.0 - miss) * model.ack_survival(now - sent_at)
            ack_evidence += -math.log(min(1.0, p0))
    evidence += ack_evidence
    # One run of evidence per receipt and per ack (each resets its own part).
    runs = max(cfg.min_sends_per_day, model.receipts_per_day(now) + model.acks_per_day(now))
    threshold = math.log(runs / cfg.false_alarm_per_day)
    cold = not model.warmed_up
    if cold:
        threshold += cfg.cold_margin
    return Assessment(
        evidence=evidence,
        threshold=threshold,
        silent_recipients=len(oldest),
        suspicious=evidence >= cfg.suspicion,
        stalled=evidence >= threshold,
        cold=cold,
        ack_evidence=ack_evidence,
        unacked=unacked,
    )


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    """When to ask the provider about an instance, besides the slow background round."""

    # While the instance is sending, its probed health is kept at most this old (seconds).
    active_max_age: float = 3.0
    # "Sending" means a send was accepted at most this long ago.
    active_for: float = 30.0
    # Never more often than this per instance, suspicion included.
    min_interval: float = 1.0


def probe_due(
    policy: ProbePolicy,
    now: float,
    *,
    last_probe_at: float | None,
    last_send_at: float | None,
    suspicious: bool,
    in_flight: bool,
) -> bool:
    """One probe in flight per instance, rate-limited; due when suspicious or when a sending
    instance's probed health is older than `active_max_age`."""
    if in_flight:
        return False
    if last_probe_at is not None and now - last_probe_at < policy.min_interval:
        return False
    if suspicious:
        return True
    sending = last_send_at is not None and now - last_send_at <= policy.active_for
    return sending and (last_probe_at is None or now - last_probe_at >= policy.active_max_age)


__all__ = [
    "CLASS_NAMES",
    "KNOWN",
    "NEW",
    "SECONDS_PER_DAY",
    "WARM",
    "Assessment",
    "DeliveryModel",
    "DetectionConfig",
    "OpenSend",
    "ProbePolicy",
    "assess",
    "probe_due",
]
