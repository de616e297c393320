"""Run the gateway in its own process for a benchmark, and read its CPU time and its metrics.

The gateway's output is drained by a thread for as long as it runs (its last lines are kept for
error messages): a gateway that logs more than a pipe holds would otherwise block on its own
stdout in the middle of a measurement.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.clientproc import supervised
from bench.common import udp_drops
from gateway.server.certs import CertPaths, ensure_dev_certs

__all__ = [
    "BENCH_GATEWAY",
    "RunningGateway",
    "bench_config",
    "free_tcp_port",
    "free_udp_port",
    "gateway_process",
]

# Benchmarks are synthetic publishers, far faster than a person, and open sessions by the
# thousand from one address: lift per-user and per-address limits; they measure the network
# path, not auth, and keep nothing.
BENCH_GATEWAY = """
[core.limits]
max_connections = 100000
max_connections_per_address = 100000
publish_rate_per_connection_per_s = 100000.0
publish_burst_per_connection = 100000.0
join_rate_per_connection_per_s = 100000.0
join_burst_per_connection = 100000.0
room_create_rate_per_principal_per_s = 100000.0
room_create_burst_per_principal = 100000.0
handshake_rate_per_s = 100000.0
handshake_burst = 100000.0
[store]
kind = "memory"
[auth]
mode = "insecure-dev"
"""

_KEPT_LINES = 50


def bench_config(*, core: str = "", server: str = "") -> str:
    """:data:`BENCH_GATEWAY` with extra ``key = value`` lines for its ``[core]`` and ``[server]``
    tables (TOML allows each table once, so overrides go through here)."""
    return f"[server]\n{server}\n[core]\n{core}\n{BENCH_GATEWAY}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(slots=True)
class RunningGateway:
    process: subprocess.Popen[str]
    port: int
    certs: CertPaths
    engine: str = "aioquic"
    admin_port: int = -1
    output: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_KEPT_LINES)
    )
    errors_logged: int = 0  # lines the gateway logged at level error (or tracebacks)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1/chat"

    @property
    def ca_file(self) -> str:
        """The CA file clients verify the gateway's certificate with."""
        return str(self.certs.ca_cert)

    def cpu_seconds(self) -> float:
        """User + system CPU the gateway process has used so far."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def cpu_wait_seconds(self) -> float:
        """How long the gateway's event loop thread has been runnable but waiting for a core
        (Linux schedstat; 0 elsewhere): time the machine, not the gateway, held it back."""
        try:
            with open(f"/proc/{self.process.pid}/schedstat") as fh:
                return int(fh.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def metrics(self) -> dict[str, float]:
        """The gateway's Prometheus samples by sample name, summed over labels (needs the
        gateway started with ``admin=True``). Blocks for one local HTTP request."""
        if self.admin_port < 0:
            raise RuntimeError("start the gateway with gateway_process(admin=True) for metrics")
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        totals: dict[str, float] = collections.defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] += float(sample.value)
        return dict(totals)

    def udp_drops(self) -> int:
        """Datagrams the kernel dropped at the gateway's socket since it opened (its receive
        buffer was full: the gateway fell behind reading)."""
        return udp_drops({self.port})

    def last_output(self) -> str:
        """The gateway's last lines of output, for an error message."""
        return "".join(self.output)


def _is_error(line: str) -> bool:
    return '"level":"error"' in line or line.startswith("Traceback")


def _command(port: int, config: Path, certs: CertPaths, engine: str, admin_port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--quic-engine",
        engine,
        "--port",
        str(port),
        "--config",
        str(config),
        "--admin-port",
        str(admin_port),
        "--log-level",
        "warning",
        "--cert",
        str(certs.cert),
        "--key",
        str(certs.key),
    ]


@contextlib.contextmanager
def gateway_process(
    config_toml: str = "",
    *,
    port: int | None = None,
    certs: CertPaths | None = None,
    timeout_s: float = 30.0,
    engine: str | None = None,
    admin: bool = False,
    code_dir: str | None = None,
) -> Iterator[RunningGateway]:
    """Start ``skein serve`` with ``config_toml`` on ``port`` (a free one by default) with
    ``certs`` (the development ones by default) and the QUIC ``engine`` (``aioquic`` or
    ``qh3``; by default this process's, from ``SKEIN_QUIC_ENGINE``); with ``admin`` its admin port serves ``/metrics`` (read with
    :meth:`RunningGateway.metrics`); with ``code_dir`` the gateway's code is that tree's (it runs
    there: ``python -m`` puts the working directory first on its path). Stops it on exit. Used by the benchmarks and by tests that
    need a gateway in its own process (to kill it, say)."""
    certs = certs or ensure_dev_certs(Path("certs").resolve())
    engine = engine or os.environ.get("SKEIN_QUIC_ENGINE") or "aioquic"
    port = port or free_udp_port()
    admin_port = free_tcp_port() if admin else -1
    config = Path(f"/tmp/skein-bench-{os.getpid()}-{port}.toml")
    config.write_text(config_toml)
    proc = subprocess.Popen(
        _command(port, config, certs, engine, admin_port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=code_dir,
    )
    gw = RunningGateway(proc, port, certs, engine, admin_port)
    try:
        with supervised(proc, gw, "serving HTTP/3", "the gateway", timeout_s, _is_error):
            yield gw
    finally:
        config.unlink(missing_ok=True)
