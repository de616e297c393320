"""A room surges from ~100 to 20,000 msgs/s and back, on virtual time, through the real hub.

Splits and merges must happen within the configured windows without flapping, and an observer
must receive every message exactly once, dense per shard, with each shard map before the messages
of its epoch, and reconcile them in an order that keeps causality and per-sender FIFO.
"""

from __future__ import annotations

from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.limits import LimitsConfig
from gateway.core.outputs import Send
from gateway.core.sharder import ShardingConfig
from gateway.sdk.reconcile import Delivered, Reconciler
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit

SHARDING = ShardingConfig(
    split_above_per_s=5000,
    split_after_s=1.0,
    merge_below_per_s=500,
    merge_after_s=3.0,
    cooldown_s=2.0,
    max_shards=8,
    velocity_tau_s=0.5,
)
SENDERS = 64
PHASES = [(100, 3.0), (20_000, 9.0), (100, 16.0)]  # (msgs/s, seconds)
STEP_S = 0.005


def frame(x: f.ClientFrame) -> bytes:
    return delimit(encode_client_frame(x))


def test_surge_splits_and_merges_without_loss_or_flapping() -> None:
    synthetic = LimitsConfig(
        publish_rate_per_connection_per_s=10_000, publish_burst_per_connection=10_000
    )
    hub = Hub(
        CoreConfig(tick_ms=10, sharding=SHARDING, log_messages_per_shard=300_000, limits=synthetic)
    )
    observer = 0
    hub.connect(observer, 0.0)
    hub.receive_data(observer, frame(f.Hello(client_name="observer")), 0.0)
    hub.receive_data(observer, frame(f.Join(1, "stadium")), 0.0)
    for s in range(1, SENDERS + 1):
        hub.connect(s, 0.0)
        hub.receive_data(s, frame(f.Hello(client_name=f"fan-{s}")), 0.0)
        hub.receive_data(s, frame(f.Join(1, "stadium")), 0.0)

    decoder = FrameDecoder(64 << 20)
    received: list[f.ServerFrame] = []

    def drain() -> None:
        for out in hub.take_outputs():
            if isinstance(out, Send) and observer in out.conn_ids:
                received.extend(decode_server_frame(p) for p in decoder.feed(out.data))

    now, sent, credit, surge_start = 0.0, 0, 0.0, PHASES[0][1]
    published: dict[str, list[str]] = {}
    for rate, duration in PHASES:
        end = now + duration
        while now < end:
            now += STEP_S
            credit += rate * STEP_S
            while credit >= 1:
                credit -= 1
                sender = sent % SENDERS + 1
                msg_id = f"m{sent}"
                hub.receive_data(sender, frame(f.Publish(sent, "stadium", msg_id, b"goal!")), now)
                published.setdefault(f"fan-{sender}", []).append(msg_id)
                sent += 1
            timer = hub.get_timer()
            while timer is not None and timer <= now:
                hub.handle_timer(now)
                timer = hub.get_timer()
            drain()
    hub.flush(now)
    drain()

    # Epoch changes: when, and to how many shards.
    maps = [x for x in received if isinstance(x, f.ShardMap)]
    counts = [len(m.shards) for m in maps]
    assert [m.epoch for m in maps] == list(range(2, len(maps) + 2))
    peak = counts.index(max(counts))
    assert max(counts) >= 4, counts  # 20,000/s needs at least 4 shards of <= 5,000/s
    assert counts[: peak + 1] == sorted(counts[: peak + 1]), f"flapped during the surge: {counts}"
    assert counts[peak:] == sorted(counts[peak:], reverse=True), f"flapped after it: {counts}"
    assert counts[-1] == 1, "the room must merge back to one shard when it cools"
    assert len(counts) <= 2 * 3 + 2  # log2(max_shards)=3 steps up and down, no more

    # The first split cannot come before split_after_s of the surge has passed.
    times = _epoch_times(received, maps)
    assert times[0] >= surge_start + SHARDING.split_after_s

    # Nothing lost, nothing twice, dense per shard, maps before their epoch's messages.
    received_maps_shards = {1}  # epoch 1's shard came with Joined
    per_shard: dict[int, list[int]] = {}
    recon = Reconciler(gap_timeout_s=1e9, max_history=sent)
    delivered: list[Delivered] = []
    for x in received:
        if isinstance(x, f.ShardMap):
            received_maps_shards.update(x.shards)
            recon.apply_shard_map(x)
        elif isinstance(x, f.Joined):
            for sm in x.shard_maps:
                recon.apply_shard_map(sm)
        elif isinstance(x, f.Deliver):
            for m in x.messages:
                assert m.shard in received_maps_shards, "a message arrived before its shard map"
                per_shard.setdefault(m.shard, []).append(m.seq)
            recon.receive(x.messages, 0.0)
            delivered += recon.drain()
    assert sum(len(v) for v in per_shard.values()) == sent
    for shard, seqs in per_shard.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"shard {shard} is not dense"

    assert len(delivered) == sent and recon.buffered == 0 and recon.evicted == 0
    order = recon.ordered()
    assert len(order) == sent
    for sender, ids in published.items():  # per-sender FIFO across every split and merge
        assert [m.client_msg_id for m in order if m.sender == sender] == ids


def _epoch_times(received: list[f.ServerFrame], maps: list[f.ShardMap]) -> list[float]:
    """Virtual time of each epoch change, recovered from message ids (m<N> at N/rate)."""
    times = []
    last_index = -1
    for x in received:
        if isinstance(x, f.Deliver) and x.messages:
            last_index = int(x.messages[-1].client_msg_id[1:])
        elif isinstance(x, f.ShardMap):
            times.append(_time_of(last_index))
    return times


def _time_of(index: int) -> float:
    t = 0.0
    for rate, duration in PHASES:
        if index < rate * duration:
            return t + index / rate
        index -= int(rate * duration)
        t += duration
    return t
