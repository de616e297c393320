"""Handoffs: reconnect time (full, resumed, 0-RTT) and the delivery gap across a migration vs a
full reconnect-and-resume, through an emulated mobile path (the impaired-path relay)."""

from __future__ import annotations

import asyncio
import time

from bench.common import Figure, median, percentile
from bench.gateway import RunningGateway
from gateway.sdk.client import connect
from loadgen.relay import PathProfile, UdpRelay

PATH = PathProfile(name="mobile", delay_ms=10.0)  # 20 ms RTT, no loss: the handoff is the story
RATE_HZ = 200


async def _reconnect_times(url: str, ca: str, count: int, **options: bool) -> list[float]:
    out = []
    async with connect(url, name="bench-reconnect", ca_file=ca, **options) as client:
        await client.join("bench")
        for _ in range(count):
            await asyncio.sleep(0.1)  # let the fresh session ticket arrive, as between handoffs
            start = time.perf_counter()
            await client.reconnect()
            out.append(time.perf_counter() - start)
    return out


async def _gaps(url: str, direct_url: str, ca: str, handoffs: int, kind: str) -> list[float]:
    """Publish at RATE_HZ directly; the subscriber behind the relay does `handoffs` handoffs."""
    arrivals: list[float] = []
    async with (
        connect(direct_url, name="bench-pub", ca_file=ca) as pub,
        connect(url, name=f"bench-sub-{kind}", ca_file=ca) as sub,
    ):
        await pub.join("road")
        await sub.join("road")
        stop = asyncio.Event()

        async def publish() -> None:
            i = 0
            while not stop.is_set():
                await pub.publish("road", str(i).encode())
                i += 1
                await asyncio.sleep(1 / RATE_HZ)

        async def receive() -> None:
            async for _ in sub.messages():
                arrivals.append(time.monotonic())

        tasks = [asyncio.create_task(publish()), asyncio.create_task(receive())]
        gaps = []
        await asyncio.sleep(0.5)
        for _ in range(handoffs):
            moment = time.monotonic()
            await (sub.migrate() if kind == "migrate" else sub.reconnect())
            await asyncio.sleep(0.3)
            before = [t for t in arrivals if t < moment]
            after = [t for t in arrivals if t >= moment]
            if before and after:
                gaps.append(after[0] - before[-1])
        stop.set()
        for task in tasks:
            task.cancel()
        return gaps


async def _run(gw: RunningGateway, quick: bool) -> list[Figure]:
    ca = str(gw.certs.ca_cert)
    count = 10 if quick else 50
    figures = []
    async with await UdpRelay.start(("127.0.0.1", gw.port), profile=PATH) as relay:
        url = f"https://127.0.0.1:{relay.address[1]}/v1/chat"
        for label, options in (
            ("full handshake", {"resume_tls": False}),
            ("TLS resumption", {"zero_rtt": False}),
            ("resumption + 0-RTT", {}),
        ):
            times = await _reconnect_times(url, ca, count, **options)
            figures.append(
                Figure(
                    "reconnect",
                    f"reconnect to Welcome, {label}",
                    median(times) * 1000,
                    "ms",
                    f"median of {count}; p99 {percentile(times, 99) * 1000:.1f} ms; "
                    f"path RTT {2 * PATH.delay_ms:.0f} ms",
                )
            )
        for kind in ("migrate", "reconnect"):
            gaps = await _gaps(url, gw.url, ca, count, kind)
            ms = [g * 1000 for g in gaps]
            for q in (50, 99):
                figures.append(
                    Figure(
                        "handoff",
                        f"delivery gap across a {kind}, p{q}",
                        percentile(ms, q),
                        "ms",
                        f"{len(ms)} handoffs, {RATE_HZ} msgs/s, path RTT "
                        f"{2 * PATH.delay_ms:.0f} ms (5 ms between messages)",
                    )
                )
    return figures


def run(gw: RunningGateway, quick: bool) -> list[Figure]:
    return asyncio.run(_run(gw, quick))
