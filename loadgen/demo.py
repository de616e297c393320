"""``make demo``: a gateway on the embedded default, a load run across network handoffs, a report.

Makes the development certificates if needed, starts ``python -m gateway.cli serve`` on
127.0.0.1:4433 (or a free port if that one is taken; its log goes to ``results/demo-gateway.log``)
with authentication on, as deployed: a random HS256 secret is made for the run
(``results/demo-jwt-secret``) and configured in the gateway's ``[auth]``, and each simulated client
presents its own token minted with it. It waits until the admin ``/readyz`` answers, runs the
``demo`` scenario twice (handoffs recovered by QUIC migration, then by full reconnect) and prints
the report with where the JSON and the PNG are. The gateway is always stopped at the end
(SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from rich.console import Console

from loadgen.auth import TokenSource
from loadgen.cli import DEFAULT_OUT, execute
from loadgen.gatewayproc import GatewayProcess, start_gateway
from loadgen.runner import LoadgenError, RunOptions
from loadgen.scenario import load_scenario

__all__ = ["GatewayProcess", "main", "start_gateway"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadgen.demo",
        description=(
            "Start a gateway (token auth on, a random secret per run), run the demo scenario "
            "across network handoffs (QUIC migration vs "
            "full reconnect), print the report and where the plot is, and stop the gateway."
        ),
    )
    parser.add_argument("--scenario", default="demo", help="scenario name or path (demo)")
    parser.add_argument("--plain", action="store_true", help="one run as the scenario says")
    parser.add_argument("--clients", type=int, metavar="N", help="override the client count")
    parser.add_argument("--duration", type=float, metavar="S", help="override the duration")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    try:
        scenario = load_scenario(args.scenario, clients=args.clients, duration_s=args.duration)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    gateway = start_gateway(args.out)
    console.print(
        f"gateway starting on udp://127.0.0.1:{gateway.port} with token auth "
        f"(secret: {args.out / 'demo-jwt-secret'}; log: {gateway.log})"
    )
    try:
        gateway.wait_ready()
        assert gateway.secret is not None
        options = RunOptions(
            target_url=gateway.url,
            ca_file=gateway.ca_file,
            workers=args.workers,
            gateway_pid=gateway.process.pid,
            tokens=TokenSource(secret=gateway.secret),
        )
        outcome = asyncio.run(
            execute(
                scenario,
                options,
                compare=not args.plain,
                out_dir=args.out,
                console=console,
                live=console.is_terminal,
            )
        )
    except LoadgenError as exc:
        print(f"demo: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        status = gateway.stop()
        console.print(f"gateway stopped (exit status {status})")
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
