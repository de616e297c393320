"""`make bench-flat`: does latency stay flat over a long run? (issue 14: "latency flat over a
5-minute run").

The load is the hot room of :mod:`bench.peer` and :func:`bench.load.in_hot_room`: a gateway in
its own process (``skein serve`` with the benchmark settings, on the QUIC ``--engine``), 200
light subscribers (:mod:`bench.swarm`, qh3 clients) over 4 client processes, about 10 of each
recording latency, and one publisher at 100 msgs/s of 100 bytes (20,000 deliveries/s). After the
first delivery and a warm-up, the run is cut into back-to-back intervals of ``--interval-s``
(10 s) for ``--duration-s`` (300 s); each interval is one :func:`bench.load.measure_window`: the
latency the sampled subscribers saw (from the publisher's intended send time, HDR histograms
merged exactly), deliveries counted, the gateway's CPU, the kernel's UDP drops at its socket,
what it shed, its RSS and the machine's load average.

The verdict (:func:`flatness`) merges the intervals of the second ``--compare-s`` (60 s: the
second minute, after start-up effects) and of the last one, and says whether the last minute's
p99 is within ``--ratio-limit`` (1.5x) of the second minute's. It is reported, never an exit
status: a shared 2-core machine can fail it for reasons of its own, so read it with the load
average beside it. Writes a JSON document (every interval, with its histogram) and a PNG of
p50/p99 per interval, and prints a table. Not part of ``make bench`` (it takes minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bench.common import machine_info
from bench.gateway import RunningGateway
from bench.load import BODY_BYTES, Fleet, in_hot_room, measure_window
from gateway.core.config import require_int, require_number
from gateway.engine import ENGINES
from loadgen.stats import Summary, merge_encoded

__all__ = ["SCHEMA", "FlatConfig", "Interval", "compare_windows", "flatness", "main", "run_flat"]

SCHEMA = "skein.bench.flat/1"
MAX_INTERVALS = 3600  # a bound on the loop whatever the arguments


@dataclass(frozen=True, slots=True, kw_only=True)
class FlatConfig:
    """One flatness run. Raises ``ValueError`` naming the field for a value out of range, and
    unless ``duration_s`` holds two ``compare_s`` windows of whole intervals."""

    engine: str = "aioquic"
    duration_s: float = 300.0
    interval_s: float = 10.0
    compare_s: float = 60.0
    warmup_s: float = 2.0
    subscribers: int = 200
    rate_per_s: float = 100.0
    processes: int = 4
    sampled_per_process: int = 10
    ratio_limit: float = 1.5

    def __post_init__(self) -> None:
        for name, low, high in (
            ("duration_s", 1.0, 3600.0),
            ("interval_s", 0.5, 600.0),
            ("compare_s", 0.5, 1800.0),
            ("warmup_s", 0.0, 600.0),
            ("rate_per_s", 0.1, 10_000.0),
            ("ratio_limit", 1.0, 100.0),
        ):
            require_number(self, name, low, high)
        require_int(self, "subscribers", 1, 10_000)
        require_int(self, "processes", 1, 64)
        require_int(self, "sampled_per_process", 1, 10_000)
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.compare_s < self.interval_s:
            raise ValueError("compare_s must be at least one interval_s")
        if self.intervals < 2 * self.per_window or self.intervals > MAX_INTERVALS:
            raise ValueError(
                f"duration_s must hold two compare_s windows of intervals (and at most "
                f"{MAX_INTERVALS} intervals): {self.duration_s:g} s of {self.interval_s:g} s "
                f"intervals, windows of {self.compare_s:g} s"
            )

    @property
    def intervals(self) -> int:
        """How many intervals the run measures."""
        return max(1, round(self.duration_s / self.interval_s))

    @property
    def per_window(self) -> int:
        """Intervals in one comparison window."""
        return max(1, round(self.compare_s / self.interval_s))


@dataclass(frozen=True, slots=True)
class Interval:
    """One interval of the run. ``start_s``: since the first interval began; latency in ms;
    rates per second of the interval; ``histogram``: its latency histogram, HDR-encoded."""

    index: int
    start_s: float
    window_s: float
    count: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    delivered_per_s: float
    achieved: float
    gateway_cpu_percent: float
    gateway_wait_percent: float
    gateway_rss_mb: float
    gateway_udp_drops: int
    subscriber_udp_drops: int
    shed: int
    sessions_lost: int
    errors: int
    load_avg_1m: float
    histogram: str


def compare_windows(config: FlatConfig) -> tuple[range, range]:
    """The interval indexes of the second comparison window and of the last one."""
    per, count = config.per_window, config.intervals
    return range(per, 2 * per), range(count - per, count)


def _window_summary(intervals: Sequence[Interval], indexes: range) -> dict[str, Any]:
    chosen = [i for i in intervals if i.index in indexes]
    summary = Summary.of(merge_encoded(i.histogram for i in chosen))
    return {
        "intervals": [indexes.start, indexes.stop - 1],
        "from_s": chosen[0].start_s if chosen else None,
        "to_s": round(chosen[-1].start_s + chosen[-1].window_s, 3) if chosen else None,
        **summary.as_dict(),
    }


def flatness(intervals: Sequence[Interval], config: FlatConfig) -> dict[str, Any]:
    """Whether the last window's p99 is within ``config.ratio_limit`` of the second window's
    (each merged exactly from its intervals' histograms). ``flat`` is False when either window
    has no latency sample (nothing to compare is not flat)."""
    second_idx, last_idx = compare_windows(config)
    second = _window_summary(intervals, second_idx)
    last = _window_summary(intervals, last_idx)
    measured = second["count"] > 0 and last["count"] > 0 and second["p99_ms"] > 0
    ratio = last["p99_ms"] / second["p99_ms"] if measured else None
    return {
        "rule": f"p99 of the last {config.compare_s:g} s <= {config.ratio_limit:g} x p99 of "
        f"the second {config.compare_s:g} s",
        "second": second,
        "last": last,
        "ratio": None if ratio is None else round(ratio, 3),
        "ratio_limit": config.ratio_limit,
        "flat": ratio is not None and ratio <= config.ratio_limit,
    }


async def _intervals(
    gw: RunningGateway, swarm: Fleet, config: FlatConfig, on_interval: Callable[[Interval], None]
) -> tuple[list[Interval], dict[str, Any]]:
    """Publish, warm up, measure ``config.intervals`` back-to-back intervals, stop publishing."""
    await swarm.publish(config.rate_per_s)
    out: list[Interval] = []
    try:
        await swarm.first_delivery()
        await asyncio.sleep(config.warmup_s)
        began = time.monotonic()
        for index in range(config.intervals):
            start_s = time.monotonic() - began
            window = await measure_window(gw, swarm, config.interval_s)
            t = window.tallies
            elapsed = window.elapsed_s
            offered = config.rate_per_s * config.subscribers
            interval = Interval(
                index=index,
                start_s=round(start_s, 3),
                window_s=round(elapsed, 3),
                count=t.latency.count,
                p50_ms=t.latency.p50_ms,
                p99_ms=t.latency.p99_ms,
                p999_ms=t.latency.p999_ms,
                max_ms=t.latency.max_ms,
                delivered_per_s=round(t.messages_per_s, 1),
                achieved=round(t.messages_per_s / offered, 4),
                gateway_cpu_percent=round(window.gateway_cpu_s / elapsed * 100, 1),
                gateway_wait_percent=round(window.gateway_wait_s / elapsed * 100, 1),
                gateway_rss_mb=round(gw.rss_bytes() / 2**20, 1),
                gateway_udp_drops=window.gateway_udp_drops,
                subscriber_udp_drops=t.udp_drops,
                shed=window.delta("skein_shed_messages_total"),
                sessions_lost=t.lost,
                errors=t.errors,
                load_avg_1m=round(os.getloadavg()[0], 2),
                histogram=t.histogram,
            )
            out.append(interval)
            on_interval(interval)
    finally:
        published = await swarm.stop_publishing()
    return out, published


def run_flat(
    config: FlatConfig, on_interval: Callable[[Interval], None] = lambda _: None
) -> dict[str, Any]:
    """Run ``config`` (minutes, by default) and return the results document. Raises
    RuntimeError (with the gateway's last output) if the gateway or the clients fail."""
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    load_before = os.getloadavg()

    async def work(gw: RunningGateway, swarm: Fleet) -> tuple[list[Interval], dict[str, Any]]:
        return await _intervals(gw, swarm, config, on_interval)

    intervals, published = in_hot_room(
        config.engine,
        config.subscribers,
        work,
        processes=config.processes,
        sampled_per_process=config.sampled_per_process,
    )
    return {
        "schema": SCHEMA,
        "machine": machine_info(),
        "started": started,
        "config": asdict(config),
        "body_bytes": BODY_BYTES,
        "load_avg": {"before": list(load_before), "after": list(os.getloadavg())},
        "publisher": published,
        "totals": {
            name: sum(getattr(i, name) for i in intervals)
            for name in ("count", "gateway_udp_drops", "shed", "sessions_lost", "errors")
        },
        "flatness": flatness(intervals, config),
        "intervals": [asdict(i) for i in intervals],
    }


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Draw p50/p99 per interval (the two comparison windows shaded, the limit dashed) over the
    gateway's CPU and the load average, into ``path`` (PNG). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config, verdict, rows = doc["config"], doc["flatness"], doc["intervals"]
    t = [r["start_s"] + r["window_s"] / 2 for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(2, 1))
    top.plot(t, [r["p50_ms"] for r in rows], "o-", label="p50")
    top.plot(t, [r["p99_ms"] for r in rows], "o-", label="p99")
    for name, colour in (("second", "tab:green"), ("last", "tab:red")):
        window = verdict[name]
        if window["from_s"] is not None:
            top.axvspan(window["from_s"], window["to_s"], color=colour, alpha=0.08)
            top.hlines(window["p99_ms"], window["from_s"], window["to_s"], colors=colour)
    limit = verdict["second"]["p99_ms"] * config["ratio_limit"]
    top.axhline(limit, color="grey", linestyle="--", linewidth=0.8, label="limit")
    top.set_ylabel("latency (ms)")
    top.set_ylim(bottom=0)
    top.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    ratio = "n/a" if verdict["ratio"] is None else f"{verdict['ratio']:.2f}"
    top.set_title(
        f"{config['engine']}: {config['subscribers']} subscribers x {config['rate_per_s']:g} msgs/s; "
        f"last/second window p99 {ratio} (limit {config['ratio_limit']:g}): "
        f"{'flat' if verdict['flat'] else 'NOT flat'}",
        fontsize=10,
    )
    bottom.plot(t, [r["gateway_cpu_percent"] for r in rows], label="gateway CPU (% of a core)")
    bottom.plot(
        t, [r["gateway_wait_percent"] for r in rows], label="gateway waiting for a core (%)"
    )
    bottom.plot(t, [r["achieved"] * 100 for r in rows], "--", label="delivered / offered (%)")
    bottom.set_ylabel("%")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("seconds into the measured run (intervals back to back, read in between)")
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=8, loc="lower left")
    load = bottom.twinx()
    load.plot(t, [r["load_avg_1m"] for r in rows], ":", color="black", label="load average (1 min)")
    load.set_ylabel("load average")
    load.set_ylim(bottom=0)
    load.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _table(doc: dict[str, Any]) -> Table:
    table = Table(title=f"latency per interval, {doc['config']['engine']}", title_justify="left")
    for name in (
        "t (s)",
        "samples",
        "p50",
        "p99",
        "p99.9",
        "max",
        "delivered",
        "gw CPU",
        "gw wait",
        "drops",
        "load",
    ):
        table.add_column(name, justify="right")
    for r in doc["intervals"]:
        table.add_row(
            f"{r['start_s']:.0f}",
            f"{r['count']:,}",
            *(f"{r[k]:,.1f}" for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")),
            f"{r['achieved']:.0%}",
            f"{r['gateway_cpu_percent']:.0f}%",
            f"{r['gateway_wait_percent']:.0f}%",
            f"{r['gateway_udp_drops']:,}",
            f"{r['load_avg_1m']:.1f}",
        )
    return table


def verdict_line(doc: dict[str, Any]) -> str:
    """The run in one line: both windows' p99, their ratio, flat or not, the load."""
    v, load, rows = doc["flatness"], doc["load_avg"], doc["intervals"]
    ratio = "n/a" if v["ratio"] is None else f"{v['ratio']:.2f}x"

    def mean(name: str) -> float:
        return float(sum(r[name] for r in rows)) / max(1, len(rows))

    return (
        f"{doc['config']['engine']}: p99 second window {v['second']['p99_ms']:,.1f} ms, last "
        f"{v['last']['p99_ms']:,.1f} ms: {ratio} (limit {v['ratio_limit']:g}x): "
        f"{'FLAT' if v['flat'] else 'NOT FLAT'}; gateway CPU {mean('gateway_cpu_percent'):.0f}% "
        f"of a core (+{mean('gateway_wait_percent'):.0f}% waiting for one), UDP drops "
        f"{doc['totals']['gateway_udp_drops']:,}, shed {doc['totals']['shed']:,}; load average "
        f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after"
    )


def _parser() -> argparse.ArgumentParser:
    defaults = FlatConfig()
    parser = argparse.ArgumentParser(
        prog="python -m bench.flat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    engine = os.environ.get("SKEIN_QUIC_ENGINE") or defaults.engine
    parser.add_argument(
        "--engine", choices=ENGINES, default=engine, help=f"QUIC engine of the gateway ({engine})"
    )
    for name, kind, help_text in (
        ("duration_s", float, "measured seconds, after the warm-up"),
        ("interval_s", float, "seconds per interval (one p50/p99 point each)"),
        ("compare_s", float, "length of the two windows compared (second and last)"),
        ("warmup_s", float, "seconds after the first delivery before measuring"),
        ("subscribers", int, "subscribers in the hot room"),
        ("rate_per_s", float, "messages per second published into the room"),
        ("processes", int, "subscriber processes"),
        ("sampled_per_process", int, "subscribers per process that record latency"),
        ("ratio_limit", float, "last window's p99 / second window's p99 allowed"),
    ):
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        parser.add_argument(flag, type=kind, default=default, help=f"{help_text} ({default:g})")
    parser.add_argument(
        "--out", type=Path, help="results JSON (bench/flat-ENGINE.json); the PNG goes beside it"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run, print the table and the verdict, write the JSON and the PNG. Exit status: 0 when
    measured (flat or not: the verdict is a figure), 1 if the run failed, 2 for bad arguments."""
    parser = _parser()
    args = parser.parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k != "out"}
    try:
        config = FlatConfig(**fields)
    except ValueError as exc:
        parser.error(str(exc))
    out: Path = args.out or Path(f"bench/flat-{config.engine}.json")
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{config.engine}: starting", total=config.intervals)

        def shown(i: Interval) -> None:
            progress.update(
                task,
                advance=1,
                description=f"{config.engine}: {i.start_s:.0f} s p50 {i.p50_ms:,.1f} p99 "
                f"{i.p99_ms:,.1f} ms, load {i.load_avg_1m:.1f}",
            )

        try:
            doc = run_flat(config, shown)
        except RuntimeError as exc:
            console.print(f"[bold red]bench.flat: {exc}[/]")
            return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    png = plot(doc, out.with_suffix(".png"))
    console.print(_table(doc))
    console.print(f"[bold]{verdict_line(doc)}[/]")
    console.print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
