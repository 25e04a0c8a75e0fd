"""`python -m bench.detection`: replays traffic shapes through the real stall-detection code.

Simulated time only (no sleeping, no network): each shape is a send rate, a recipient pool (a
share of whom never confirm), receipt latencies and optional night-time lulls, once with server
acks (W-API's `sent` status for every accepted send of a healthy session, offline recipients
included, ~0.3 s, 1 % lost) and once receipt-only (webhooks without acks). The replay feeds
`statemachine.detection` exactly as the service does (sent, ack, receipt, one assessment per
tick, probes by `probe_due`), blocks on a stall verdict and lifts the block on a receipt. It
prints, per shape: sends accepted after a silent stall (no acks, no receipts) before the block
(median and max over trials), the time to block, the same for a stall whose sends are still acked,
the time to block a session that only the status probe reveals as incomplete, flapping, and false
blocks per simulated instance-day of healthy traffic (with a burst of offline recipients that is
not a stall, and night-time lulls where the shape has them).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import heapq
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from statemachine.detection import DeliveryModel, DetectionConfig, ProbePolicy, assess, probe_due

DAY = 86_400.0
TICK = 1.0  # the service assesses sending instances once a second
PROBE_LATENCY = 0.3  # seconds a status probe takes
BURST_SHARE = 0.3  # confirming recipients away at once in the offline burst


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    rate: float  # sends per second during the day
    pool: int
    never_share: float  # recipients who never confirm
    latency_median: float  # seconds, lognormal
    latency_sigma: float = 0.6
    bursty: bool = False  # sends come in bursts of 20 at the same average rate
    night_rate: float | None = None  # sends per second from 23:00 to 07:00, when set
    night_offline: float = 0.7  # share of confirming recipients whose phones are off at night
    healthy_days: float = 2.0
    # Server acks ("sent" status): every accepted send of a healthy session, offline recipients
    # included, after a lognormal latency, a share of them lost; none when the webhooks send none.
    acks: bool = True
    ack_median: float = 0.3
    ack_sigma: float = 0.5
    ack_loss: float = 0.01


_BASE_SHAPES = (
    Shape("1/min, pool 20, all confirm", 1 / 60, 20, 0.0, 1.0, healthy_days=60),
    Shape("1/min, pool 50, 50% never, night", 1 / 60, 50, 0.5, 2.0, night_rate=1 / 600, healthy_days=60),
    Shape("1/10s, pool 100, 20% never, minutes", 0.1, 100, 0.2, 60.0, latency_sigma=0.8, healthy_days=10),
    Shape("1/s, pool 200, 50% never", 1.0, 200, 0.5, 0.8, healthy_days=2),
    Shape("1/s bursty, pool 300, 30% never", 1.0, 300, 0.3, 1.0, bursty=True, healthy_days=2),
    Shape("5/s, pool 1000, 25% never", 5.0, 1000, 0.25, 0.6, healthy_days=0.5),
    Shape("5/s, pool 1000, 50% never, night", 5.0, 1000, 0.5, 0.6, night_rate=0.2, healthy_days=0.5),
)
# Each shape twice: with server acks, and receipt-only (webhooks that send no acks).
SHAPES = tuple(
    dataclasses.replace(shape, name=f"{shape.name}, {suffix}", acks=acks)
    for shape in _BASE_SHAPES
    for suffix, acks in (("acks", True), ("no acks", False))
)


def is_night(t: float) -> bool:
    hour = (t % DAY) / 3600.0
    return hour >= 23.0 or hour < 7.0


@dataclass(slots=True)
class Recipient:
    phone: str
    confirms: bool
    sleeps: bool = False  # phone off at night (shapes with nights)
    offline_until: float = 0.0


@dataclass(slots=True)
class Replay:
    """One simulated instance: traffic, session behaviour, detector, block and probes."""

    shape: Shape
    rng: random.Random
    config: DetectionConfig
    policy: ProbePolicy = field(default_factory=ProbePolicy)
    now: float = 0.0
    model: DeliveryModel = field(init=False)
    recipients: list[Recipient] = field(default_factory=list)
    events: list[tuple[float, int, str, tuple[object, ...]]] = field(default_factory=list)
    seq: int = 0
    stalled: bool = False  # the session (truth)
    stall_acks: bool = False  # a stall whose server acks still come (receipts never do)
    incomplete: bool = False  # the session (truth), visible to probes only
    queued: list[tuple[str, Recipient, float]] = field(default_factory=list)
    blocked: bool = False
    blocked_at: float | None = None
    cleared_at: float | None = None
    accepted: int = 0
    blocks: list[float] = field(default_factory=list)
    last_send_at: float | None = None
    last_probe_at: float | None = None
    probe_in_flight: bool = False
    next_id: int = 0
    next_tick: float = 0.0
    exact_ticks: bool = False  # tick every second (probes matter), else only where a verdict can change
    ticks: int = 0  # assessments computed
    first_incomplete_send: float | None = None  # the first send accepted by an incomplete session

    def __post_init__(self) -> None:
        self.model = DeliveryModel(self.config)
        for i in range(self.shape.pool):
            confirms = self.rng.random() >= self.shape.never_share
            sleeps = self.rng.random() < self.shape.night_offline
            self.recipients.append(Recipient(f"55119{i:08d}", confirms, sleeps))

    def push(self, at: float, kind: str, *args: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, args))

    def rate_at(self, t: float) -> float:
        if self.shape.night_rate is not None and is_night(t):
            return self.shape.night_rate
        return self.shape.rate

    def schedule_next_send(self) -> None:
        rate = self.rate_at(self.now)
        if self.shape.bursty:
            gap = self.rng.expovariate(rate / 20.0)
            for k in range(20):
                self.push(self.now + gap + k * 0.2, "send")
            self.push(self.now + gap + 20 * 0.2, "next")
        else:
            self.push(self.now + self.rng.expovariate(rate), "send")

    def latency(self) -> float:
        return self.rng.lognormvariate(math.log(self.shape.latency_median), self.shape.latency_sigma)

    def receipt_time(self, recipient: Recipient, sent: float) -> float:
        at = sent + self.latency()
        if self.shape.night_rate is not None and is_night(at) and recipient.sleeps:
            day_start = (at // DAY) * DAY
            morning = day_start + 7 * 3600.0 if (at % DAY) < 7 * 3600.0 else day_start + DAY + 7 * 3600.0
            at = morning + self.rng.uniform(0, 3600.0)
        return max(at, recipient.offline_until + self.rng.uniform(0, 60.0))

    def send(self) -> None:
        if self.blocked:
            return
        recipient = self.rng.choice(self.recipients)
        self.next_id += 1
        message_id = f"m{self.next_id}"
        self.accepted += 1
        self.last_send_at = self.now
        self.model.on_sent(message_id, recipient.phone, self.now)
        if self.incomplete and self.first_incomplete_send is None:
            self.first_incomplete_send = self.now
        dying = self.stalled or self.incomplete
        if self.shape.acks and (not dying or self.stall_acks) and self.rng.random() >= self.shape.ack_loss:
            self.push(self.now + self.ack_latency(), "ack", message_id, self.now)
        if dying:
            self.queued.append((message_id, recipient, self.now))
        elif recipient.confirms:
            self.push(self.receipt_time(recipient, self.now), "receipt", message_id, recipient, self.now)

    def ack_latency(self) -> float:
        return self.rng.lognormvariate(math.log(self.shape.ack_median), self.shape.ack_sigma)

    def ack(self, message_id: str, sent_at: float) -> None:
        if (self.stalled or self.incomplete) and not self.stall_acks:
            return  # a dying session gets nothing off the phone, not even what was on its way
        self.model.on_ack(message_id, sent_at, self.now)

    def receipt(self, message_id: str, recipient: Recipient, sent_at: float) -> None:
        if self.stalled or self.incomplete:
            return  # a dying session delivers nothing, not even what was on its way
        self.model.on_receipt(message_id, recipient.phone, sent_at, self.now)
        if self.blocked:
            self.blocked = False
            self.cleared_at = self.now

    def tick(self) -> None:
        if self.blocked:
            return
        self.ticks += 1
        verdict = assess(self.model, self.now, since=self.cleared_at)
        if verdict.stalled:
            self.block()
            return
        if probe_due(
            self.policy,
            self.now,
            last_probe_at=self.last_probe_at,
            last_send_at=self.last_send_at,
            suspicious=verdict.suspicious,
            in_flight=self.probe_in_flight,
        ):
            self.probe_in_flight = True
            self.last_probe_at = self.now
            self.push(self.now + PROBE_LATENCY, "probe")

    def probe(self) -> None:
        self.probe_in_flight = False
        if self.incomplete and not self.blocked:
            self.block()

    def block(self) -> None:
        self.blocked = True
        self.blocked_at = self.now
        self.blocks.append(self.now)

    def recover(self) -> None:
        """The session works again: what it had queued is delivered (receipts lift the block)."""
        acked = self.stall_acks
        self.stalled = self.incomplete = self.stall_acks = False
        for message_id, recipient, sent in self.queued:
            if self.shape.acks and not acked:
                self.push(self.now + self.ack_latency(), "ack", message_id, sent)
            if recipient.confirms:
                self.push(self.now + self.latency(), "receipt", message_id, recipient, sent)
        self.queued.clear()

    def offline_burst(self, share: float, duration: float) -> None:
        for recipient in self.recipients:
            if recipient.confirms and self.rng.random() < share:
                recipient.offline_until = self.now + duration

    def run_until(self, end: float, stop: Callable[[], bool] = lambda: False) -> None:
        if not self.events:
            self.schedule_next_send()
        while True:
            at = self.events[0][0] if self.events else math.inf
            self.ticks_until(min(at, end), stop)
            if stop():
                return
            if self.events and self.events[0][0] < at:
                continue  # a tick started a probe that answers first
            if at > end:
                break
            at, _seq, kind, args = heapq.heappop(self.events)
            self.now = at
            if kind == "send":
                self.send()
                if not self.shape.bursty:
                    self.schedule_next_send()
            elif kind == "next":
                self.schedule_next_send()
            elif kind == "receipt":
                self.receipt(*args)  # type: ignore[arg-type]
            elif kind == "ack":
                self.ack(*args)  # type: ignore[arg-type]
            elif kind == "probe":
                self.probe()
            if stop():
                return
        self.ticks_until(end, stop)
        if not stop():
            self.now = end

    def ticks_until(self, until: float, stop: Callable[[], bool]) -> None:
        """Runs the service's once-a-second assessments due up to `until` (before the event there).

        Between two events the model does not change: every silent send only grows older, so the
        evidence can only grow and the threshold (the decaying send rate) only fall; "stalled" and
        "suspicious" are monotone over the gap. When probes cannot change the outcome (the session is
        not incomplete, so a probe answers "connected"), the gap costs one assessment at its last
        tick and, only if that one is stalled, a bisection for the first stalled tick: the verdicts
        are exactly those of ticking every second. With `exact_ticks`, every tick runs (probes).
        """
        last = math.floor(until / TICK) * TICK
        first = self.next_tick
        if last < first:
            return
        self.next_tick = last + TICK
        if self.blocked:
            return
        if self.exact_ticks or self.incomplete:
            t = first
            while t <= last:
                self.now = t
                self.tick()
                t += TICK
                self.next_tick = t
                if stop() or (self.events and self.events[0][0] < t):
                    return
            return
        self.ticks += 1
        if not assess(self.model, last, since=self.cleared_at).stalled:
            return
        lo, hi = 0, round((last - first) / TICK)  # the first stalled tick is first + k * TICK, k in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            self.ticks += 1
            if assess(self.model, first + mid * TICK, since=self.cleared_at).stalled:
                hi = mid
            else:
                lo = mid + 1
        self.now = first + lo * TICK
        self.block()
        self.next_tick = self.now + TICK


@dataclass(slots=True)
class Row:
    shape: str
    stall_sends: list[int]
    stall_seconds: list[float]
    probe_seconds: list[float]
    flap_sends: list[int]
    false_blocks: int
    healthy_days: float
    night_sends: list[int] = field(default_factory=list)  # stall incidents that began at night
    acking_sends: list[int] = field(default_factory=list)  # daytime stalls whose acks still come
    missed: int = 0  # stall incidents not blocked within the horizon
    missed_acking: int = 0


def latency_survival(shape: Shape, age: float) -> float:
    """P(a receipt takes longer than `age`) under the shape's true lognormal latency."""
    if age <= 0.0:
        return 1.0
    z = (math.log(age) - math.log(shape.latency_median)) / shape.latency_sigma
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def oracle_floor(shape: Shape, config: DetectionConfig) -> int:
    """Sends accepted after a daytime stall before even an oracle could block it: one that knows
    which recipients confirm (q = 0 for them, 1 for the others) and the true latency curve, weighs
    every silence continuously (no 1-second tick, no burst allowance) against the same threshold
    (ln(receipts per day / alpha)). What is left is rate x receipt latency: the sends that leave
    before any receipt is overdue enough to count."""
    confirm = 1.0 - shape.never_share
    runs = shape.rate * (confirm + (1.0 - shape.ack_loss if shape.acks else 0.0)) * DAY
    threshold = math.log(max(config.min_sends_per_day, runs) / config.false_alarm_per_day)
    if shape.bursty:  # the stall begins with a burst of 20 sends 0.2 s apart, the next 20 / rate later
        times = [b * 20.0 / shape.rate + k * 0.2 for b in range(200) for k in range(20)]
    else:
        times = [k / shape.rate for k in range(4000)]
    step = min(0.05, shape.latency_median / 20.0)
    t = 0.0
    while t < times[-1]:
        sent = [at for at in times if at <= t]
        evidence = sum(confirm * -math.log(max(1e-300, latency_survival(shape, t - at))) for at in sent)
        if shape.acks:
            ack = Shape("ack", 0.0, 0, 0.0, shape.ack_median, latency_sigma=shape.ack_sigma)
            loss = shape.ack_loss
            evidence += sum(-math.log(loss + (1.0 - loss) * latency_survival(ack, t - at)) for at in sent)
        if evidence >= threshold:
            return len(sent)
        t += step
    return len(times)


def warmup_for(shape: Shape) -> float:
    return max(300.0 / shape.rate, 3600.0)


def _fork(base: Replay, seed: int) -> Replay:
    """An independent continuation of `base` (same history, its own randomness from here)."""
    fork = copy.deepcopy(base)
    fork.rng = random.Random(seed)
    return fork


def _stall_sends(base: Replay, seed: int, horizon: float, *, acks: bool = False) -> tuple[int, float] | None:
    """Silent stall: accepted, never delivered, probes say connected; with `acks`, the provider
    still acks every send (it reaches WhatsApp's servers) but nothing reaches a recipient."""
    replay = _fork(base, seed)
    start, before = replay.now, replay.accepted
    replay.stalled = True
    replay.stall_acks = acks
    replay.run_until(start + horizon, stop=lambda: replay.blocked)
    return (replay.accepted - before, replay.now - start) if replay.blocked else None


def _probe_seconds(base: Replay, seed: int, horizon: float) -> float | None:
    """An incomplete session that only the status probe reveals: seconds from the first send it
    accepts (the instance is sending) to the block; 0 when a probe caught it before any send. A
    minute of every-second ticks first, so the probe schedule at the start is the service's."""
    replay = _fork(base, seed)
    replay.exact_ticks = True
    replay.run_until(replay.now + 60.0)
    if replay.blocked:
        return None
    start = replay.now
    replay.incomplete = True
    replay.run_until(start + horizon, stop=lambda: replay.blocked)
    if not replay.blocked:
        return None
    first = replay.first_incomplete_send
    return max(0.0, replay.now - first) if first is not None else 0.0


def _flap_sends(base: Replay, seed: int, trials: int) -> list[int]:
    """The session stalls (until blocked, at most 30 minutes), recovers (what it queued is delivered,
    which lifts the block), works for 10 minutes, stalls again."""
    replay = _fork(base, seed)
    sends: list[int] = []
    for _ in range(trials):
        replay.run_until(replay.now + 600.0)
        if replay.blocked:
            continue
        before = replay.accepted
        replay.stalled = True
        replay.run_until(replay.now + 1800.0, stop=lambda: replay.blocked)
        if replay.blocked:
            sends.append(replay.accepted - before)
        replay.recover()
    return sends


def run_shape(shape: Shape, config: DetectionConfig, trials: int, seed: int) -> Row:
    """One healthy instance for `healthy_days` (with a burst of offline recipients once a day: 30 %
    of the confirming recipients away for 30 minutes), counting its false blocks. Incidents are
    forked from it at `trials` moments spread over its first day (so over day and night), each on
    its own copy: the healthy run goes on untouched."""
    stall_sends: list[int] = []
    stall_seconds: list[float] = []
    probe_seconds: list[float] = []
    night_sends: list[int] = []
    acking_sends: list[int] = []
    missed = missed_acking = 0
    horizon = 6 * 3600.0
    replay = Replay(shape, random.Random(seed), config)
    replay.run_until(warmup_for(shape))
    replay.blocks.clear()
    begin = replay.now
    end = begin + shape.healthy_days * DAY
    span = min(end - begin, DAY)
    moments = [begin + (k + 0.5) * span / trials for k in range(trials)]
    bursts = random.Random(seed + 4000)  # the burst comes at a different time each day
    next_burst = begin + bursts.uniform(0.0, DAY)
    flap_sends = _flap_sends(replay, seed + 2000, trials)
    for k, moment in enumerate(moments):
        while replay.now < moment:
            replay.run_until(min(moment, next_burst))
            if replay.now >= next_burst:
                replay.offline_burst(BURST_SHARE, 1800.0)
                next_burst = (next_burst // DAY + 1) * DAY + bursts.uniform(0.0, DAY)
        if replay.blocked:
            continue
        stalled = _stall_sends(replay, seed + 100 + k, horizon)
        if stalled is None:
            missed += 1
        elif shape.night_rate is not None and is_night(moment):
            night_sends.append(stalled[0])
        else:
            stall_sends.append(stalled[0])
            stall_seconds.append(stalled[1])
            if shape.acks:
                acking = _stall_sends(replay, seed + 3000 + k, horizon, acks=True)
                if acking is None:
                    missed_acking += 1
                else:
                    acking_sends.append(acking[0])
        probed = _probe_seconds(replay, seed + 1000 + k, horizon)
        if probed is not None:
            probe_seconds.append(probed)
    while replay.now < end:
        replay.run_until(min(end, next_burst))
        if replay.now >= next_burst:
            replay.offline_burst(BURST_SHARE, 1800.0)
            next_burst = (next_burst // DAY + 1) * DAY + bursts.uniform(0.0, DAY)
    return Row(
        shape.name,
        stall_sends,
        stall_seconds,
        probe_seconds,
        flap_sends,
        len(replay.blocks),
        shape.healthy_days,
        night_sends,
        acking_sends,
        missed,
        missed_acking,
    )


def _median(values: list[float] | list[int]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def _max(values: list[float] | list[int], digits: int = 0) -> str:
    return f"{max(values):.{digits}f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=15, help="stall incidents per shape")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--days-scale",
        type=float,
        default=0.1,
        help="multiplies each shape's healthy days (default 0.1: a quick look; 50 for thousands of instance-days)",
    )
    parser.add_argument("--false-alarm-per-day", type=float, default=None)
    parser.add_argument(
        "--only", action="append", default=[], help="run only the shapes whose name contains this (repeatable: any)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="another DetectionConfig value (repeatable)"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, float] = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in DetectionConfig.__dataclass_fields__:
            parser.error(f"unknown DetectionConfig field {name!r}")
        overrides[name] = float(value)
    if args.false_alarm_per_day is not None:
        overrides["false_alarm_per_day"] = args.false_alarm_per_day
    config = dataclasses.replace(DetectionConfig(), **overrides)  # type: ignore[arg-type]
    started = time.perf_counter()
    header = (
        f"| {'shape':<46} | stall sends med/max | floor | stall s med | acking stall sends med/max "
        f"| night stall sends med/max | probe-only s after its 1st send med/max | flap sends med/max "
        f"| false blocks / days |"
    )
    print(f"false_alarm_per_day={config.false_alarm_per_day:g}, trials={args.trials}, days-scale={args.days_scale:g}")
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    stall_sends: dict[bool, list[int]] = {True: [], False: []}  # daytime silent stalls, by acks
    acked_sends: list[int] = []
    total_false, total_days = 0, 0.0
    for shape in SHAPES:
        if args.only and not any(part in shape.name for part in args.only):
            continue
        scaled = _scale(shape, args.days_scale)
        row = run_shape(scaled, config, args.trials, args.seed)
        stall_sends[shape.acks].extend(row.stall_sends)
        acked_sends.extend(row.acking_sends)
        total_false += row.false_blocks
        total_days += row.healthy_days
        night = f"{_median(row.night_sends)} / {_max(row.night_sends)}" if shape.night_rate is not None else "-"
        acking = f"{_median(row.acking_sends)} / {_max(row.acking_sends)}" if shape.acks else "-"
        acking += "*" if row.missed_acking else " "
        print(
            f"| {row.shape:<46} | {_median(row.stall_sends):>8} / {_max(row.stall_sends):>4}"
            f"{'*' if row.missed else ' '}     | {oracle_floor(shape, config):>5} | {_median(row.stall_seconds):>11} "
            f"| {acking:>26} "
            f"| {night:>25} "
            f"| {_median(row.probe_seconds):>25} / {_max(row.probe_seconds, 1):>10} "
            f"| {_median(row.flap_sends):>8} / {_max(row.flap_sends):>7} "
            f"| {row.false_blocks:>5} / {row.healthy_days:<11g} |"
        )
    rate = total_false / total_days if total_days else 0.0
    print(
        f"daytime silent stalls: with acks sends median {_median(stall_sends[True])}, max {_max(stall_sends[True])}, "
        f"receipts only median {_median(stall_sends[False])}, max {_max(stall_sends[False])}; "
        f"acking stalls: median {_median(acked_sends)}, max {_max(acked_sends)}; "
        f"false blocks {total_false} in {total_days:g} instance-days ({rate * 1000:.2f} per 1,000); "
        f"{time.perf_counter() - started:.1f} s"
    )
    print(
        "floor: sends an oracle (knows who confirms and the true latency curve, no tick) accepts before the same "
        "threshold; * some stall incidents not blocked within 6 h; acking stall: the provider still acks every "
        "send, nothing reaches a recipient"
    )
    return 0


def _scale(shape: Shape, factor: float) -> Shape:
    values = {f: getattr(shape, f) for f in shape.__dataclass_fields__}
    values["healthy_days"] = shape.healthy_days * factor
    return Shape(**values)


if __name__ == "__main__":
    raise SystemExit(main())
