"""Head-of-line blocking on a lossy path: live chatter as QUIC datagrams vs on the stream.

Subscribers sit behind the impaired-path relay (2% loss each way, 20 ms RTT); the publisher
talks to the gateway directly. One live room gets only chatter, or one normal message in five;
each subscriber asks for datagrams or not (``capabilities``), in interleaved rounds. On the
stream a lost packet holds up every message behind it until QUIC retransmits it; as datagrams
lost chatter is passed over and the rest goes on, but chatter still waits for a normal message
sequenced before it on its shard (causal order). Reports end-to-end p50/p99/p999 per mix, mode
and priority, what share of the chatter arrived, and the gateway's kernel drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass, field

from bench.common import Figure, median, percentile
from bench.gateway import RunningGateway
from gateway.sdk.client import Client, connect
from gateway.wire.frames import Priority
from loadgen.relay import PathProfile, UdpRelay

__all__ = ["MIXES", "MODES", "PATH", "run"]

PATH = PathProfile(name="lossy", delay_ms=10.0, loss=0.02)
SUBSCRIBERS = 20
RATE_HZ = 50  # messages per second into the room
MIXES = {"chatter only": 0, "1 in 5 normal": 5}  # how often a NORMAL message is among CHATTER
MODES = {"datagrams": ("lz4", "datagrams"), "stream": ("lz4",)}
_STAMP = struct.Struct("!Q")


@dataclass
class _Round:
    latencies_ms: dict[Priority, list[float]] = field(
        default_factory=lambda: {Priority.CHATTER: [], Priority.NORMAL: []}
    )
    chatter_sent: int = 0


async def _subscribe(client: Client, result: _Round, stop: asyncio.Event) -> None:
    async for event in client.messages():
        m = event.message
        if len(m.body) >= _STAMP.size and not stop.is_set():
            sent_ns = _STAMP.unpack_from(m.body)[0]
            result.latencies_ms[m.priority].append((time.monotonic_ns() - sent_ns) / 1e6)


async def _round(
    gw: RunningGateway, relay_url: str, mode: str, normal_every: int, window_s: float
) -> _Round:
    result = _Round()
    ca = gw.ca_file
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        pub = await stack.enter_async_context(connect(gw.url, name="lossy-pub", ca_file=ca))
        subs = [
            await stack.enter_async_context(
                connect(relay_url, name=f"lossy-{mode}-{i}", ca_file=ca, capabilities=MODES[mode])
            )
            for i in range(SUBSCRIBERS)
        ]
        room = f"lossy-{mode}-{time.monotonic_ns()}"
        await pub.join(room)
        for sub in subs:
            await sub.join(room)
        tasks = [asyncio.create_task(_subscribe(s, result, stop)) for s in subs]
        count = int(window_s * RATE_HZ)
        start = time.monotonic()
        for i in range(count):
            normal = normal_every and i % normal_every == 0
            priority = Priority.NORMAL if normal else Priority.CHATTER
            body = _STAMP.pack(time.monotonic_ns()) + b"x" * 92  # 100 bytes
            await pub.publish(room, body, priority=priority)
            result.chatter_sent += priority is Priority.CHATTER
            await asyncio.sleep(max(0.0, start + (i + 1) / RATE_HZ - time.monotonic()))
        await pub.publish(room, b"end", priority=Priority.NORMAL)  # no chatter is last
        await asyncio.sleep(2.0)  # retransmissions and fetches settle
        stop.set()
        for task in tasks:
            task.cancel()
    return result


async def _run(gw: RunningGateway, quick: bool) -> list[Figure]:
    rounds = 1 if quick else 3
    window_s = 3.0 if quick else 10.0
    drops_before = gw.udp_drops()
    runs: dict[tuple[str, str], list[_Round]] = {}
    async with await UdpRelay.start(("127.0.0.1", gw.port), profile=PATH, seed=5) as relay:
        url = f"https://127.0.0.1:{relay.address[1]}/v1/chat"
        for _ in range(rounds):
            for mix, normal_every in MIXES.items():
                for mode in MODES:  # interleaved, so drift on the machine hits both alike
                    result = await _round(gw, url, mode, normal_every, window_s)
                    runs.setdefault((mix, mode), []).append(result)
        dropped = relay.stats.dropped_loss
    how = (
        f"{SUBSCRIBERS} subscribers behind a relay ({PATH.loss:.0%} loss each way, "
        f"{2 * PATH.delay_ms:.0f} ms RTT), {RATE_HZ} msgs/s; median of {rounds} interleaved "
        f"rounds of {window_s:.0f} s; relay dropped {dropped}, gateway kernel drops "
        f"{gw.udp_drops() - drops_before}"
    )
    figures: list[Figure] = []
    for mix, normal_every in MIXES.items():
        p99: dict[tuple[str, Priority], float] = {}
        priorities = [Priority.CHATTER, Priority.NORMAL] if normal_every else [Priority.CHATTER]
        for mode in MODES:
            mine = runs[mix, mode]
            for priority in priorities:
                name = f"{mix}: {priority.name.lower()}"
                for q in (50, 99, 99.9):
                    value = median([percentile(r.latencies_ms[priority], q) for r in mine])
                    figures.append(Figure("lossy", f"{name} p{q:g}, {mode}", value, "ms", how))
                p99[mode, priority] = median(
                    [percentile(r.latencies_ms[priority], 99) for r in mine]
                )
            sent = [r.chatter_sent * SUBSCRIBERS for r in mine]
            arrived = [len(r.latencies_ms[Priority.CHATTER]) for r in mine]
            share = median([a / s for a, s in zip(arrived, sent, strict=True)])
            figures.append(
                Figure("lossy", f"{mix}: chatter arrived, {mode}", 100 * share, "%", how)
            )
        for priority in priorities:
            stream, dgram = p99["stream", priority], p99["datagrams", priority]
            figures.append(
                Figure(
                    "lossy",
                    f"{mix}: {priority.name.lower()} p99 ratio, stream / datagrams",
                    stream / dgram if dgram else float("nan"),
                    "x",
                    "above 1: datagrams lower the tail",
                )
            )
    return figures


def run(gw: RunningGateway, quick: bool) -> list[Figure]:
    return asyncio.run(_run(gw, quick))
