"""The PNG: latency over time with handoffs marked, latency CDFs steady vs handoff, p50/p99 per
handoff kind beside steady (with the migration target's limit), gateway CPU.

One timeline row per run (comparison mode: migrate above reconnect, on the same latency scale),
then the CDFs of every run on one axis and the gateway's CPU over time. matplotlib runs headless
(the Agg backend) and is imported only when a plot is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadgen.runner import RunResult
from loadgen.scenario import HANDOFF_KINDS

__all__ = ["CDF_PERCENTILES", "cdf_points", "plot_runs"]

CDF_PERCENTILES: tuple[float, ...] = (
    *(float(p) for p in range(0, 100, 2)),
    99.0,
    99.5,
    99.9,
    99.95,
    99.99,
    100.0,
)
_KIND_COLOURS = dict(
    zip(HANDOFF_KINDS, ("tab:green", "tab:purple", "tab:red", "tab:orange"), strict=True)
)
_RUN_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


def cdf_points(histogram: Any) -> tuple[list[float], list[float]]:
    """(latency ms, cumulative fraction) at :data:`CDF_PERCENTILES`; empty if no samples."""
    if histogram.get_total_count() == 0:
        return [], []
    xs = [max(histogram.get_value_at_percentile(p), 1) / 1000.0 for p in CDF_PERCENTILES]
    return xs, [p / 100.0 for p in CDF_PERCENTILES]


def _timeline(ax: Any, run: RunResult, window_s: float) -> None:
    points = run.summary["timeline"]["points"]
    if points:
        t = [p[0] for p in points]
        for column, label, style in ((2, "p50", "-"), (3, "p99", "-"), (4, "max", ":")):
            ax.plot(t, [max(p[column], 0.01) for p in points], style, label=label, linewidth=1.2)
    marks = run.summary["timeline"]["handoff_marks"]
    alpha = min(0.6, max(0.05, 40.0 / max(1, len(marks))))
    for kind in HANDOFF_KINDS:
        at = [t for t, k in marks if k == kind]
        if at:
            ax.vlines(
                at,
                0,
                1,
                transform=ax.get_xaxis_transform(),
                colors=_KIND_COLOURS[kind],
                alpha=alpha,
                linewidth=0.8,
                label=f"handoff: {kind} ({len(at)})",
            )
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_xlabel("seconds into the run (receive time)")
    summary = run.summary["latency_ms"]
    ax.set_title(
        f"{run.label}: p99 steady {summary['steady']['p99_ms']:.1f} ms, "
        f"p99 within {window_s:g} s of a handoff {summary['handoff']['p99_ms']:.1f} ms",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2)


def _cdfs(ax: Any, runs: Sequence[RunResult]) -> None:
    for colour, run in zip(_RUN_COLOURS, runs, strict=False):
        for name, style in (("latency_steady", "-"), ("latency_handoff", "--")):
            xs, ys = cdf_points(run.merged.histograms[name])
            if xs:
                label = f"{run.label} {name.removeprefix('latency_')}"
                ax.step(xs, ys, style, where="post", color=colour, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of messages")
    ax.set_title("latency CDF: steady (solid) vs within the handoff window (dashed)", fontsize=10)
    ax.axhline(0.99, color="grey", linewidth=0.6, linestyle=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _by_kind(ax: Any, runs: Sequence[RunResult]) -> None:
    """p99 bars (p50 as a dot) steady, per handoff kind and for two kinds at once, one bar per
    run; a dashed line at each applicable migration target's limit (steady p99 + one path RTT)."""
    kinds = [
        k
        for k in HANDOFF_KINDS
        if any(k in r.summary["latency_ms"]["handoff_by_kind"] for r in runs)
    ]
    mixed = any(r.summary["latency_ms"]["handoff_mixed"]["count"] for r in runs)
    groups = ["steady", *kinds, *(["two kinds"] if mixed else [])]
    width = 0.8 / max(1, len(runs))
    for i, (colour, run) in enumerate(zip(_RUN_COLOURS, runs, strict=False)):
        latency = run.summary["latency_ms"]
        stats = [latency["steady"], *(latency["handoff_by_kind"].get(k) for k in kinds)]
        stats += [latency["handoff_mixed"]] if mixed else []
        xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(groups))]
        p99 = [max(s["p99_ms"], 0.01) if s and s["count"] else 0.0 for s in stats]
        p50 = [max(s["p50_ms"], 0.01) if s and s["count"] else float("nan") for s in stats]
        ax.bar(xs, p99, width, color=colour, alpha=0.7, label=f"{run.label} p99")
        ax.plot(xs, p50, "o", color="black", markersize=3)
        target = run.summary.get("migration_target") or {}
        if target.get("passed") is not None:
            ax.axhline(
                target["limit_ms"],
                color=colour,
                linestyle="--",
                linewidth=0.8,
                label=f"{run.label}: steady p99 + {target['path']} RTT",
            )
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    ax.set_title("p99 (bars) and p50 (dots): steady and within each kind's window", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")


def _cpu(ax: Any, runs: Sequence[RunResult]) -> None:
    drawn = False
    for colour, run in zip(_RUN_COLOURS, runs, strict=False):
        # Samples count from the workers' start; shift them so 0 is when publishing began.
        offset = run.summary["run_started_s"]
        series = [
            (s.t_s - offset, s.gateway_cpu_percent)
            for s in run.samples
            if s.gateway_cpu_percent is not None
        ]
        if series:
            ax.plot(
                [t for t, _ in series],
                [c for _, c in series],
                color=colour,
                label=f"gateway {run.label}",
            )
            drawn = True
        own = [(s.t_s - offset, s.loadgen_cpu_percent) for s in run.samples]
        if own:
            ax.plot(
                [t for t, _ in own],
                [c for _, c in own],
                ":",
                color=colour,
                label=f"loadgen {run.label}",
            )
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "CPU not sampled", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("seconds into the run (negative: connecting)")
    ax.set_ylabel("CPU (% of one core)")
    ax.set_title("CPU: gateway (solid), loadgen workers (dotted)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)


def plot_runs(runs: Sequence[RunResult], path: Path, *, title: str, window_s: float) -> Path:
    """Draw the runs' figure into ``path`` (PNG), creating its directory. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(runs) + 1
    fig = plt.figure(figsize=(16, 3.6 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, 3)
    first = None
    for i, run in enumerate(runs):
        ax = fig.add_subplot(grid[i, :], sharey=first)
        first = first or ax
        _timeline(ax, run, window_s)
    _cdfs(fig.add_subplot(grid[rows - 1, 0]), runs)
    _by_kind(fig.add_subplot(grid[rows - 1, 1]), runs)
    _cpu(fig.add_subplot(grid[rows - 1, 2]), runs)
    fig.suptitle(title, fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
