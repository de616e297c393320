"""Connections: how fast the gateway takes handshakes, and what an idle connection costs it.

Clients run in a subprocess (sharing the 2 cores with the gateway); the figures that matter are
the gateway's: its CPU time per handshake and its resident memory per idle session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from bench.common import Figure
from bench.gateway import RunningGateway, gateway_process

CLIENTS = textwrap.dedent("""
    import asyncio, sys, time
    from gateway.sdk.client import connect
    url, ca, count, parallel, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "hold"
    async def main():
        gate = asyncio.Semaphore(parallel)
        stack, opened = [], 0
        async def one(i):
            nonlocal opened
            async with gate:
                cm = connect(url, name=f"c{i}", ca_file=ca, keepalive_s=20.0, idle_timeout_s=60.0)
                client = await cm.__aenter__()
                opened += 1
                if hold:
                    stack.append(cm)
                else:
                    await cm.__aexit__(None, None, None)
        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        print(f"done {opened} {time.monotonic() - start:.3f}", flush=True)
        if hold:
            sys.stdin.readline()  # held open until the bench has measured (then killed)
    asyncio.run(main())
""")

CONFIG = """
[server]
idle_timeout_s = 60.0
[core.limits]
max_connections = 100000
max_connections_per_address = 100000
handshake_burst = 100000.0
[store]
kind = "memory"
[auth]
mode = "insecure-dev"
"""


def _clients(gw: RunningGateway, count: int, parallel: int, hold: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLIENTS,
            gw.url,
            str(gw.certs.ca_cert),
            str(count),
            str(parallel),
            "hold" if hold else "once",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _finished(proc: subprocess.Popen[str]) -> tuple[int, float]:
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "done":
        raise RuntimeError(f"the client process failed: {line}")
    return int(line[1]), float(line[2])


def handshakes(quick: bool) -> list[Figure]:
    count = 100 if quick else 1000
    with gateway_process(CONFIG) as gw:
        cpu0 = gw.cpu_seconds()
        proc = _clients(gw, count, 16, hold=False)
        opened, seconds = _finished(proc)
        proc.wait(60)
        cpu = gw.cpu_seconds() - cpu0
    return [
        Figure(
            "connections",
            "sessions opened per second (handshake + WebTransport + Hello)",
            opened / seconds,
            "1/s",
            f"{opened} sessions, 16 at a time, from one client process sharing the 2 cores",
        ),
        Figure(
            "connections",
            "gateway CPU per session opened",
            cpu / max(1, opened) * 1000,
            "ms",
            "full TLS 1.3 handshake (no resumption), CONNECT, Hello/Welcome, close",
        ),
    ]


def idle_memory(quick: bool) -> list[Figure]:
    figures = []
    for count in (200,) if quick else (1000, 5000, 10000):
        with gateway_process(CONFIG) as gw:
            time.sleep(0.5)
            before = gw.rss_bytes()
            proc = _clients(gw, count, 64, hold=True)
            opened, _ = _finished(proc)
            time.sleep(1.0)
            after = gw.rss_bytes()
            proc.kill()  # measured: closing thousands of sessions one by one only costs time
            proc.wait(30)
        figures.append(
            Figure(
                "connections",
                f"gateway memory per idle session, {count:,} sessions",
                (after - before) / max(1, opened) / 1024,
                "KiB",
                f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB with {opened:,} idle sessions",
            )
        )
    return figures


def run(quick: bool) -> list[Figure]:
    return handshakes(quick) + idle_memory(quick)
