"""How the gateway's CPU per delivery grows with a hot room's subscribers and with its rate.

Two series on the default engine: subscribers at a fixed publish rate, and publish rate at a
fixed number of subscribers (the point they share is measured once). Each point is the median
of a few short runs (:mod:`bench.load`); its figures carry every number in ``extra``, and
:func:`plot` draws both series to a PNG (``make bench`` writes ``bench/growth.png`` next to the
results). Read each point with its achieved share and p99 (both on the plot): a delivery gets
cheaper as the 10 ms tick carries more messages per batch and a connection's packets carry more
batches, which is also what happens when the gateway falls behind; cheaper deliveries bought
with seconds of latency are no gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Figure
from bench.gateway import RunningGateway
from bench.load import QUICK, Fleet, Measurement, Timing, in_hot_room, medians, repeat, summary_note

__all__ = ["plot", "run"]

ENGINE = "aioquic"
SUBSCRIBERS = (50, 100, 200, 500, 1000)
FIXED_RATE_HZ = 100.0
RATES_HZ = (25.0, 50.0, 100.0, 200.0)
FIXED_SUBSCRIBERS = 200
QUICK_SUBSCRIBERS = (10, 20)
QUICK_FIXED_RATE_HZ = 50.0
QUICK_RATES_HZ = (25.0, 50.0)
QUICK_FIXED_SUBSCRIBERS = 20
GROWTH = Timing(runs=3, warmup_s=1.5, window_s=3.0)  # nine points: shorter windows than fanout's


def _points(
    subscribers: Sequence[int], fixed_rate: float, rates: Sequence[float], fixed_subs: int
) -> dict[int, list[float]]:
    """The rates to measure at each subscriber count (both series, the shared point once)."""
    plan = {count: [fixed_rate] for count in subscribers}
    plan[fixed_subs] = sorted({*plan.get(fixed_subs, []), *rates})
    return plan


def _figure(series: str, runs: list[Measurement]) -> Figure:
    first = runs[0]
    m = medians(runs)
    return Figure(
        "growth",
        f"gateway CPU per delivery, by {series}: {first.subscribers} subscribers x "
        f"{first.rate_per_s:g} msgs/s, {ENGINE}",
        m["cpu_us_per_delivery"],
        "us",
        summary_note(runs),
        {
            "series": series,
            "subscribers": first.subscribers,
            "rate_per_s": first.rate_per_s,
            "medians": m,
            "runs": [run.as_dict() for run in runs],
        },
    )


def run(quick: bool) -> list[Figure]:
    subscribers: Sequence[int]
    rates: Sequence[float]
    if quick:
        subscribers, fixed_rate = QUICK_SUBSCRIBERS, QUICK_FIXED_RATE_HZ
        rates, fixed_subs, timing = QUICK_RATES_HZ, QUICK_FIXED_SUBSCRIBERS, QUICK
    else:
        subscribers, fixed_rate = SUBSCRIBERS, FIXED_RATE_HZ
        rates, fixed_subs, timing = RATES_HZ, FIXED_SUBSCRIBERS, GROWTH
    measured: dict[tuple[int, float], list[Measurement]] = {}
    for count, wanted in _points(subscribers, fixed_rate, rates, fixed_subs).items():

        async def work(
            gw: RunningGateway, swarm: Fleet, wanted: list[float] = wanted
        ) -> dict[float, list[Measurement]]:
            return {rate: await repeat(gw, swarm, rate, timing) for rate in wanted}

        for rate, runs in in_hot_room(ENGINE, count, work).items():
            measured[count, rate] = runs
    figures = [_figure("subscribers", measured[count, fixed_rate]) for count in subscribers]
    figures += [_figure("rate", measured[fixed_subs, rate]) for rate in rates]
    return figures


def _series(figures: Sequence[Figure], axis: str) -> list[tuple[float, Any]]:
    points = [(float(fig.extra[axis]), fig.extra["medians"]) for fig in figures]
    return sorted(p for p in points if math.isfinite(p[0]))


def _panel(ax: Any, points: list[tuple[float, Any]], xlabel: str, title: str, *, log: bool) -> None:
    xs = [x for x, _ in points]
    if log:
        ax.set_xscale("log")
    ax.plot(xs, [m["cpu_us_per_delivery"] for _, m in points], "o-", label="CPU per delivery")
    for x, m in points:
        ax.annotate(
            f"{m['achieved']:.0%}\np99 {m['p99_ms']:,.0f} ms",
            (x, m["cpu_us_per_delivery"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
        )
    ax.set_xticks(xs, [f"{x:g}" for x in xs], minor=False)
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gateway CPU per delivery (µs)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    busy = ax.twinx()
    running = [m["gateway_cpu_percent"] for _, m in points]
    waiting = [m["gateway_cpu_percent"] + m["gateway_wait_percent"] for _, m in points]
    busy.plot(xs, running, "s--", color="tab:red", alpha=0.6)
    busy.plot(xs, waiting, ":", color="tab:red", alpha=0.6)
    busy.set_ylabel("gateway CPU, % of a core (dotted: + waiting for one)", color="tab:red")
    busy.set_ylim(0, 110)


def plot(figures: Sequence[Figure], path: Path) -> Path | None:
    """Draw the growth figures among ``figures`` to ``path`` (a PNG); None if there are none.
    Each point is labelled with the share of offered deliveries that arrived and the p99 latency:
    a cheaper delivery is only good news while those hold."""
    growth = [fig for fig in figures if fig.suite == "growth" and "medians" in fig.extra]
    by_subs = [fig for fig in growth if fig.extra["series"] == "subscribers"]
    by_rate = [fig for fig in growth if fig.extra["series"] == "rate"]
    if not by_subs and not by_rate:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    if by_subs:
        rate = by_subs[0].extra["rate_per_s"]
        _panel(
            left,
            _series(by_subs, "subscribers"),
            "subscribers",
            f"by subscribers, {rate:g} msgs/s",
            log=True,
        )
    if by_rate:
        subs = by_rate[0].extra["subscribers"]
        _panel(
            right,
            _series(by_rate, "rate_per_s"),
            "publish rate (msgs/s)",
            f"by rate, {subs} subscribers",
            log=False,
        )
    fig.suptitle(
        f"Skein fan-out in one hot room ({ENGINE}); labels: share of offered deliveries that "
        "arrived, p99 latency"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
