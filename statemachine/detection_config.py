"""The stall test's settings and its small records (statemachine/detection.py holds the model and
the test itself, and re-exports every name here)."""

from __future__ import annotations

import math
from dataclasses import dataclass

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class DetectionConfig:
    """Tunables of the stall test. The defaults are the ones the detection benchmark justifies."""

    # Accepted false blocks per instance-day of healthy traffic (the test's size).
    false_alarm_per_day: float = 1e-4
    # Runs of evidence (receipts) per day below this count as this: quiet instances are not trusted more.
    min_sends_per_day: float = 1_440.0
    # A recipient whose last receipt is at most this old is "warm": their silence is strong evidence.
    # Older receipts make a recipient "known"; never a receipt, "new". Each class learns its own share.
    warm_for: float = 900.0
    # Receipt latencies kept per instance (the survival curve) and their cold-start minimum.
    latency_samples: int = 256
    min_latency_samples: int = 20
    # Before an instance has min_latency_samples receipts, silence counts only after this age.
    cold_wait: float = 60.0
    # Extra evidence (nats) a cold instance must gather on top of the threshold.
    cold_margin: float = math.log(100.0)
    # A send unconfirmed this long after a later receipt proved the session alive "never confirms".
    never_after_min: float = 120.0
    never_after_factor: float = 4.0
    # Priors of the never-confirm shares (pseudo-counts of misses, hits) and their floor.
    priors: tuple[tuple[float, float], ...] = ((1.0, 49.0), (1.0, 9.0), (1.0, 1.0))
    miss_floor: float = 0.02
    # Counts decay (halve) past this many observations per class: the model follows change.
    class_memory: float = 2_000.0
    # The same share per hour of the day the send was made (UTC): nights differ from days. An
    # hour's own counts weigh against the class's long-run share with this many pseudo-observations.
    hourly_memory: float = 200.0
    hourly_weight: float = 4.0
    # ...and over the class's last few outcomes only: a group of recipients gone quiet at once (an
    # offline burst) raises the share within minutes. The larger of the hour's and this one is used.
    recent_memory: float = 16.0
    recent_weight: float = 4.0
    # Bounded memory per instance.
    max_recipients: int = 4_096
    max_open: int = 2_048
    # Evidence (nats) from which the instance is "suspicious": probe it now.
    suspicion: float = math.log(10.0)
    # Time constant of the send- and receipt-rate estimates (seconds).
    rate_window: float = 3_600.0
    # Server acks ("sent" status / webhookDelivery fromApi: the message left the phone, whether or
    # not the recipient is online). Ack latencies kept and their minimum before acks are evidence.
    ack_samples: int = 256
    min_ack_samples: int = 20
    # A send unacked this long after a later ack or receipt proved the session alive "never acks".
    ack_never_after_min: float = 30.0
    ack_never_after_factor: float = 4.0
    # Prior of the never-ack share (pseudo-counts of misses, acks) and its floor: an
    # unacked send weighs at most ln(1/floor) nats. An instance whose webhooks send no acks learns
    # a share near 0, and its unacked sends weigh nothing: receipt-only evidence, as before.
    ack_prior: tuple[float, float] = (1.0, 1.0)
    ack_miss_floor: float = 0.01
    ack_memory: float = 2_000.0
    # ...and over the last few outcomes: acks that stop (webhooks reconfigured) stop counting soon.
    ack_recent_memory: float = 16.0
    # The receipt evidence of a silent send that *was* acked is weighed by this (0..1]: receipts
    # missing while acks keep coming is what recipients away at once (an offline burst) look like.
    # The recent share follows such a group within its lag (recent_memory outcomes at the send
    # rate, plus the never-confirm horizon): where that lag is at least `burst_lag` seconds (one
    # send a minute: ~18 minutes, most of a burst) acked silence weighs this; where it is at most
    # a quarter of it (1/s and faster) in full; linear in between. A weight below 1 keeps each term a
    # supermartingale (Jensen), so the bound still holds.
    acked_silence_weight: float = 0.5
    burst_lag: float = 600.0


WARM, KNOWN, NEW = 0, 1, 2
CLASS_NAMES = ("warm", "known", "new")


@dataclass(slots=True)
class OpenSend:
    message_id: str
    recipient: str
    sent_at: float
    klass: int  # WARM, KNOWN or NEW when it was sent
    acked: bool = False  # the provider's server ack came (the message left the phone)


@dataclass(slots=True)
class _Share:
    """Never-confirm share of one recipient class, as decayed pseudo-counts."""

    misses: float = 0.0
    hits: float = 0.0

    def add(self, miss: bool, memory: float) -> None:
        if miss:
            self.misses += 1.0
        else:
            self.hits += 1.0
        if self.misses + self.hits > memory:
            self.misses /= 2.0
            self.hits /= 2.0

    def rate(self, prior: tuple[float, float], floor: float) -> float:
        a, b = prior
        return max(floor, (self.misses + a) / (self.misses + self.hits + a + b))
