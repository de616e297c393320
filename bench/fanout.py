"""Fan-out cost: the gateway's own CPU per delivery in a hot room, with per-tick batching and lz4
on and off, and the lz4 compression ratio on chat-like text.

The gateway runs in its own process and the subscribers in another (they share the 2 cores with
it), so the figure is the gateway's CPU time (from /proc) divided by the deliveries counted by the
subscribers.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
import time

from bench.common import Figure
from bench.gateway import gateway_process
from gateway.sdk.client import connect
from gateway.wire import frames as f
from gateway.wire.codec import deliver_lz4_frame, encode_deliver, encode_message

WORDS = [
    "lol",
    "what",
    "a",
    "goal",
    "did",
    "you",
    "see",
    "that",
    "omg",
    "no",
    "way",
    "haha",
    "yes",
    "the",
    "keeper",
    "was",
    "asleep",
    "again",
    "ref",
    "come",
    "on",
    "unbelievable",
    "best",
    "match",
    "this",
    "season",
    "gg",
    "wp",
    "who",
    "is",
    "streaming",
    "tonight",
    "same",
    "here",
    "brb",
    "coffee",
    "back",
    "hi",
    "everyone",
    "hello",
    "from",
    "berlin",
    "madrid",
    "tokyo",
    "love",
    "this",
    "song",
    "wow",
    "replay",
    "please",
    "that",
    "pass",
    "though",
    "defense",
    "where",
    "are",
    "you",
    "clutch",
    "insane",
    "let's",
    "go",
]

SUBSCRIBERS = textwrap.dedent("""
    import asyncio, sys, time
    from gateway.sdk.client import connect
    url, ca, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    got = 0
    async def one(i, ready):
        global got
        async with connect(url, name=f"sub{i}", ca_file=ca) as c:
            await c.join("hot")
            ready.release()
            async for _ in c.messages():
                got += 1
    async def main():
        ready = asyncio.Semaphore(0)
        tasks = [asyncio.create_task(one(i, ready)) for i in range(count)]
        for _ in range(count):
            await ready.acquire()
        print("ready", flush=True)
        sys.stdin.readline()  # the publisher is done
        await asyncio.sleep(1.0)
        print(got, flush=True)
        for t in tasks:
            t.cancel()
    asyncio.run(main())
""")


def chat_line(rng: random.Random, size: int) -> bytes:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return " ".join(words).encode()[:size]


def compression_ratio() -> Figure:
    """lz4 on one tick's batch of chat-like messages (50 messages of ~100 bytes)."""
    rng = random.Random(7)
    messages = [
        encode_message(
            f.Message(
                1,
                1000 + i,
                {2: 900 + i},
                f"fan{rng.randrange(500)}",
                f"{rng.getrandbits(48):012x}-{i}",
                f.Priority.CHATTER,
                chat_line(rng, 100),
            )
        )
        for i in range(50)
    ]
    plain = encode_deliver("stadium", messages)
    packed = deliver_lz4_frame(plain)
    return Figure(
        "fanout",
        "lz4 compression ratio, one tick of chat-like text",
        len(plain) / len(packed),
        "x",
        f"{len(plain)} -> {len(packed)} bytes, 50 messages of ~100 B",
    )


async def _drive(
    url: str, ca: str, subscribers: int, rate_hz: float, seconds: float, cpu: object
) -> tuple[float, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SUBSCRIBERS,
        url,
        ca,
        str(subscribers),
        str(seconds),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line.strip() == b"ready", line
    rng = random.Random(1)
    async with connect(url, name="publisher", ca_file=ca) as pub:
        await pub.join("hot")
        cpu_start = cpu()  # type: ignore[operator]
        start = time.monotonic()
        for i in range(int(rate_hz * seconds)):
            await pub.publish("hot", chat_line(rng, 100), priority=f.Priority.CHATTER)
            delay = start + (i + 1) / rate_hz - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.sleep(0.5)
        cpu_used = cpu() - cpu_start  # type: ignore[operator]
    proc.stdin.write(b"done\n")
    await proc.stdin.drain()
    deliveries = int((await asyncio.wait_for(proc.stdout.readline(), 60)).strip())
    await proc.wait()
    return cpu_used, deliveries


def run(quick: bool) -> list[Figure]:
    subscribers, rate_hz, seconds = (30, 50, 3.0) if quick else (200, 100, 8.0)
    figures = [compression_ratio()]
    configs = {
        "batched (tick 10 ms), lz4": "tick_ms = 10.0\n",
        "batched (tick 10 ms), no lz4": "tick_ms = 10.0\nlz4_min_bytes = 1000000000\n",
        "unbatched (tick 0), lz4": "tick_ms = 0.0\n",
    }
    base = (
        "[core.limits]\nmax_connections_per_address = 100000\npublish_rate_per_connection_per_s = 1e5\n"
        "publish_burst_per_connection = 1e5\njoin_rate_per_connection_per_s = 1e5\n"
        'join_burst_per_connection = 1e5\n[store]\nkind = "memory"\n'
        '[auth]\nmode = "insecure-dev"\n'
    )
    for label, core in configs.items():
        with gateway_process(f"[core]\n{core}{base}") as gw:
            cpu, deliveries = asyncio.run(
                _drive(gw.url, str(gw.certs.ca_cert), subscribers, rate_hz, seconds, gw.cpu_seconds)
            )
        figures.append(
            Figure(
                "fanout",
                f"gateway CPU per delivery, {label}",
                cpu / max(1, deliveries) * 1e6,
                "us",
                f"{subscribers} subscribers x {rate_hz:.0f} msgs/s, 100 B, {seconds:.0f} s; "
                f"{deliveries:,} deliveries ({deliveries / seconds:,.0f}/s)",
            )
        )
    return figures
