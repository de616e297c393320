"""Capacity of a hot room, and end-to-end latency at 50% and 90% of it.

Capacity is found at a fixed number of subscribers by the publish rate: doubled from
``Search.start_per_s`` until a probe fails to hold, then bisected (geometrically) between the last
rate that held and the first that did not. A probe *holds* (failing, it is tried once more) when
the subscribers counted at least ``min_achieved`` of the offered deliveries, nothing was shed, no
session was dropped, and the sampled p99 latency stayed under ``max_p99_ms``. The capacity is the
offered delivery rate (publish rate x subscribers) of the highest rate that held. The gateway's
work is mostly per batch sent to a subscriber (a batch per tick), not per message, so a capacity
in deliveries/s holds for its number of subscribers: the faster the room, the fuller the batches.

Latency is end to end: from the time the publisher meant to send a message (so a publisher that
falls behind shows) to its arrival at a sampled subscriber, every client on the same machine and
clock. Clients and gateway share the cores, so these are the latencies of the whole set-up
under load, of which the gateway is the part that varies with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.common import Figure
from bench.gateway import RunningGateway
from bench.load import FULL, QUICK, Fleet, Measurement, Timing, in_hot_room, medians, repeat

__all__ = ["FULL_SEARCH", "LEVELS", "QUICK_SEARCH", "Search", "find_capacity", "run", "verdict"]

SUBSCRIBERS = 200
QUICK_SUBSCRIBERS = 20
ENGINE = "aioquic"
LEVELS = (0.5, 0.9)
TICK_S = 0.010  # the gateway's default tick: a batch per room per tick, to each subscriber


PROBE = Timing(runs=1, warmup_s=1.5, window_s=3.0)


@dataclass(frozen=True, slots=True)
class Search:
    """How capacity is searched for, and what "sustained" means."""

    start_per_s: float = 25.0
    max_per_s: float = 3200.0
    bisect_steps: int = 3
    probe: Timing = PROBE
    min_achieved: float = 0.95
    # Overload shows as latency that grows for as long as it lasts (seconds within a probe);
    # this bound sits above the tails a busy shared machine adds to a gateway that keeps up.
    max_p99_ms: float = 500.0


FULL_SEARCH = Search()
# A smoke run checks the search works: few short probes, and criteria loose enough that a loaded
# machine still finds some capacity (its numbers mean nothing).
QUICK_SEARCH = Search(
    max_per_s=100.0,
    bisect_steps=1,
    probe=Timing(runs=1, warmup_s=0.5, window_s=1.0),
    min_achieved=0.5,
    max_p99_ms=5000.0,
)


def verdict(m: Measurement, search: Search = FULL_SEARCH) -> str:
    """Why this load was not sustained ("" if it was; see the module docstring)."""
    dropped = m.sessions_lost + m.slow_consumer_disconnects
    p99 = float(m.latency["p99_ms"])
    reasons = [
        f"{m.achieved:.0%} delivered" if m.achieved < search.min_achieved else "",
        f"{m.shed:,} shed" if m.shed else "",
        f"{dropped} dropped" if dropped else "",
        f"p99 {p99:,.0f} ms" if p99 > search.max_p99_ms else "",
    ]
    return ", ".join(r for r in reasons if r)


async def find_capacity(
    gw: RunningGateway, swarm: Fleet, search: Search
) -> tuple[float, list[Measurement]]:
    """The highest publish rate that holds (0 if even the first fails), and every probe."""
    probes: list[Measurement] = []

    async def trial(rate_per_s: float) -> bool:
        # A failed probe gets a second chance: on a shared machine one stall of a neighbour
        # would otherwise set the capacity.
        for _ in range(2):
            probes.extend(await repeat(gw, swarm, rate_per_s, search.probe))
            if not verdict(probes[-1], search):
                return True
        return False

    good, bad, rate = 0.0, math.inf, search.start_per_s
    while rate <= search.max_per_s:
        if not await trial(rate):
            bad = rate
            break
        good, rate = rate, rate * 2
    for _ in range(search.bisect_steps if math.isfinite(bad) else 0):
        middle = math.sqrt(good * bad) if good else bad / 2
        if await trial(middle):
            good = middle
        else:
            bad = middle
    return good, probes


def _capacity_figure(
    subscribers: int, rate_per_s: float, probes: list[Measurement], search: Search
) -> Figure:
    tried = ", ".join(
        f"{p.rate_per_s:.0f}" + (f" ({why})" if (why := verdict(p, search)) else "") for p in probes
    )
    return Figure(
        "capacity",
        f"hot room capacity, {subscribers} subscribers, {ENGINE}",
        rate_per_s * subscribers,
        "deliveries/s",
        f"highest publish rate that held: {rate_per_s:.0f} msgs/s, ~{rate_per_s * TICK_S:.1f} messages "
        f"per batch per subscriber (>= {search.min_achieved:.0%} "
        f"delivered, none shed or dropped, p99 <= {search.max_p99_ms:.0f} ms); msgs/s tried: "
        f"{tried}",
        {"rate_per_s": rate_per_s, "probes": [p.as_dict() for p in probes]},
    )


def _latency_figures(level: float, capacity: float, runs: list[Measurement]) -> list[Figure]:
    m = medians(runs)
    first = runs[0]
    note = (
        f"median of {len(runs)} x {first.window_s:.0f} s at {first.rate_per_s:.0f} msgs/s x "
        f"{first.subscribers} subscribers ({first.offered_per_s:,.0f} deliveries/s offered, "
        f"{m['achieved']:.0%} delivered; capacity {capacity:,.0f}/s); from intended send time"
    )
    extra = {"level": level, "medians": m, "runs": [run.as_dict() for run in runs]}
    return [
        Figure(
            "capacity",
            f"end-to-end latency {name}, {level:.0%} of capacity, {ENGINE}",
            m[f"{name}_ms"],
            "ms",
            note,
            extra,
        )
        for name in ("p50", "p99", "p999")
    ]


def run(quick: bool) -> list[Figure]:
    subscribers = QUICK_SUBSCRIBERS if quick else SUBSCRIBERS
    timing, search = (QUICK, QUICK_SEARCH) if quick else (FULL, FULL_SEARCH)

    async def work(gw: RunningGateway, swarm: Fleet) -> list[Figure]:
        rate_per_s, probes = await find_capacity(gw, swarm, search)
        capacity = rate_per_s * subscribers
        figures = [_capacity_figure(subscribers, rate_per_s, probes, search)]
        for level in LEVELS if rate_per_s else ():
            runs = await repeat(gw, swarm, level * rate_per_s, timing)
            figures += _latency_figures(level, capacity, runs)
        return figures

    return in_hot_room(ENGINE, subscribers, work)
