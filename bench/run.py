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

from bench import connections, fanout, handoff, sequencing
from bench.common import Figure, machine_info
from bench.gateway import RunningGateway, gateway_process

# Benchmarks are synthetic publishers, far faster than a person: lift per-user rate limits;
# they measure the network path, not auth, and keep nothing.
BENCH_GATEWAY = """
[core.limits]
max_connections_per_address = 100000
publish_rate_per_connection_per_s = 100000.0
publish_burst_per_connection = 100000.0
[store]
kind = "memory"
[auth]
mode = "insecure-dev"
"""

SUITES: dict[str, Callable[[bool], list[Figure]]] = {
    "sequencing": sequencing.run,
    "fanout": fanout.run,
    "connections": connections.run,
}
GATEWAY_SUITES: dict[str, Callable[[RunningGateway, bool], list[Figure]]] = {
    "handoff": handoff.run,
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
    figures: list[Figure] = []
    started = time.time()
    for name, suite in SUITES.items():
        if name in wanted:
            with console.status(f"running {name} ..."):
                figures += suite(args.quick)
    for name, gateway_suite in GATEWAY_SUITES.items():
        if name in wanted:
            with (
                console.status(f"running {name} (gateway in its own process) ..."),
                gateway_process(BENCH_GATEWAY) as gw,
            ):
                figures += gateway_suite(gw, args.quick)
    table = Table("suite", "figure", "value", "unit", "how", title="Skein benchmarks")
    for fig in figures:
        table.add_row(fig.suite, fig.name, f"{fig.value:,.1f}", fig.unit, fig.note)
    console.print(table)
    result = {
        "machine": machine_info(),
        "quick": args.quick,
        "started": started,
        "figures": [asdict(fig) for fig in figures],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
