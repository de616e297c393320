"""CPU and memory of the gateway (and of loadgen's own workers) sampled during a run.

The gateway's figures say what the load cost it; the workers' say whether the generator itself
was the bottleneck (a worker near 100% of a core delays its publishes, which the publish-lag
histogram then shows). Sampling uses psutil on local process ids; a process that exits or cannot
be read is simply no longer sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_SAMPLES", "Sample", "Sampler", "find_udp_listener"]

MAX_SAMPLES = 100_000  # past this many samples (28 h at 1 s) sampling stops

# psutil ships no type information; imported by name so mypy sees it as Any either way.
_psutil: Any = importlib.import_module("psutil")


@dataclass(frozen=True, slots=True)
class Sample:
    """At ``t_s`` seconds into the run: the gateway's CPU (% of one core, None if not sampled)
    and resident memory, and the sum of the workers' CPU."""

    t_s: float
    gateway_cpu_percent: float | None
    gateway_rss_bytes: int | None
    loadgen_cpu_percent: float


def find_udp_listener(port: int) -> int | None:
    """The pid of the local process bound to UDP ``port``, if the OS lets us see it."""
    try:
        for conn in _psutil.net_connections(kind="udp"):
            if conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except (_psutil.Error, OSError):
        return None  # e.g. AccessDenied on macOS without root
    return None


class Sampler:
    """Samples every ``interval_s`` from when :meth:`run` starts until it is cancelled."""

    def __init__(
        self, gateway_pid: int | None, worker_pids: Sequence[int], *, interval_s: float = 1.0
    ) -> None:
        self.samples: list[Sample] = []
        self.gateway_pid = gateway_pid
        self._interval_s = interval_s
        self._gateway = self._process(gateway_pid) if gateway_pid is not None else None
        self._workers = [p for p in map(self._process, worker_pids) if p is not None]

    @staticmethod
    def _process(pid: int) -> Any:
        try:
            process = _psutil.Process(pid)
            process.cpu_percent(None)  # the first call only sets the baseline
        except (_psutil.Error, OSError):
            return None
        return process

    def _sample(self, origin: float) -> Sample:
        cpu: float | None = None
        rss: int | None = None
        if self._gateway is not None:
            try:
                with self._gateway.oneshot():
                    cpu = float(self._gateway.cpu_percent(None))
                    rss = int(self._gateway.memory_info().rss)
            except (_psutil.Error, OSError):
                self._gateway = None
        total = 0.0
        for process in list(self._workers):
            try:
                total += float(process.cpu_percent(None))
            except (_psutil.Error, OSError):
                self._workers.remove(process)
        return Sample(round(time.monotonic() - origin, 3), cpu, rss, round(total, 1))

    async def run(self) -> None:
        origin = time.monotonic()
        with contextlib.suppress(asyncio.CancelledError):
            while len(self.samples) < MAX_SAMPLES:
                await asyncio.sleep(self._interval_s)
                self.samples.append(self._sample(origin))

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None
