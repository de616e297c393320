"""One shard's sequencing rate, in-process, and what vector clocks cost on the wire."""

from __future__ import annotations

import time

from bench.common import Figure, median
from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.shard import Shard
from gateway.wire import frames as f
from gateway.wire.codec import encode_client_frame, encode_message
from gateway.wire.framing import delimit

BODY = b"x" * 100


def _shard_rate(count: int) -> float:
    shard = Shard(1, log_messages=10_000)
    deps = {2: 1000, 3: 1000}
    start = time.perf_counter()
    for i in range(count):
        shard.sequence(
            deps=deps, sender="s", client_msg_id=str(i), priority=f.Priority.NORMAL, body=BODY
        )
    return count / (time.perf_counter() - start)


def _hub_rate(count: int) -> float:
    """Publish frames through the whole hub: decode, validate, dedupe, sequence, ack, batch."""
    hub = Hub(CoreConfig())
    hub.connect(1, 0.0)
    hub.receive_data(1, delimit(encode_client_frame(f.Hello(client_name="bench"))), 0.0)
    hub.receive_data(1, delimit(encode_client_frame(f.Join(1, "r"))), 0.0)
    frames = [delimit(encode_client_frame(f.Publish(i, "r", f"m{i}", BODY))) for i in range(count)]
    hub.take_outputs()
    start = time.perf_counter()
    now = 0.0
    for i, data in enumerate(frames):
        now += 0.00005
        hub.receive_data(1, data, now)
        if i % 100 == 99:
            hub.handle_timer(now + 1)
            hub.take_outputs()
    return count / (time.perf_counter() - start)


def clock_bytes() -> list[Figure]:
    """Bytes the vector clock adds to one delivered message, at 1, 4 and 16 shards."""
    out = []
    bare = len(encode_message(f.Message(1, 123_456, {}, "alice", "m1", f.Priority.NORMAL, BODY)))
    for shards in (1, 4, 16):
        deps = {s: 100_000 + s for s in range(2, shards + 1)}
        size = len(
            encode_message(f.Message(1, 123_456, deps, "alice", "m1", f.Priority.NORMAL, BODY))
        )
        out.append(
            Figure(
                "clocks",
                f"vector clock bytes per message, {shards} shard(s)",
                size - bare,
                "bytes",
                f"a {bare}-byte message with a 100-byte body; seqs ~100,000",
            )
        )
    return out


def run(quick: bool) -> list[Figure]:
    count = 20_000 if quick else 200_000
    runs = 1 if quick else 5
    shard = median([_shard_rate(count) for _ in range(runs)])
    hub = median([_hub_rate(count // 4) for _ in range(runs)])
    return [
        Figure(
            "sequencing",
            "one shard, Shard.sequence",
            shard,
            "msgs/s",
            f"median of {runs} runs of {count:,}; target >= 20,000",
        ),
        Figure(
            "sequencing",
            "one shard through the hub (decode+validate+sequence+ack)",
            hub,
            "msgs/s",
            f"median of {runs} runs of {count // 4:,}",
        ),
        *clock_bytes(),
    ]
