"""The soak's terminal table and its PNG (RSS over time, latency over time), from its document.

Only reads the document :func:`loadgen.soak.run_soak` writes, so a saved soak file can be drawn
again. matplotlib runs headless (Agg) and is imported only when the plot is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["plot_soak", "render_soak"]

_MIB = 2**20


def _figures(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    run = doc["run"]
    d, s, h = run["delivery"], run["sessions"], run["handoffs"]
    rel, audit, rss = d["reliable"], doc["store_audit"], doc["rss"]["plateau"]
    lat = run["latency_ms"]["all"]
    reconnects = h["reconnects"]["ok"] + h["reconnects"]["automatic"]
    plateau = (
        f"{rss['middle_third_mib']:.1f} -> {rss['last_third_mib']:.1f} MiB "
        f"({rss['growth_mib']:+.2f} MiB, {rss['growth_percent']:+.2f}%; allowed "
        f"< {rss['allowed_mib']:.1f} MiB; slope {rss.get('slope_mib_per_min', 0):+.2f} MiB/min)"
        if rss.get("growth_mib") is not None
        else f"not measured: {rss.get('why', '?')}"
    )
    return [
        (
            "clients connected / requested",
            f"{run['clients']['connected']} / {run['clients']['requested']}",
        ),
        ("gateway kill -9 / restarts", f"{doc['faults']['kills']} / {doc['faults']['restarts']}"),
        ("messages published / acked", f"{d['published']['total']:,} / {d['acked']['total']:,}"),
        ("delivered to clients", f"{d['received']['total']:,}"),
        ("acked reliable messages", f"{audit['acked']:,}"),
        (
            "reliable deliveries expected / received / lost",
            f"{rel['expected']:,} / {rel['received']:,} / {rel['lost']:,}",
        ),
        (
            "  lost by clients that did not stay",
            f"{rel['lost_gone']:,} ({s['gone']} gone, {s.get('coming_back_at_end', 0)} still "
            "coming back)",
        ),
        ("acked reliable missing from the store", f"{audit['missing']:,}"),
        ("duplicates (crash retries stored twice)", f"{d['duplicates']:,}"),
        ("reconnects (handoff + automatic)", f"{reconnects:,}"),
        ("migrations ok / failed", f"{h['migrations']['ok']} / {h['migrations']['failed']}"),
        ("publish failed (unacked)", f"{d['publish_failed']:,}"),
        ("stalls / slow-consumer cuts", f"{s['stalls']} / {s['slow_consumer_cuts']}"),
        ("sessions ended / came back", f"{sum(s['ended'].values())} / {s['comebacks']}"),
        ("recovered from history after a cut", f"{s['history_recovered']:,}"),
        ("shed (tombstones) / missed", f"{d['shed']:,} / {d['missed']:,}"),
        (
            "latency p50 / p99 / max (ms, all)",
            f"{lat['p50_ms']:,.1f} / {lat['p99_ms']:,.1f} / {lat['max_ms']:,.0f}",
        ),
        ("RSS samples (all / plateau window)", f"{len(doc['rss']['samples'])} / {rss['samples']}"),
        ("RSS plateau: middle -> last third", plateau),
    ]


def render_soak(console: Console, doc: Mapping[str, Any]) -> None:
    """Print the figures table and the verdicts."""
    table = Table(title=f"skein soak: {doc['run']['duration_s']:g} s", title_justify="left")
    table.add_column("")
    table.add_column("", justify="right")
    for title, value in _figures(doc):
        table.add_row(escape(title), escape(value))
    console.print(table)
    for name, ok in doc["checks"].items():
        if name != "passed":
            console.print(f"  {'[green]ok[/green]  ' if ok else '[red]FAIL[/red]'} {name}")
    for example in doc["store_audit"]["examples"][:5]:
        console.print(f"  [yellow]missing from the store:[/yellow] {escape(example)}")
    for note in doc["run"]["errors"][:5]:
        console.print(f"  [dim]note: {escape(note)}[/dim]")
    verdict = "[green]PASS[/green]" if doc["passed"] else "[red]FAIL[/red]"
    console.print(f"[bold]soak: {verdict}[/bold]")


def _events(ax: Any, doc: Mapping[str, Any]) -> None:
    colours = {"killed": "tab:red", "restarted": "tab:orange", "ready": "tab:green"}
    for t, what in doc["faults"]["events"]:
        if what in colours:
            ax.axvline(t, color=colours[what], linewidth=1.0, linestyle="--", label=what)


def _rss(ax: Any, doc: Mapping[str, Any]) -> None:
    samples = doc["rss"]["samples"]
    for pid in dict.fromkeys(s[1] for s in samples):
        mine = [s for s in samples if s[1] == pid]
        ax.plot([s[0] for s in mine], [s[2] / _MIB for s in mine], label=f"gateway pid {pid}")
    plateau = doc["rss"]["plateau"]
    start, end = plateau["window_s"]
    third = (end - start) / 3.0
    ax.axvspan(start + third, start + 2 * third, color="tab:blue", alpha=0.08, label="middle third")
    ax.axvspan(start + 2 * third, end, color="tab:purple", alpha=0.12, label="last third")
    _events(ax, doc)
    growth = plateau.get("growth_mib")
    ax.set_title(
        "gateway RSS"
        + (f": last third {growth:+.2f} MiB over the middle" if growth is not None else ""),
        fontsize=10,
    )
    ax.set_ylabel("RSS (MiB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def _latency(ax: Any, doc: Mapping[str, Any]) -> None:
    timeline = doc["run"]["timeline"]["points"]
    offset = doc["faults"]["running_at_s"] or 0.0
    if timeline:
        t = [p[0] + offset for p in timeline]
        for column, label in ((2, "p50"), (3, "p99")):
            ax.plot(t, [max(p[column], 0.01) for p in timeline], label=label, linewidth=1.1)
        ax.set_yscale("log")
    _events(ax, doc)
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("latency (ms)")
    ax.set_title("delivery latency from the intended send time", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def plot_soak(doc: Mapping[str, Any], path: Path) -> Path:
    """Draw RSS over time (plateau thirds shaded, kill and restart marked) above latency over
    time into ``path`` (PNG). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), sharex=True, constrained_layout=True)
    _rss(top, doc)
    _latency(bottom, doc)
    fig.suptitle("skein soak: kill -9 and restart, lossy paths, slow consumers", fontsize=12)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
