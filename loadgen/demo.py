"""``make demo``: a gateway on the embedded default, a load run across network handoffs, a report.

Makes the development certificates if needed, starts ``python -m gateway.cli serve`` on
127.0.0.1:4433 (or a free port if that one is taken; its log goes to ``results/demo-gateway.log``),
waits until its admin ``/readyz`` answers, runs the ``demo`` scenario twice (handoffs recovered by
QUIC migration, then by full reconnect) and prints the report with where the JSON and the PNG are.
The gateway is always stopped at the end (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console

from gateway.server.certs import ensure_dev_certs
from loadgen.cli import DEFAULT_OUT, execute
from loadgen.runner import LoadgenError, RunOptions
from loadgen.scenario import load_scenario

__all__ = ["GatewayProcess", "main", "start_gateway"]

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0


def _free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(kind: int, preferred: int) -> int:
    """``preferred`` if it is free, else (or if 0) a port the OS says is free now."""
    if preferred and _free(kind, preferred):
        return preferred
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class GatewayProcess:
    """A ``skein serve`` subprocess. :meth:`stop` ends it; safe to call twice."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, admin_port: int, log: Path):
        self.process = process
        self.port = port
        self.admin_port = admin_port
        self.log = log

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1/chat"

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``/readyz`` until it answers 200. Raises LoadgenError with the log's tail if the
        process exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LoadgenError(
                    f"the gateway exited with status {self.process.returncode}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise LoadgenError(
            f"the gateway did not become ready within {timeout_s:.0f} s ({url}):\n"
            + self._log_tail()
        )

    def stop(self) -> int | None:
        """SIGTERM, wait up to :data:`STOP_GRACE_S`, then SIGKILL. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)
        return self.process.returncode


def start_gateway(
    out_dir: Path,
    *,
    port: int = 4433,
    admin_port: int = 9433,
    certs_dir: Path = Path("certs"),
) -> GatewayProcess:
    """Start a gateway on 127.0.0.1 (``port``, or a free one if taken or 0) with the development
    certificates in ``certs_dir`` (made if missing or near expiry).

    Writes its config and log to ``out_dir``. The caller must :meth:`~GatewayProcess.stop` it.
    """
    certs = ensure_dev_certs(certs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quic_port = _pick_port(socket.SOCK_DGRAM, port)
    admin = _pick_port(socket.SOCK_STREAM, admin_port)
    config = out_dir / "demo-gateway.toml"
    (out_dir / "demo-store.db").unlink(missing_ok=True)  # every demo starts from empty rooms
    # json.dumps writes a valid TOML basic string for any path.
    config.write_text(
        "[server]\n"
        'host = "127.0.0.1"\n'
        f"port = {quic_port}\n"
        f"admin_port = {admin}\n"
        f"certificate_file = {json.dumps(str(certs.cert))}\n"
        f"private_key_file = {json.dumps(str(certs.key))}\n"
        # The demo measures the network path, not auth: loadgen's clients carry no tokens.
        '[auth]\nmode = "insecure-dev"\n'
        # Every simulated phone connects from 127.0.0.1: lift the per-address cap.
        "[core.limits]\nmax_connections_per_address = 100000\n"
        f'[store]\nkind = "sqlite"\npath = {json.dumps(str(out_dir / "demo-store.db"))}\n',
        encoding="utf-8",
    )
    log = out_dir / "demo-gateway.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return GatewayProcess(process, quic_port, admin, log)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadgen.demo",
        description=(
            "Start a gateway, run the demo scenario across network handoffs (QUIC migration vs "
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
    console.print(f"gateway starting on udp://127.0.0.1:{gateway.port} (log: {gateway.log})")
    try:
        gateway.wait_ready()
        options = RunOptions(
            target_url=gateway.url,
            ca_file=Path("certs/ca.pem"),
            workers=args.workers,
            gateway_pid=gateway.process.pid,
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
