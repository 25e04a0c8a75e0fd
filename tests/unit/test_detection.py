"""The learned stall test, driven by a simulated clock: every shape of the detection benchmark,
the cold start, the reset by a receipt, and when a sending instance is probed."""

from __future__ import annotations

import math
import random

from statemachine.detection import (
    DeliveryModel,
    DetectionConfig,
    ProbePolicy,
    assess,
    probe_due,
)


class Clock:
    """A traffic generator on a simulated clock: sends to a pool, receipts after their latency and,
    with `acks`, the provider's server ack of every send (offline recipients included) after its
    own latency."""

    def __init__(
        self, *, pool: int, never: float, latency: float, seed: int = 1, acks: bool = False, ack_latency: float = 0.3
    ) -> None:
        self.rng = random.Random(seed)
        self.model = DeliveryModel(DetectionConfig())
        self.now = 0.0
        self.pool = [(f"55119{i:08d}", self.rng.random() >= never) for i in range(pool)]
        self.latency = latency
        self.pending: list[tuple[float, str, str, float]] = []
        self.next_id = 0
        self.delivering = True
        self.acks = acks
        self.acking = acks  # the session gets its messages off the phone
        self.ack_latency = ack_latency
        self.pending_acks: list[tuple[float, str, float]] = []

    def send(self, recipient: tuple[str, bool] | None = None) -> str:
        phone, confirms = recipient or self.rng.choice(self.pool)
        self.next_id += 1
        message_id = f"m{self.next_id}"
        self.model.on_sent(message_id, phone, self.now)
        if confirms and self.delivering:
            delay = self.rng.lognormvariate(math.log(self.latency), 0.5)
            self.pending.append((self.now + delay, message_id, phone, self.now))
        if self.acking:
            delay = self.rng.lognormvariate(math.log(self.ack_latency), 0.5)
            self.pending_acks.append((self.now + delay, message_id, self.now))
        return message_id

    def flush_acks(self) -> None:
        due = [p for p in self.pending_acks if p[0] <= self.now]
        self.pending_acks = [p for p in self.pending_acks if p[0] > self.now]
        for at, message_id, sent in sorted(due):
            self.model.on_ack(message_id, sent, at)

    def advance(self, seconds: float, *, rate: float = 0.0, tick: float = 1.0) -> int:
        """Moves the clock, sending at `rate` per second; returns how many ticks judged 'stalled'."""
        end, stalled = self.now + seconds, 0
        next_send = self.now + (self.rng.expovariate(rate) if rate else math.inf)
        while self.now < end:
            self.now = min(end, self.now + tick)
            while next_send <= self.now:
                self.send()
                next_send += self.rng.expovariate(rate)
            self.flush_acks()
            due = [p for p in self.pending if p[0] <= self.now]
            self.pending = [p for p in self.pending if p[0] > self.now]
            for at, message_id, phone, sent in sorted(due):
                self.model.on_receipt(message_id, phone, sent, at)
            stalled += assess(self.model, self.now).stalled
        return stalled

    def sends_until_stalled(self, rate: float, limit: float = 3600.0, *, still_acks: bool = False) -> tuple[int, float]:
        """Stops deliveries now (and acks, unless `still_acks`: the messages still reach WhatsApp's
        servers); returns (sends accepted, seconds) until the first stall verdict."""
        self.delivering = False
        self.pending.clear()
        self.acking = self.acks and still_acks
        if not self.acking:
            self.pending_acks.clear()
        start, sent = self.now, self.next_id
        next_send = self.now + self.rng.expovariate(rate)
        while self.now - start < limit:
            self.now += 1.0
            while next_send <= self.now:
                self.send()
                next_send += self.rng.expovariate(rate)
            self.flush_acks()
            if assess(self.model, self.now).stalled:
                return self.next_id - sent, self.now - start
        raise AssertionError("never judged stalled")


def warmed(*, pool: int = 50, never: float = 0.0, latency: float = 1.0, rate: float = 1.0, acks: bool = False) -> Clock:
    clock = Clock(pool=pool, never=never, latency=latency, acks=acks)
    assert clock.advance(max(600.0, 400 / rate), rate=rate) == 0
    assert clock.model.warmed_up
    return clock


def test_a_silent_stall_is_called_after_a_handful_of_sends_at_one_per_second() -> None:
    clock = warmed(pool=50, rate=1.0)
    sends, seconds = clock.sends_until_stalled(rate=1.0)
    assert sends <= 10
    assert seconds < 15


def test_a_silent_stall_at_one_send_a_minute_is_called_after_a_handful_of_sends() -> None:
    clock = warmed(pool=20, rate=1 / 60)
    sends, _seconds = clock.sends_until_stalled(rate=1 / 60, limit=6 * 3600)
    assert sends <= 10


def test_half_the_recipients_never_confirming_costs_more_sends_but_still_stalls() -> None:
    clock = warmed(pool=200, never=0.5, rate=1.0)
    sends, _ = clock.sends_until_stalled(rate=1.0)
    assert sends <= 25
    # Recipients who never confirmed are weak evidence, recent confirmers strong.
    assert clock.model.never_share(2) > 0.5 > clock.model.never_share(0)


def test_slow_receipts_are_learned_so_minutes_of_latency_are_not_a_stall() -> None:
    clock = warmed(pool=100, never=0.2, latency=60.0, rate=0.1)
    assert clock.advance(4 * 3600, rate=0.1) == 0
    sends, seconds = clock.sends_until_stalled(rate=0.1, limit=4 * 3600)
    assert seconds > 60  # waits past the instance's own latency, not a fixed window
    assert sends <= 40


def test_healthy_traffic_with_half_never_confirming_is_never_stalled() -> None:
    clock = warmed(pool=200, never=0.5, rate=1.0)
    assert clock.advance(6 * 3600, rate=1.0) == 0


def test_a_burst_of_offline_recipients_is_not_a_stall() -> None:
    clock = warmed(pool=100, never=0.0, rate=0.5)
    offline = set(clock.rng.sample(range(100), 30))
    clock.pool = [(phone, confirms and i not in offline) for i, (phone, confirms) in enumerate(clock.pool)]
    assert clock.advance(1800, rate=0.5) == 0


def test_one_silent_recipient_counts_once_however_many_messages_it_gets() -> None:
    clock = warmed(pool=20, rate=0.2)
    clock.delivering = False
    phone = clock.pool[0][0]
    for _ in range(50):
        clock.send((phone, True))
        clock.now += 10
    verdict = assess(clock.model, clock.now)
    assert verdict.silent_recipients == 1
    assert not verdict.stalled


def test_a_receipt_resets_the_evidence() -> None:
    clock = warmed(pool=50, rate=1.0)
    clock.delivering = False
    for _ in range(3):
        clock.now += 1
        clock.send()
    clock.now += 30
    before = assess(clock.model, clock.now)
    assert before.evidence > 0
    assert before.suspicious
    phone, _ = clock.pool[0]
    clock.model.on_receipt("late", phone, clock.now - 1, clock.now)
    after = assess(clock.model, clock.now + 1)
    assert after.evidence == 0
    assert after.silent_recipients == 0


def test_clearing_the_instance_starts_the_evidence_afresh() -> None:
    clock = warmed(pool=50, rate=1.0)
    sends, _ = clock.sends_until_stalled(rate=1.0)
    assert sends > 0
    assert not assess(clock.model, clock.now, since=clock.now).stalled


def test_a_cold_instance_needs_far_more_evidence() -> None:
    cold = DeliveryModel(DetectionConfig())
    for i in range(20):
        cold.on_sent(f"m{i}", f"5511900000{i:03d}", float(i))
    early = assess(cold, 30.0)
    assert early.cold
    assert early.evidence == 0  # silence counts only past the cold wait
    late = assess(cold, 30.0 + DetectionConfig().cold_wait)
    assert not late.stalled
    warm = warmed(pool=20, rate=1.0)
    warm.delivering = False
    for _ in range(20):
        warm.now += 1
        warm.send()
    warm.now += DetectionConfig().cold_wait
    assert assess(warm.model, warm.now).stalled  # the same silence, with history, is a stall


def test_memory_stays_bounded() -> None:
    model = DeliveryModel(DetectionConfig(max_open=100, max_recipients=50, latency_samples=30))
    for i in range(5000):
        model.on_sent(f"m{i}", f"r{i}", float(i))
        model.on_receipt(f"m{i}", f"r{i}", float(i), i + 0.5)
        model.on_sent(f"x{i}", f"s{i}", float(i))
    assert len(model.open) <= 100
    assert len(model.recipients) <= 50
    assert len(model.latencies) <= 30


def test_false_alarm_rate_sets_the_threshold() -> None:
    model = DeliveryModel(DetectionConfig(false_alarm_per_day=1e-3))
    strict = DeliveryModel(DetectionConfig(false_alarm_per_day=1e-6))
    assert assess(strict, 0.0).threshold - assess(model, 0.0).threshold == math.log(1000)


def test_a_sending_instance_is_probed_every_few_seconds_one_probe_at_a_time() -> None:
    policy = ProbePolicy(active_max_age=3.0, active_for=30.0, min_interval=1.0)
    due = probe_due
    assert due(policy, 100.0, last_probe_at=96.0, last_send_at=99.0, suspicious=False, in_flight=False)
    assert not due(policy, 100.0, last_probe_at=98.0, last_send_at=99.0, suspicious=False, in_flight=False)
    assert not due(policy, 100.0, last_probe_at=90.0, last_send_at=99.0, suspicious=False, in_flight=True)
    # Idle instances are left to the background round.
    assert not due(policy, 100.0, last_probe_at=50.0, last_send_at=20.0, suspicious=False, in_flight=False)
    # Suspicion probes at once, but never more than once per min_interval.
    assert due(policy, 100.0, last_probe_at=98.5, last_send_at=20.0, suspicious=True, in_flight=False)
    assert not due(policy, 100.0, last_probe_at=99.5, last_send_at=20.0, suspicious=True, in_flight=False)


DAY = 86_400.0


def night(t: float) -> bool:
    hour = (t % DAY) / 3600.0
    return hour >= 23.0 or hour < 7.0


class Sleepers(Clock):
    """Most recipients' phones are off at night: their receipts come the next morning."""

    def __init__(self, **kw: float) -> None:
        super().__init__(pool=50, never=0.0, latency=2.0, **kw)  # type: ignore[arg-type]
        self.sleeping = {phone for phone, _ in self.pool[:35]}

    def send(self, recipient: tuple[str, bool] | None = None) -> str:
        message_id = super().send(recipient)
        if self.pending and self.pending[-1][1] == message_id and night(self.now):
            _due, _, phone, sent = self.pending[-1]
            if phone in self.sleeping:
                morning = (self.now // DAY) * DAY + 7 * 3600.0
                morning += DAY if self.now % DAY >= 7 * 3600.0 else 0.0
                self.pending[-1] = (morning + self.rng.uniform(0, 1800), message_id, phone, sent)
        return message_id


def test_nights_are_learned_per_hour_so_sleeping_recipients_are_not_a_stall() -> None:
    clock = Sleepers()
    clock.now = 7 * 3600.0  # a first morning
    assert clock.advance(16 * 3600, rate=1 / 60, tick=10) == 0  # the first day
    clock.advance(3 * DAY, rate=1 / 60, tick=10)  # three nights of history (a first night may still block)
    # From then on healthy nights are quiet; the night's hours carry their own never-confirm share.
    assert clock.advance(2 * DAY, rate=1 / 60, tick=10) == 0
    at_night = 2 * 3600.0 + 3 * DAY
    assert clock.model.never_share(1, at_night) > 0.3 > clock.model.never_share(1, at_night + 12 * 3600)
    # ...and a daytime stall is still called after a handful of sends.
    clock.advance((DAY - clock.now % DAY) + 10 * 3600.0, rate=1 / 60, tick=10)  # 10:00
    assert not night(clock.now)
    sends, _ = clock.sends_until_stalled(rate=1 / 60, limit=6 * 3600)
    assert sends <= 10


def test_a_group_of_recipients_gone_quiet_raises_the_share_within_minutes() -> None:
    clock = warmed(pool=100, never=0.0, rate=0.5)
    before = clock.model.never_share(0)
    offline = set(clock.rng.sample(range(100), 30))
    clock.pool = [(phone, confirms and i not in offline) for i, (phone, confirms) in enumerate(clock.pool)]
    assert clock.advance(600, rate=0.5) == 0
    assert clock.model.never_share(0) > 3 * before  # the recent share: the silence weighs less at once
    long_run = clock.model.shares[0].rate(clock.model.config.priors[0], clock.model.config.miss_floor)
    assert clock.model.never_share(0) > 1.5 * long_run  # ahead of the long-run share


def test_the_threshold_counts_runs_of_evidence_per_day_one_per_receipt() -> None:
    all_confirm = warmed(pool=200, never=0.0, rate=1.0)
    half_never = warmed(pool=200, never=0.5, rate=1.0)
    cfg = DetectionConfig()
    for clock in (all_confirm, half_never):
        receipts = clock.model.receipts_per_day(clock.now)
        assert assess(clock.model, clock.now).threshold == math.log(max(cfg.min_sends_per_day, receipts) / 1e-4)
    # Half the recipients never confirming: half the runs, a lower threshold (about ln 2).
    gap = assess(all_confirm.model, all_confirm.now).threshold - assess(half_never.model, half_never.now).threshold
    assert 0.4 < gap < 1.0


def test_five_sends_a_second_is_stalled_within_seconds_near_the_latency_floor() -> None:
    clock = warmed(pool=1000, never=0.25, latency=0.6, rate=5.0)
    assert clock.advance(1800, rate=5.0) == 0
    sends, seconds = clock.sends_until_stalled(rate=5.0)
    # rate x receipt latency: ~13 sends leave before even an oracle could call it (bench floor).
    assert sends <= 25
    assert seconds <= 5


def test_bursts_of_twenty_are_not_a_stall_and_a_stall_is_called_within_a_burst_or_two() -> None:
    clock = warmed(pool=300, never=0.3, rate=1.0)

    def burst() -> None:
        for _ in range(20):
            clock.send()
            clock.advance(0.2, tick=0.2)

    for _ in range(60):  # healthy bursts, 20 s apart
        burst()
        assert clock.advance(16, tick=1.0) == 0
    clock.delivering = False
    clock.pending.clear()
    before, blocked = clock.next_id, False
    for _ in range(3):
        for _ in range(20):
            clock.send()
            clock.now += 0.2
            if assess(clock.model, clock.now).stalled:
                blocked = True
                break
        if blocked:
            break
        clock.now += 16
        blocked = assess(clock.model, clock.now).stalled
        if blocked:
            break
    assert blocked
    assert clock.next_id - before <= 40


# --- server acks ("sent" status / webhookDelivery: the message left the phone) -------------------


def test_on_an_instance_that_acks_a_silent_stall_is_called_after_fewer_sends() -> None:
    with_acks = warmed(pool=20, rate=1 / 60, acks=True)
    receipts_only = warmed(pool=20, rate=1 / 60)
    assert with_acks.model.acks_warmed_up
    assert with_acks.model.never_acked_share() < 0.05
    acked, _ = with_acks.sends_until_stalled(rate=1 / 60, limit=6 * 3600)
    unacked, _ = receipts_only.sends_until_stalled(rate=1 / 60, limit=6 * 3600)
    assert acked <= 3 < unacked  # an unacked send past the instance's ack latency is strong evidence
    assert assess(with_acks.model, with_acks.now).ack_evidence > 0


def test_five_sends_a_second_with_acks_is_stalled_near_the_ack_latency_floor() -> None:
    clock = warmed(pool=1000, never=0.25, latency=0.6, rate=5.0, acks=True)
    assert clock.advance(1800, rate=5.0) == 0
    sends, seconds = clock.sends_until_stalled(rate=5.0)
    # rate x ack latency (~0.3 s, p99 ~1 s) and the 1-second tick, not rate x receipt latency
    # (receipts only: 3 s on this clock, bench floor 13 sends).
    assert seconds <= 2
    assert sends <= 20
    verdict = assess(clock.model, clock.now)
    assert verdict.ack_evidence >= verdict.evidence / 2  # the unacked sends decided it


def test_recipients_away_while_acks_keep_coming_weigh_half() -> None:
    """The offline burst at one send a minute: six sends in a row to recipients who are away.
    Without acks that silence is a stall (the false blocks the long runs count); with every send
    acked it is weighed at half and is not."""
    for acks, stalled in ((False, True), (True, False)):
        clock = warmed(pool=20, rate=1 / 60, acks=acks)
        clock.delivering = False  # away: no receipts; the session still gets every send out
        clock.pending.clear()
        for _ in range(6):
            clock.send()
            clock.advance(60)
        verdict = assess(clock.model, clock.now)
        assert verdict.stalled is stalled, (acks, verdict)
        assert verdict.ack_evidence == 0


def test_a_stall_whose_acks_still_come_is_still_called_on_receipts() -> None:
    clock = warmed(pool=20, rate=1 / 60, acks=True)
    sends, _ = clock.sends_until_stalled(rate=1 / 60, limit=6 * 3600, still_acks=True)
    assert 6 < sends <= 20  # the price of weighing acked silence at half


def test_an_instance_without_acks_learns_so_and_decides_on_receipts_alone() -> None:
    clock = warmed(pool=50, rate=1.0)  # its webhooks send no acks: every send unacked
    assert clock.model.never_acked_share() > 0.9
    assert not clock.model.acks_warmed_up
    assert clock.advance(1800, rate=1.0) == 0
    sends, _ = clock.sends_until_stalled(rate=1.0)
    assert assess(clock.model, clock.now).ack_evidence == 0
    assert sends <= 10


def test_acks_that_stop_coming_stop_counting_within_minutes() -> None:
    """Acks turned off at the provider (webhooks reconfigured) while receipts still come: the recent
    never-ack share rises, so the unacked sends of a healthy session do not add up to a stall."""
    clock = warmed(pool=50, rate=0.5, acks=True)
    clock.acks = clock.acking = False
    assert clock.advance(600, rate=0.5) == 0
    assert clock.model.never_acked_share() > 0.5


def test_a_cold_instance_does_not_count_acks() -> None:
    model = DeliveryModel(DetectionConfig())
    for i in range(10):
        model.on_sent(f"m{i}", f"5511900000{i:03d}", float(i))
        model.on_ack(f"m{i}", float(i), i + 0.3)
    for i in range(10, 30):
        model.on_sent(f"m{i}", f"5511900000{i:03d}", float(i))
    verdict = assess(model, 100.0)
    assert (verdict.ack_evidence, verdict.unacked) == (0.0, 0)
    assert not model.acks_warmed_up


def test_a_receipt_or_an_ack_resets_the_ack_evidence() -> None:
    clock = warmed(pool=50, rate=1.0, acks=True)
    clock.delivering = clock.acking = False
    clock.pending.clear()
    clock.pending_acks.clear()
    for _ in range(3):
        clock.now += 1
        clock.send()
    clock.now += 5
    assert assess(clock.model, clock.now).ack_evidence > 0
    clock.model.on_ack("late", clock.now - 1, clock.now)
    after = assess(clock.model, clock.now + 1)
    assert (after.ack_evidence, after.unacked) == (0.0, 0)


def test_acked_silence_weighs_half_only_where_a_burst_cannot_be_learned_in_time() -> None:
    """At one send a minute the recent share needs ~18 minutes to follow a group gone quiet: acked
    silence weighs half. At 1/s it follows within a couple of minutes: in full, so a stall whose
    sends are still acked costs what it did on receipts alone."""
    slow = warmed(pool=20, rate=1 / 60, acks=True)
    fast = warmed(pool=50, rate=1.0, acks=True)
    assert fast.advance(3600, rate=1.0) == 0  # the send rate is learned over an hour
    assert slow.model.acked_silence_weight() == 0.5
    assert fast.model.acked_silence_weight() == 1.0
    sends, _ = fast.sends_until_stalled(rate=1.0, still_acks=True)
    assert sends <= 10
