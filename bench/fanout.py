"""Fan-out cost: the gateway's own CPU per delivery and the deliveries it makes per second in a
hot room at fixed loads, with each QUIC engine; batching on and off; and the lz4 compression
ratio on chat-like text.

The gateway runs in its own process; the subscribers are light (:mod:`bench.swarm`: raw
WebTransport sessions on the qh3 engine that only count) in 2-4 other processes, with one
publisher sending 100-byte messages at a fixed rate. They all share the machine's cores, so the
figure is the gateway's CPU time (from /proc) over a steady window divided by the deliveries the
subscribers counted in it. When the gateway can't keep up, the figures say what it achieved and
what it shed.
"""

from __future__ import annotations

import random

from bench.common import Figure
from bench.gateway import RunningGateway
from bench.load import (
    FULL,
    QUICK,
    Fleet,
    Measurement,
    Timing,
    in_hot_room,
    medians,
    repeat,
    summary_note,
)
from gateway.wire import frames as f
from gateway.wire.codec import deliver_lz4_frame, encode_deliver, encode_message

__all__ = ["ENGINES", "FIXED_LOADS", "chat_line", "compression_ratio", "load_figures", "run"]

ENGINES = ("aioquic", "qh3")
FIXED_LOADS = ((200, 100.0), (1000, 200.0))  # (subscribers, msgs/s), as the issue asks
QUICK_LOADS = ((20, 50.0),)
UNBATCHED = "tick_ms = 0.0\n"  # every message fans out on its own (no per-tick batch)

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


def load_figures(label: str, runs: list[Measurement], engine: str) -> list[Figure]:
    """CPU per delivery and deliveries per second for one load, with every run in ``extra``."""
    m = medians(runs)
    extra = {"engine": engine, "medians": m, "runs": [run.as_dict() for run in runs]}
    first = runs[0]
    lost = sum(run.slow_consumer_disconnects + run.sessions_lost for run in runs)
    drops = sum(run.gateway_udp_drops for run in runs)
    client_drops = sum(run.subscriber_udp_drops for run in runs)
    logged = sum(run.gateway_errors_logged for run in runs)
    return [
        Figure(
            "fanout",
            f"gateway CPU per delivery, {label}",
            m["cpu_us_per_delivery"],
            "us",
            summary_note(runs),
            extra,
        ),
        Figure(
            "fanout",
            f"deliveries per second, {label}",
            m["delivered_per_s"],
            "1/s",
            f"offered {first.offered_per_s:,.0f}/s, achieved {m['achieved']:.0%} (median of "
            f"{len(runs)}); the gateway counted {m['gateway_deliveries_per_s']:,.0f}/s (with "
            f"the publisher's copy); shed {m['shed']:,.0f}, sessions dropped {lost}; UDP "
            "datagrams dropped (all runs): "
            f"{drops:,} at the gateway, {client_drops:,} at subscribers; gateway log errors "
            f"{logged:,}",
            extra,
        ),
    ]


def _failed(label: str, exc: Exception) -> list[Figure]:
    """A figure that could not be measured stays in the table as NaN, saying why."""
    reason = str(exc).splitlines()[0][:200]
    return [
        Figure("fanout", f"gateway CPU per delivery, {label}", float("nan"), "us", reason),
        Figure("fanout", f"deliveries per second, {label}", float("nan"), "1/s", reason),
    ]


def _engine_figures(
    engine: str, loads: tuple[tuple[int, float], ...], timing: Timing
) -> list[Figure]:
    figures: list[Figure] = []
    for subscribers, rate_per_s in loads:
        label = f"{subscribers} subscribers x {rate_per_s:g} msgs/s, {engine}"

        async def work(
            gw: RunningGateway, swarm: Fleet, rate_per_s: float = rate_per_s
        ) -> list[Measurement]:
            return await repeat(gw, swarm, rate_per_s, timing)

        try:
            runs = in_hot_room(engine, subscribers, work)
        except Exception as exc:
            figures += _failed(label, exc)
            continue
        figures += load_figures(label, runs, engine)
    return figures


def _unbatched(loads: tuple[tuple[int, float], ...], timing: Timing) -> list[Figure]:
    subscribers, rate_per_s = loads[0]

    async def work(gw: RunningGateway, swarm: Fleet) -> list[Measurement]:
        return await repeat(gw, swarm, rate_per_s, timing)

    runs = in_hot_room("aioquic", subscribers, work, core=UNBATCHED)
    label = f"{subscribers} subscribers x {rate_per_s:g} msgs/s, aioquic, unbatched (tick 0)"
    return load_figures(label, runs, "aioquic")[:1]


def run(quick: bool) -> list[Figure]:
    loads = QUICK_LOADS if quick else FIXED_LOADS
    timing = QUICK if quick else FULL
    figures = [compression_ratio()]
    for engine in ENGINES:
        figures += _engine_figures(engine, loads, timing)
    figures += _unbatched(loads, timing)
    return figures
