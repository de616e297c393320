"""What every benchmark shares: machine facts, medians, percentiles, UDP drops, a result record."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from gateway.server.udp import kernel_drops

__all__ = ["Figure", "machine_info", "median", "percentile", "udp_drops"]


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number, with its unit and how it was obtained."""

    suite: str
    name: str
    value: float
    unit: str
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "commit": commit,
    }


def udp_drops(ports: Collection[int]) -> int:
    """Datagrams the kernel dropped at the local UDP sockets bound to ``ports`` since each
    opened (see :func:`gateway.server.udp.kernel_drops`)."""
    return kernel_drops(ports)
