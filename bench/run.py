"""`make bench`: run the benchmark suites, print a table, write bench/results.json.

Speed is measured here and only here (never in unit tests). The gateway runs in its own process
where a suite needs it; figures are medians of several runs, on a shared and noisy machine, so
quote ratios from one run rather than absolute numbers from different days.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import capacity, connections, fanout, growth, handoff, lossy, peer, sequencing
from bench.common import Figure, machine_info
from bench.gateway import BENCH_GATEWAY, RunningGateway, gateway_process
from bench.natsd import MissingPeer

__all__ = ["BENCH_GATEWAY", "GATEWAY_SUITES", "SUITES", "main"]

SUITES: dict[str, Callable[[bool], list[Figure]]] = {
    "sequencing": sequencing.run,
    "fanout": fanout.run,
    "capacity": capacity.run,
    "growth": growth.run,
    "connections": connections.run,
    "peer": peer.run,
}
GATEWAY_SUITES: dict[str, Callable[[RunningGateway, bool], list[Figure]]] = {
    "handoff": handoff.run,
    "lossy": lossy.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: checks the suite works, not how fast it is",
    )
    parser.add_argument(
        "--only", nargs="*", choices=[*SUITES, *GATEWAY_SUITES], help="run only these suites"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    args = parser.parse_args(argv)
    wanted = set(args.only or [*SUITES, *GATEWAY_SUITES])
    console = Console()
    if "peer" in wanted:
        try:
            peer.require()  # at once, not after the other suites' minutes
        except MissingPeer as exc:
            console.print(f"[bold red]bench: {exc}[/]")
            return 2
    figures: list[Figure] = []
    seconds: dict[str, float] = {}  # each suite's wall time, so its budget is visible
    started = time.time()
    for name, suite in SUITES.items():
        if name in wanted:
            began = time.monotonic()
            with console.status(f"running {name} ..."):
                figures += suite(args.quick)
            seconds[name] = round(time.monotonic() - began, 1)
    for name, gateway_suite in GATEWAY_SUITES.items():
        if name in wanted:
            began = time.monotonic()
            with (
                console.status(f"running {name} (gateway in its own process) ..."),
                gateway_process(BENCH_GATEWAY) as gw,
            ):
                figures += gateway_suite(gw, args.quick)
            seconds[name] = round(time.monotonic() - began, 1)
    table = Table("suite", "figure", "value", "unit", "how", title="Skein benchmarks")
    for fig in figures:
        table.add_row(fig.suite, fig.name, f"{fig.value:,.1f}", fig.unit, fig.note)
    console.print(table)
    console.print("wall time: " + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()))
    result = {
        "machine": machine_info(),
        "quick": args.quick,
        "started": started,
        "suite_seconds": seconds,
        "figures": [asdict(fig) for fig in figures],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    plotted = growth.plot(figures, args.out.with_name("growth.png"))
    if plotted is not None:
        console.print(f"wrote {plotted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
