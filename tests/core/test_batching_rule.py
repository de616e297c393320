"""When a room's messages go out: at once when the room was idle, batched while they come faster
than the tick (Nagle's rule), and to subscribers in an order that rotates. Virtual time."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.room import Room
from gateway.core.sharder import make_policy
from gateway.wire import frames as f
from tests.core.test_hub import Peer, pump

IDLE_S = 30 * 24 * 3600.0  # rooms are never reclaimed within these runs

TICK_S = 0.010


def run_timer(hub: Hub, peers: list[Peer], until: float) -> list[float]:
    """Run every timer due up to ``until`` at its own time; return when each batch went out."""
    sent = []
    while (at := hub.get_timer()) is not None and at <= until:
        before = sum(len(p.inbox) for p in peers)
        hub.handle_timer(at)
        pump(hub, peers)
        if sum(len(p.inbox) for p in peers) > before:
            sent.append(at)
    return sent


def test_idle_room_sends_at_once_and_a_busy_one_waits_for_the_tick() -> None:
    hub = Hub(CoreConfig(tick_ms=TICK_S * 1000))
    alice, bob = Peer(hub, 1, "alice"), Peer(hub, 2, "bob")
    peers = [alice, bob]
    for p in peers:
        p.send(f.Join(1, "r"))
    pump(hub, peers)
    for p in peers:
        p.take()

    alice.send(f.Publish(2, "r", "m1", b"first"), now=1.000)
    assert hub.get_timer() == 1.000  # idle: due at once
    assert run_timer(hub, peers, 1.000) == [1.000]
    (batch,) = bob.take(f.Deliver)
    assert [m.body for m in batch.messages] == [b"first"]

    alice.send(f.Publish(3, "r", "m2", b"second"), now=1.003)
    alice.send(f.Publish(4, "r", "m3", b"third"), now=1.006)
    assert hub.get_timer() == 1.000 + TICK_S  # busy: a tick after the last batch
    assert run_timer(hub, peers, 1.009) == []
    assert run_timer(hub, peers, 1.010) == [1.010]
    (batch,) = bob.take(f.Deliver)
    assert [m.body for m in batch.messages] == [b"second", b"third"]

    alice.send(f.Publish(5, "r", "m4", b"later"), now=1.500)
    assert hub.get_timer() == 1.500  # idle again
    assert run_timer(hub, peers, 1.500) == [1.500]


def test_rooms_keep_their_own_pace() -> None:
    """A busy room's tick does not hold back a quiet room's message."""
    hub = Hub(CoreConfig(tick_ms=TICK_S * 1000))
    alice, bob = Peer(hub, 1, "alice"), Peer(hub, 2, "bob")
    alice.send(f.Join(1, "busy"))
    bob.send(f.Join(1, "quiet"))
    pump(hub, [alice, bob])
    alice.send(f.Publish(2, "busy", "b1", b"x"), now=2.000)
    run_timer(hub, [alice, bob], 2.000)
    alice.send(f.Publish(3, "busy", "b2", b"x"), now=2.001)  # busy: due 2.010
    bob.send(f.Publish(2, "quiet", "q1", b"y"), now=2.002)  # quiet: due 2.002
    assert hub.get_timer() == 2.002
    assert run_timer(hub, [alice, bob], 2.002) == [2.002]
    assert [m.body for d in bob.take(f.Deliver) for m in d.messages] == [b"y"]
    assert hub.get_timer() == 2.010


@settings(max_examples=60, deadline=None)
@given(
    gaps_ms=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=40),
    tick_ms=st.sampled_from([0, 5, 10, 50]),
)
def test_no_message_waits_longer_than_a_tick_nor_batches_come_closer(
    gaps_ms: list[int], tick_ms: int
) -> None:
    """For any arrival pattern: every message goes out within ``tick_ms`` of its arrival (at
    once when the room had sent nothing for a tick), and two batches of one room are never
    closer than ``tick_ms``; nothing is lost or reordered."""
    tick_s = tick_ms / 1000
    hub = Hub(CoreConfig(tick_ms=tick_ms, room_idle_s=IDLE_S))
    pub, sub = Peer(hub, 1, "pub"), Peer(hub, 2, "sub")
    peers = [pub, sub]
    for p in peers:
        p.send(f.Join(1, "r"))
    pump(hub, peers)
    sub.take()
    now, arrivals, batches = 10.0, [], []
    last_batch = float("-inf")
    for i, gap in enumerate(gaps_ms):
        now = round(now + gap / 1000, 6)
        batches += run_timer(hub, peers, now - 1e-9)  # what was due before this arrival
        if batches:
            last_batch = batches[-1]
        timer = hub.get_timer()  # nothing due but the room's reclaim look, far away
        idle = now - last_batch >= tick_s and (timer is None or timer >= IDLE_S)
        pub.send(f.Publish(i + 2, "r", f"m{i}", str(i).encode()), now=now)
        pump(hub, peers)
        arrivals.append((now, idle))
    batches += run_timer(hub, peers, now + 1.0)
    delivered = [(m.body, d) for d in sub.take(f.Deliver) for m in d.messages]
    assert [int(body) for body, _ in delivered] == list(range(len(gaps_ms)))
    # Which batch carried each message: batches and Delivers are in the same order.
    delivers = []
    for d in {id(d): d for _, d in delivered}.values():
        delivers.append(d)
    assert len(delivers) == len(batches)
    sent_at = {}
    for when, d in zip(batches, delivers, strict=True):
        for m in d.messages:
            sent_at[int(m.body)] = when
    for i, (arrived, idle) in enumerate(arrivals):
        wait = sent_at[i] - arrived
        assert -1e-9 <= wait <= tick_s + 1e-9
        if idle:
            assert wait <= 1e-9
    for a, b in itertools.pairwise(batches):
        assert b - a >= tick_s - 1e-9


def test_fan_out_order_rotates_over_every_subscriber() -> None:
    room = Room("r", policy=make_policy(CoreConfig().sharding), now=0.0)
    room.subscribers.update(range(1, 8))
    firsts, lasts = [], []
    for _ in range(7):
        order = room.fan_out_order()
        assert sorted(order) == list(range(1, 8))
        firsts.append(order[0])
        lasts.append(order[-1])
    assert sorted(firsts) == list(range(1, 8))  # each one first exactly once in 7 batches
    assert sorted(lasts) == list(range(1, 8))
