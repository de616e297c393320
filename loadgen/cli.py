"""``skein loadgen``: run a load scenario against a gateway and report on it.

``main(argv)`` parses the command line; :func:`execute` (shared with :mod:`loadgen.demo`) runs one
scenario, or two in comparison mode, and writes the results file, the plot and the report.
Exit status: 0 when every check passed, 1 when the run failed or a check did not pass (reliable
loss, order violations, duplicates, clients that could not connect), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console

from loadgen.auth import TokenSource, read_secret_file
from loadgen.context import DEFAULT_RELIABLE_ROOMS
from loadgen.runner import DEFAULT_TARGET, LoadgenError, RunOptions, RunResult, run_load
from loadgen.scenario import Scenario, list_scenarios, load_scenario
from loadgen.schedule import HANDOFF_MODES, HandoffMode

__all__ = ["DEFAULT_CA", "DEFAULT_OUT", "Outcome", "execute", "main"]

DEFAULT_CA = Path("certs/ca.pem")
DEFAULT_OUT = Path("results")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished run left behind: the results document and where its files are."""

    doc: dict[str, Any]
    json_path: Path
    plot_path: Path | None

    @property
    def passed(self) -> bool:
        return bool(self.doc["passed"])


async def _one(scenario: Scenario, options: RunOptions, console: Console, live: bool) -> RunResult:
    title = (
        f"skein loadgen: {scenario.name} ({options.label}), {scenario.clients} clients, "
        f"{scenario.duration_s:g} s, {min(options.workers, scenario.clients)} workers"
    )
    if not live:
        console.print(title)
        return await run_load(scenario, options)
    from loadgen.progress import LiveView

    with LiveView(
        console, title=title, clients=scenario.clients, duration_s=scenario.duration_s
    ) as view:
        return await run_load(scenario, options, on_progress=view.update)


async def execute(
    scenario: Scenario,
    options: RunOptions,
    *,
    compare: bool = False,
    out_dir: Path = DEFAULT_OUT,
    console: Console | None = None,
    live: bool = False,
) -> Outcome:
    """Run ``scenario`` (in comparison mode: once with every handoff recovered by migration, once
    by full reconnect), then write ``<out_dir>/<name>-<time>.json`` and ``.png`` and print the
    report. Raises :class:`~loadgen.runner.LoadgenError` if a run could not be carried out."""
    from loadgen.plot import plot_runs
    from loadgen.report import render, write_json
    from loadgen.results import build_document

    console = console or Console()
    runs: list[tuple[str, HandoffMode]] = (
        [("migrate", "migrate"), ("reconnect", "reconnect")]
        if compare
        else [(options.label or options.mode, options.mode)]
    )
    results = []
    for label, mode in runs:
        one = replace(options, mode=mode, label=label)
        results.append(await _one(scenario, one, console, live))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"{scenario.name}-{stamp}"
    plot_path: Path | None = base.with_suffix(".png")
    try:
        assert plot_path is not None
        plot_runs(
            results,
            plot_path,
            title=f"skein loadgen: {scenario.name}, {scenario.clients} clients",
            window_s=scenario.handoffs.window_s,
        )
    except Exception as exc:  # the numbers matter more than the picture: keep them
        console.print(f"[yellow]could not draw the plot: {exc!r}[/yellow]")
        plot_path = None
    doc = build_document(
        scenario,
        [r.summary for r in results],
        target=options.target_url,
        plot=str(plot_path) if plot_path else None,
    )
    json_path = base.with_suffix(".json")
    write_json(json_path, doc)
    render(console, doc)
    console.print(f"results: {json_path}")
    if plot_path is not None:
        console.print(f"plot:    {plot_path}")
    return Outcome(doc, json_path, plot_path)


def _parser() -> argparse.ArgumentParser:
    shipped = ", ".join(list_scenarios())
    parser = argparse.ArgumentParser(
        prog="skein loadgen",
        description=(
            "Run mobile-like chat clients against a Skein gateway through network handoffs "
            "and report latency (p50/p90/p99/p99.9/max, steady vs right after a handoff), loss, "
            "duplicates, causal-order violations, migrations and reconnects, and the gateway's "
            "CPU and memory. Writes a JSON results file and a PNG plot."
        ),
        epilog=(
            f"Shipped scenarios: {shipped}. The TOML format is described in "
            "loadgen/scenarios/README.md. Example: skein loadgen commute --clients 500 --compare"
        ),
    )
    parser.add_argument("scenario", nargs="?", help="a shipped scenario name or a .toml path")
    parser.add_argument("--list", action="store_true", help="list the shipped scenarios and exit")
    parser.add_argument("--target", default=DEFAULT_TARGET, help=f"gateway URL ({DEFAULT_TARGET})")
    parser.add_argument("--ca", type=Path, help=f"CA to verify the gateway (default {DEFAULT_CA})")
    parser.add_argument("--insecure", action="store_true", help="skip certificate verification")
    parser.add_argument("--duration", type=float, metavar="S", help="publishing time, seconds")
    parser.add_argument("--clients", type=int, metavar="N", help="number of clients")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: the number of cores)",
    )
    parser.add_argument("--seed", type=int, help="random seed (same seed, same schedules)")
    parser.add_argument(
        "--mode",
        choices=HANDOFF_MODES,
        default="scenario",
        help="how handoffs recover: as the scenario says, all by migration, all by reconnect",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run twice, handoffs as migrations then as full reconnects, and report side by side",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any scenario field, e.g. --set handoffs.mean_interval_s=2 (TOML values)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument(
        "--gateway-pid",
        type=int,
        help="sample this process's CPU and RSS (default: whoever holds the target's UDP port)",
    )
    parser.add_argument("--no-live", action="store_true", help="no live progress display")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-secret-file",
        type=Path,
        metavar="FILE",
        help="the gateway's HS256 secret ([auth] hs256_secrets, or certs/dev-jwt-secret for a "
        "gateway on the defaults): each client gets its own token, sub = its name, join and "
        "publish for the run's rooms (without this or --token, clients send no token: start "
        "the gateway with --insecure-dev)",
    )
    tokens.add_argument(
        "--token",
        metavar="JWT",
        help="one token for every client (its join and publish patterns must cover the "
        "scenario's rooms, e.g. 'demo-*'; all clients then publish under its sub)",
    )
    parser.add_argument(
        "--group-rooms",
        default=",".join(DEFAULT_RELIABLE_ROOMS),
        metavar="PATTERNS",
        help="the gateway's core.group_rooms: every message there is reliable and checked by "
        "identity, like high-priority ones (default %(default)s)",
    )
    return parser


def _tokens(args: argparse.Namespace, scenario: Scenario) -> TokenSource | None:
    """The token source the flags ask for. Raises ValueError (OSError for an unreadable file)."""
    ttl_s = max(3600.0, 4 * (scenario.duration_s + scenario.drain_s))
    if args.token_secret_file is not None:
        return TokenSource(secret=read_secret_file(args.token_secret_file), ttl_s=ttl_s)
    if args.token is not None:
        return TokenSource(token=args.token)
    return None


def _gateway_pid(args: argparse.Namespace, console: Console) -> int | None:
    if args.gateway_pid is not None:
        return int(args.gateway_pid)
    parts = urlsplit(args.target)
    try:
        local = ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        local = parts.hostname == "localhost"
    if not local:
        return None
    from loadgen.sampler import find_udp_listener

    pid = find_udp_listener(parts.port or 443)
    if pid is None:
        console.print("[dim]gateway process not found: pass --gateway-pid to sample it[/dim]")
    return pid


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    if args.list or not args.scenario:
        for name in list_scenarios():
            description = load_scenario(name).description
            console.print(f"[bold]{name}[/bold]: {description}")
        return 0 if args.list else 2
    try:
        scenario = load_scenario(
            args.scenario,
            settings=args.set,
            clients=args.clients,
            duration_s=args.duration,
            seed=args.seed,
        )
        ca = args.ca or (DEFAULT_CA if DEFAULT_CA.exists() else None)
        options = RunOptions(
            target_url=args.target,
            ca_file=None if args.insecure else ca,
            verify=not args.insecure,
            workers=args.workers,
            mode=args.mode,
            gateway_pid=_gateway_pid(args, console),
            tokens=_tokens(args, scenario),
            reliable_rooms=tuple(p.strip() for p in args.group_rooms.split(",") if p.strip()),
        )
    except (ValueError, OSError) as exc:
        print(f"skein loadgen: {exc}", file=sys.stderr)
        return 2
    live = not args.no_live and console.is_terminal
    try:
        outcome = asyncio.run(
            execute(
                scenario,
                options,
                compare=args.compare,
                out_dir=args.out,
                console=console,
                live=live,
            )
        )
    except LoadgenError as exc:
        print(f"skein loadgen: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
