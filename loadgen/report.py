"""The terminal report (rich tables) and the JSON results file, from a results document.

The document is what :func:`loadgen.results.build_document` makes; everything here only reads it,
so a saved results file can be rendered again. With several runs (comparison mode) the detail table
puts them side by side, one column per run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loadgen.scenario import HANDOFF_KINDS, PRIORITIES

__all__ = ["headline", "render", "target_text", "write_json"]

MAX_ERRORS_SHOWN = 5  # per run; the JSON has up to 10 per worker
_PERCENTILES = (("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms"))


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def _latency_table(run: Mapping[str, Any], scenario_name: str) -> Table:
    window = run["handoff_window_s"]
    table = Table(
        title=escape(f"{scenario_name} ({run['label']}): latency (ms) from the intended send time"),
        title_justify="left",
    )
    table.add_column("")
    for name in ("count", *(p for p, _ in _PERCENTILES), "max"):
        table.add_column(name, justify="right")
    latency = run["latency_ms"]
    rows = [("steady", latency["steady"]), (f"<= {window:g} s after a handoff", latency["handoff"])]
    # Older results files have no per-kind split.
    rows += [(f"  of which {kind}", s) for kind, s in latency.get("handoff_by_kind", {}).items()]
    if latency.get("handoff_mixed", {}).get("count"):
        rows.append(("  of which two kinds at once", latency["handoff_mixed"]))
    rows.append(("all", latency["all"]))
    for title, s in rows:
        table.add_row(
            title, f"{s['count']:,}", *(_ms(s[k]) for _, k in _PERCENTILES), _ms(s["max_ms"])
        )
    gap = run["handoff_gap_ms"]["all"]
    table.add_row(
        "delivery gap per handoff",
        f"{gap['count']:,}",
        *(_ms(gap[k]) for _, k in _PERCENTILES),
        _ms(gap["max_ms"]),
        style="dim",
    )
    return table


_Getter = Callable[[Mapping[str, Any]], str]


def _g(*path: str, fmt: Callable[[Any], str] = str) -> _Getter:
    def get(run: Mapping[str, Any]) -> str:
        node: Any = run
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        return "n/a" if node is None else fmt(node)

    return get


def _ok_failed(*path: str) -> _Getter:
    return _g(*path, fmt=lambda v: f"{v['ok']} ok / {v['failed']} failed")


def _count(value: Any) -> str:
    return f"{sum(value.values()):,}" if isinstance(value, Mapping) else f"{value:,}"


def _slash(*paths: tuple[str, ...]) -> _Getter:
    """Counts at ``paths`` joined by " / " (a mapping counts as the sum of its values); "n/a"
    for one missing (a results file written before the field existed)."""
    getters = [_g(*path, fmt=_count) for path in paths]
    return lambda run: " / ".join(get(run) for get in getters)


def _pair(first: _Getter, second: _Getter) -> _Getter:
    return lambda run: f"{first(run)} / {second(run)}"


def _priority_row(priority: str) -> tuple[str, _Getter]:
    def get(run: Mapping[str, Any]) -> str:
        d = run["delivery"]
        return (
            f"{d['published'][priority]:,} / {d['expected'][priority]:,} / {d['loss'][priority]:,}"
        )

    return f"{priority}: published / expected / lost", get


def _kind_row(kind: str) -> tuple[str, _Getter]:
    def get(run: Mapping[str, Any]) -> str:
        k = run["handoffs"]["by_kind"][kind]
        return f"{k['count']} ({k['ok']} ok, {k['failed']} failed)"

    return kind, get


def _by_kind_row(kind: str) -> tuple[str, _Getter]:
    """p50 / p99 / p99.9 within the windows of ``kind``'s handoffs."""

    def get(run: Mapping[str, Any]) -> str:
        s = run["latency_ms"].get("handoff_by_kind", {}).get(kind)
        if not s or not s["count"]:
            return "n/a"
        return " / ".join(_ms(s[k]) for k in ("p50_ms", "p99_ms", "p999_ms"))

    return f"  after {kind}: p50 / p99 / p99.9 (ms)", get


def target_text(target: Mapping[str, Any] | None) -> str:
    """The migration target of one run in words: the figures, then PASS, FAIL or n/a (why)."""
    if not target:
        return "n/a (not in this results file)"
    if target["passed"] is None:
        return f"n/a ({target['note']})"
    verdict = "PASS" if target["passed"] else "FAIL"
    op = "<=" if target["passed"] else ">"
    return (
        f"{_ms(target['p99_ms'])} {op} {_ms(target['steady_p99_ms'])} + "
        f"{_ms(target['path_rtt_ms'])} ({target['path']} RTT) = {_ms(target['limit_ms'])} ms: "
        f"{verdict}"
    )


_SECTIONS: list[tuple[str, list[tuple[str, _Getter]]]] = [
    (
        "headline",
        [
            ("p99 within the handoff window (ms)", _g("latency_ms", "handoff", "p99_ms", fmt=_ms)),
            ("p99.9 within the window (ms)", _g("latency_ms", "handoff", "p999_ms", fmt=_ms)),
            *(_by_kind_row(k) for k in HANDOFF_KINDS),
            ("p99 steady (ms)", _g("latency_ms", "steady", "p99_ms", fmt=_ms)),
            (
                "migration p99 <= steady p99 + path RTT",
                lambda run: target_text(run.get("migration_target")),
            ),
            (
                "delivery gap per handoff p50 / p99 (ms)",
                _pair(
                    _g("handoff_gap_ms", "all", "p50_ms", fmt=_ms),
                    _g("handoff_gap_ms", "all", "p99_ms", fmt=_ms),
                ),
            ),
            ("steady inter-arrival p50 (ms)", _g("steady_interarrival_ms", "p50_ms", fmt=_ms)),
        ],
    ),
    (
        "delivery",
        [
            *(_priority_row(p) for p in PRIORITIES),
            (
                "reliable: expected / received / lost (by identity)",
                _slash(*(("delivery", "reliable", k) for k in ("expected", "received", "lost"))),
            ),
            ("reliable loss (all clients)", _g("delivery", "reliable_loss")),
            ("shed / missed", _pair(_g("delivery", "shed"), _g("delivery", "missed"))),
            ("chatter lost on the way (datagrams)", _g("delivery", "chatter_lost")),
            ("duplicates", _g("delivery", "duplicates")),
            ("causal-order violations", _g("delivery", "order_violations")),
            (
                "publish failed / not sent",
                _pair(_g("delivery", "publish_failed"), _g("delivery", "not_sent")),
            ),
        ],
    ),
    (
        "handoffs",
        [
            *(_kind_row(k) for k in HANDOFF_KINDS),
            ("migrations", _ok_failed("handoffs", "migrations")),
            ("reconnects", _ok_failed("handoffs", "reconnects")),
            ("automatic reconnects (SDK)", _g("handoffs", "reconnects", "automatic")),
            ("no delivery before the next handoff", _g("handoff_gap_ms", "no_delivery")),
            ("not done (the run ended first)", _g("handoffs", "not_done")),
        ],
    ),
    (
        "resources",
        [
            (
                "clients connected / requested",
                _pair(_g("clients", "connected"), _g("clients", "requested")),
            ),
            (
                "gateway CPU mean / max (% of a core)",
                _pair(
                    _g("gateway", "cpu_percent", "mean", fmt=_ms),
                    _g("gateway", "cpu_percent", "max", fmt=_ms),
                ),
            ),
            ("connect retries", _g("clients", "connect_retries")),
            (
                "sessions ended by the gateway / came back / gone",
                _slash(("sessions", "ended"), ("sessions", "comebacks"), ("sessions", "gone")),
            ),
            (
                "stalls / slow-consumer cuts / recovered from history",
                _slash(
                    ("sessions", "stalls"),
                    ("sessions", "slow_consumer_cuts"),
                    ("sessions", "history_recovered"),
                ),
            ),
            ("gateway RSS max (MB)", _g("gateway", "rss_mb", "max", fmt=_ms)),
            (
                "loadgen workers CPU mean / max (%)",
                _pair(
                    _g("loadgen_cpu_percent", "mean", fmt=_ms),
                    _g("loadgen_cpu_percent", "max", fmt=_ms),
                ),
            ),
            ("publish lag p99 (ms, generator overload)", _g("publish_lag_ms", "p99_ms", fmt=_ms)),
        ],
    ),
]


def _detail_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="details", title_justify="left")
    table.add_column("")
    for run in runs:
        table.add_column(f"{run['label']} ({run['workers']} workers)", justify="right")
    for index, (section, rows) in enumerate(_SECTIONS):
        if index:
            table.add_section()
        table.add_row(f"[bold]{section}[/bold]", *("" for _ in runs))
        for title, get in rows:
            table.add_row(title, *(get(run) for run in runs))
    return table


def _run_headline(run: Mapping[str, Any]) -> str:
    latency = run["latency_ms"]
    if not latency["handoff"]["count"]:
        return f"{run['label']} n/a (no samples)"
    parts = [
        f"{kind} {_ms(s['p99_ms'])}" if s["count"] else f"{kind} n/a"
        for kind, s in latency.get("handoff_by_kind", {}).items()
    ]
    mixed = latency.get("handoff_mixed", {})
    if mixed.get("count"):
        parts.append(f"mixed {_ms(mixed['p99_ms'])}")
    kinds = ", ".join(parts)
    return f"{run['label']} {_ms(latency['handoff']['p99_ms'])} ms" + (
        f" ({kinds})" if kinds else ""
    )


def headline(doc: Mapping[str, Any]) -> str:
    """The summary line: p99 within a handoff window for each run, and per handoff kind; then
    each run's migration target that applies (:data:`loadgen.results.MIGRATION_RULE`)."""
    line = "p99 within a handoff window: " + " vs ".join(_run_headline(r) for r in doc["runs"])
    steady = ", ".join(
        f"{r['label']} {_ms(r['latency_ms']['steady']['p99_ms'])}" for r in doc["runs"]
    )
    line += f"; steady p99 {steady} ms"
    for run in doc["runs"]:
        target = run.get("migration_target")
        if target and target["passed"] is not None:
            line += f"; migration p99 ({run['label']}) {target_text(target)}"
    return line


def render(console: Console, doc: Mapping[str, Any]) -> None:
    """Print the report: latency per run, the detail table, the checks and the headline."""
    name = doc["scenario"]["name"]
    for run in doc["runs"]:
        console.print(_latency_table(run, name))
    console.print(_detail_table(doc["runs"]))
    for run in doc["runs"]:
        failed = [k for k, ok in run["checks"].items() if k != "passed" and not ok]
        verdict = "[green]PASS[/green]" if not failed else f"[red]FAIL[/red] ({', '.join(failed)})"
        console.print(f"checks ({escape(run['label'])}): {verdict}")
        for error in run["clients"]["connect_errors"]:
            console.print(f"  [yellow]connect error:[/yellow] {escape(error)}")
        for error in run["errors"][:MAX_ERRORS_SHOWN]:
            console.print(f"  [yellow]error:[/yellow] {escape(error)}")
    console.print(f"[bold]{headline(doc)}[/bold]")


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
