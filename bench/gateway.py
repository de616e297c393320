"""Run the gateway in its own process for a benchmark, and read its CPU time from /proc."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from gateway.server.certs import CertPaths, ensure_dev_certs

__all__ = ["RunningGateway", "free_udp_port", "gateway_process"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(slots=True)
class RunningGateway:
    process: subprocess.Popen[str]
    port: int
    certs: CertPaths

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1/chat"

    def cpu_seconds(self) -> float:
        """User + system CPU the gateway process has used so far."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)


@contextlib.contextmanager
def gateway_process(
    config_toml: str = "",
    *,
    port: int | None = None,
    certs: CertPaths | None = None,
    timeout_s: float = 30.0,
) -> Iterator[RunningGateway]:
    """Start ``skein serve`` with ``config_toml`` on ``port`` (a free one by default) with
    ``certs`` (the development ones by default); stop it on exit. Used by the benchmarks and by
    tests that need a gateway in its own process (to kill it, say)."""
    certs = certs or ensure_dev_certs(Path("certs"))
    port = port or free_udp_port()
    config = Path(f"/tmp/skein-bench-{os.getpid()}-{port}.toml")
    config.write_text(config_toml)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--config",
            str(config),
            "--admin-port",
            "-1",
            "--log-level",
            "warning",
            "--cert",
            str(certs.cert),
            "--key",
            str(certs.key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "serving HTTP/3" in line:
                break
            if not line and proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode}")
        else:
            raise RuntimeError("the gateway did not start in time")
        yield RunningGateway(proc, port, certs)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        config.unlink(missing_ok=True)
