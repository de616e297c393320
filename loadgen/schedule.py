"""What each simulated client does and when, decided up front from a seed (sans-IO, pure).

Nothing here reads a clock or touches the network: times are seconds from the start of the run.
Every client draws from its own generators (:func:`client_rng`), seeded by the scenario's seed, the
client's global index and the stream's name, so a client behaves the same however the clients are
split across worker processes, and a comparison run (migrate vs reconnect) replays exactly the same
rooms, messages and handoff times.

- :class:`RoomPicker`: Zipf room popularity; each client joins distinct rooms.
- :func:`publish_schedule`: per room a Poisson process, sped up during bursts (thinning), merged
  in time order; sizes log-uniform, priorities by weight.
- :func:`handoff_schedule`: exponential intervals, kinds by weight, a new path profile each time.
- :func:`plan_handoff`: what a handoff kind does to the path and how the client recovers, per mode.
- :func:`stall_schedule`: whether a client is a slow consumer, and when and how long it stalls.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from loadgen.scenario import (
    HANDOFF_KINDS,
    PRIORITIES,
    Burst,
    HandoffConfig,
    HandoffKind,
    PathsConfig,
    PublishConfig,
    RoomsConfig,
    StallConfig,
    Weights,
)

__all__ = [
    "HANDOFF_MODES",
    "HandoffEvent",
    "HandoffMode",
    "HandoffPlan",
    "PublishEvent",
    "RoomPicker",
    "StallEvent",
    "client_rng",
    "handoff_schedule",
    "pick",
    "plan_handoff",
    "publish_schedule",
    "rate_multiplier",
    "stall_schedule",
    "zipf_weights",
]

HandoffMode = Literal["scenario", "migrate", "reconnect"]
"""``scenario``: each kind as the scenario says; ``migrate``: recover every handoff by QUIC
migration (a full reconnect becomes a migration); ``reconnect``: recover every one by a full
reconnect and resume (what a handoff costs without migration)."""
HANDOFF_MODES: tuple[HandoffMode, ...] = get_args(HandoffMode)

PathChange = Literal["none", "nat_rebind", "blackout"]
Recovery = Literal["none", "migrate", "reconnect"]


def client_rng(seed: int, index: int, stream: str) -> random.Random:
    """A generator for one client and one purpose; the same arguments give the same draws."""
    # String seeds hash with SHA-512 in CPython: stable across processes and runs, unlike hash().
    return random.Random(f"skein-loadgen:{seed}:{index}:{stream}")


def pick(rng: random.Random, weights: Weights) -> str:
    """One name drawn by weight."""
    names = [name for name, _ in weights]
    return rng.choices(names, weights=[w for _, w in weights])[0]


def zipf_weights(count: int, s: float) -> list[float]:
    """Unnormalised Zipf weights ``1 / rank**s`` for ranks 1..count (s = 0: uniform)."""
    return [1.0 / (rank**s) for rank in range(1, count + 1)]


class RoomPicker:
    """Draws each client's rooms (by rank, 0 = hottest) with Zipf weights, without replacement."""

    def __init__(self, rooms: RoomsConfig) -> None:
        self._rooms = rooms
        self._cumulative = list(itertools.accumulate(zipf_weights(rooms.count, rooms.zipf_s)))

    def ranks(self, rng: random.Random) -> tuple[int, ...]:
        """``per_client`` distinct ranks, sorted. Deterministic for a given ``rng`` state."""
        want = self._rooms.per_client
        total = self._cumulative[-1]
        chosen: set[int] = set()
        # Rejection sampling: cheap while the picks are few compared to the rooms' spread. With a
        # steep Zipf and many picks it could spin, so it is bounded and then fills in by rank.
        for _ in range(want * 50):
            if len(chosen) == want:
                break
            rank = bisect.bisect_right(self._cumulative, rng.random() * total)
            chosen.add(min(rank, self._rooms.count - 1))
        for rank in range(self._rooms.count):
            if len(chosen) == want:
                break
            chosen.add(rank)
        return tuple(sorted(chosen))


@dataclass(frozen=True, slots=True)
class PublishEvent:
    """At ``at_s``, publish ``size_bytes`` with ``priority`` to the room of ``room_rank``."""

    at_s: float
    room_rank: int
    size_bytes: int
    priority: str

    def __post_init__(self) -> None:
        if self.at_s < 0 or self.size_bytes < 1 or self.priority not in PRIORITIES:
            raise ValueError(f"bad publish event {self!r}")


def rate_multiplier(bursts: Sequence[Burst], room_rank: int, at_s: float) -> float:
    """How much faster than its base rate room ``room_rank`` is published into at ``at_s``.

    The largest multiplier of the bursts active then for that room (or all rooms); 1 outside them.
    """
    active = [
        b.multiplier
        for b in bursts
        if b.at_s <= at_s < b.at_s + b.duration_s and b.room_rank in (None, room_rank)
    ]
    return max(active) if active else 1.0


def _room_times(
    rng: random.Random, rate_per_s: float, bursts: Sequence[Burst], rank: int, duration_s: float
) -> Iterator[float]:
    """A Poisson process of ``rate_per_s`` times the burst multiplier, by thinning: candidates at
    the peak rate, each kept with probability multiplier / peak."""
    peak = max([1.0, *(b.multiplier for b in bursts if b.room_rank in (None, rank))])
    if rate_per_s <= 0:
        return
    t = 0.0
    while True:
        t += rng.expovariate(rate_per_s * peak)
        if t >= duration_s:
            return
        if rng.random() * peak < rate_multiplier(bursts, rank, t):
            yield t


def _tagged(times: Iterator[float], rank: int) -> Iterator[tuple[float, int]]:
    for t in times:
        yield t, rank


def publish_schedule(
    rng: random.Random, ranks: Sequence[int], publish: PublishConfig, duration_s: float
) -> Iterator[PublishEvent]:
    """The client's publishes in time order, lazily: O(rooms) memory however long the run.

    The client's ``rate_per_client_per_s`` is split evenly over its rooms. Each room's times come from
    its own generator (seeded from ``rng``), so adding a burst to one room leaves the others' times
    unchanged; sizes and priorities are drawn from ``rng`` in time order.
    """
    if not ranks:
        return
    per_room = publish.rate_per_client_per_s / len(ranks)
    streams = [
        _tagged(
            _room_times(random.Random(rng.random()), per_room, publish.bursts, r, duration_s), r
        )
        for r in ranks
    ]
    low, high = math.log(publish.size_bytes_min), math.log(publish.size_bytes_max)
    for at_s, rank in heapq.merge(*streams):
        size = round(math.exp(rng.uniform(low, high)))
        size = min(max(size, publish.size_bytes_min), publish.size_bytes_max)
        yield PublishEvent(at_s, rank, size, pick(rng, publish.priorities))


@dataclass(frozen=True, slots=True)
class HandoffEvent:
    """At ``at_s`` the client's network changes by ``kind``; ``profile`` names its new path
    profile (None: keep the current one)."""

    at_s: float
    kind: HandoffKind
    profile: str | None = None

    def __post_init__(self) -> None:
        if self.at_s < 0 or self.kind not in HANDOFF_KINDS:
            raise ValueError(f"bad handoff event {self!r}")


def handoff_schedule(
    rng: random.Random, handoffs: HandoffConfig, paths: PathsConfig, duration_s: float
) -> list[HandoffEvent]:
    """The client's handoffs in ``[0, duration_s)``: exponential intervals of mean
    ``mean_interval_s`` (none if 0), kinds by weight, and a new path profile drawn from the mix
    for each when ``paths.switch_on_handoff``. At most ``duration_s / 0.1 + 1`` events."""
    if handoffs.mean_interval_s <= 0:
        return []
    events: list[HandoffEvent] = []
    t = rng.expovariate(1.0 / handoffs.mean_interval_s)
    while t < duration_s:
        kind = pick(rng, handoffs.kinds)
        profile = pick(rng, paths.mix) if paths.switch_on_handoff else None
        events.append(HandoffEvent(t, kind, profile))  # type: ignore[arg-type]
        t += rng.expovariate(1.0 / handoffs.mean_interval_s)
    return events


@dataclass(frozen=True, slots=True)
class StallEvent:
    """From ``at_s`` for ``length_s`` the client's path carries nothing (a slow consumer)."""

    at_s: float
    length_s: float

    def __post_init__(self) -> None:
        if self.at_s < 0 or self.length_s < 0:
            raise ValueError(f"bad stall event {self!r}")


def stall_schedule(rng: random.Random, stalls: StallConfig, duration_s: float) -> list[StallEvent]:
    """The client's stalls in ``[0, duration_s)``. The first draw decides whether the client is
    one of the slow ``fraction``; if so, stalls follow at exponential intervals of mean
    ``mean_interval_s`` (counted from the end of the previous one, so they never overlap), each
    lasting uniformly ``stall_s_min..stall_s_max``: about ``duration_s / mean_interval_s``."""
    if rng.random() >= stalls.fraction:
        return []
    events: list[StallEvent] = []
    t = rng.expovariate(1.0 / stalls.mean_interval_s)
    while t < duration_s:
        length = rng.uniform(stalls.stall_s_min, stalls.stall_s_max)
        events.append(StallEvent(t, length))
        t += length + rng.expovariate(1.0 / stalls.mean_interval_s)
    return events


@dataclass(frozen=True, slots=True)
class HandoffPlan:
    """What a handoff does: first to the path (``nat_rebind``: the relay's upstream port changes;
    ``blackout``: nothing gets through for a while), then how the client recovers (``migrate``:
    QUIC migration to a new local socket; ``reconnect``: a new connection resumed from the
    cursor; ``none``: QUIC copes on its own)."""

    path: PathChange
    recovery: Recovery


_PLANS: dict[HandoffMode, dict[HandoffKind, HandoffPlan]] = {
    "scenario": {
        "migrate": HandoffPlan("none", "migrate"),
        "nat_rebind": HandoffPlan("nat_rebind", "none"),
        "blackout": HandoffPlan("blackout", "migrate"),
        "reconnect": HandoffPlan("none", "reconnect"),
    },
    "migrate": {
        "migrate": HandoffPlan("none", "migrate"),
        "nat_rebind": HandoffPlan("nat_rebind", "none"),
        "blackout": HandoffPlan("blackout", "migrate"),
        "reconnect": HandoffPlan("none", "migrate"),
    },
    "reconnect": {
        "migrate": HandoffPlan("none", "reconnect"),
        "nat_rebind": HandoffPlan("nat_rebind", "reconnect"),
        "blackout": HandoffPlan("blackout", "reconnect"),
        "reconnect": HandoffPlan("none", "reconnect"),
    },
}


def plan_handoff(kind: HandoffKind, mode: HandoffMode) -> HandoffPlan:
    """The plan for ``kind`` in ``mode`` (a table, see :data:`HandoffMode`)."""
    return _PLANS[mode][kind]
