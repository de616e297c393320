"""Counters the hub keeps as it works; exporters read them when scraped (nothing is pushed).

Plain integers bumped on the hot path: reading them is the exporter's cost, not the hub's. A
:class:`Histogram` is the same idea for distributions: a fixed array of bucket counts, so
observing is a binary search and an increment, and memory never grows.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "FANOUT_WAIT_BUCKETS_S",
    "STORE_COMMIT_BUCKETS_S",
    "Histogram",
    "HubStats",
]

# Around the default 10 ms tick, where fan-out waits cluster, the buckets are finest.
FANOUT_WAIT_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# An fsync on flash takes tens of microseconds to tens of milliseconds.
STORE_COMMIT_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(slots=True)
class Histogram:
    """Observations counted in fixed buckets: ``len(bounds) + 1`` integers, however many arrive.

    ``bounds`` are the buckets' inclusive upper edges (Prometheus's ``le``), finite and strictly
    increasing, or ValueError. A value above the last bound lands in the overflow bucket (``+Inf``);
    one below the first lands in the first. Values must be finite (the caller's clock is).
    """

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)  # per bucket, not cumulative; the last is the overflow
    total: float = field(init=False, default=0.0)  # sum of every observed value
    count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        if not all(math.isfinite(b) for b in self.bounds):
            raise ValueError("histogram bounds must be finite (+Inf is implied)")
        if any(b >= c for b, c in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError(f"histogram bounds must strictly increase: {self.bounds}")
        self.bounds = tuple(float(b) for b in self.bounds)
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` (``times`` times: e.g. once per message of a batch that waited as long)."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times
        self.count += times

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, ending with ``(inf, count)``."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def _latency() -> Histogram:
    return Histogram(FANOUT_WAIT_BUCKETS_S)


def _store() -> Histogram:
    return Histogram(STORE_COMMIT_BUCKETS_S)


def _batch() -> Histogram:
    return Histogram(BATCH_SIZE_BUCKETS)


@dataclass(slots=True)
class HubStats:
    """Monotonic counters and histograms since the hub started (gauges live on the hub itself).

    Each field says who bumps it; ``gateway.server.metrics`` exports every one as ``skein_*``.
    """

    sessions_opened: int = 0
    sessions_closed: int = 0
    frames_in: int = 0
    published: Counter[str] = field(default_factory=Counter)  # by priority name
    duplicates: int = 0  # retries recognised by client_msg_id
    acks: int = 0
    batches: int = 0  # Deliver frames built by fan-out (each sent to many)
    batch_messages: int = 0  # messages in them
    datagram_batches: int = 0  # Deliver frames of live chatter built to go as datagrams
    datagram_messages: int = 0  # messages in them
    deliveries: int = 0  # messages x recipients
    bytes_out: int = 0  # fan-out bytes handed to connections (after lz4)
    lz4_in: int = 0  # Deliver bytes before compression, when compressed
    lz4_out: int = 0  # and after
    errors: Counter[str] = field(default_factory=Counter)  # by ErrorCode name
    splits: int = 0
    merges: int = 0
    fetches: int = 0
    replayed: int = 0  # messages replayed to resuming clients
    resumes: int = 0  # joins that carried a cursor
    # Shards opened (a room's first epoch, each reshard's new epoch) and sealed (by a reshard):
    # the difference is how many shards are live, without walking every room at scrape time.
    shards_opened: int = 0
    shards_sealed: int = 0
    # Rooms dropped from memory after room_idle_s idle (gateway.core.reclaim); their live shards
    # count as sealed here.
    rooms_reclaimed: int = 0
    # Messages per Deliver frame, one observation per frame built by fan-out.
    batch_size_messages: Histogram = field(default_factory=_batch)
    # From a message's sequencing (which is its receipt: the hub sequences on arrival) to its
    # batch being handed to connections, one observation per message that reached at least one
    # subscriber. tick_ms bounds it on the live path; the reliable path adds the store's commit.
    fanout_wait_seconds: Histogram = field(default_factory=_latency)
    # Messages x recipients delivered, by priority name (sums to ``deliveries``), and shed for
    # connections over their send budget (a tombstone went instead), by priority name.
    # Slow-consumer disconnects need no field: they are ``errors["SLOW_CONSUMER"]``.
    delivered: Counter[str] = field(default_factory=Counter)
    shed: Counter[str] = field(default_factory=Counter)
    # Publishes refused (RATE_LIMITED) because their room was over its publish rate, by priority
    # name: refusals, not deliveries, so they are kept apart from ``shed``.
    room_rate_refused: Counter[str] = field(default_factory=Counter)
    # The store's: how long each commit (write + fsync of a batch) took.
    store_commit_seconds: Histogram = field(default_factory=_store)
