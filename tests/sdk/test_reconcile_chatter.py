"""The reconciler and live chatter that may be lost as datagrams (``Message.chatter_before``).

Messages are made by the gateway's own sequencer (:class:`gateway.core.shard.Shard`), so the
property tests check the two halves together: what the gateway stamps and what the client does.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.shard import Shard
from gateway.sdk.reconcile import FetchRange, Reconciler
from gateway.wire.frames import Message, Priority, ShardMap

CHATTER, NORMAL, HIGH = Priority.CHATTER, Priority.NORMAL, Priority.HIGH
ROOM = "room"


def _sequence(priorities: list[Priority], *, live: bool = True, shard_id: int = 1) -> list[Message]:
    shard = Shard(shard_id, log_messages=1000)
    return [
        shard.sequence(
            deps={}, sender="s", client_msg_id=f"m{i}", priority=p, body=b"%d" % i, live=live
        ).message
        for i, p in enumerate(priorities)
    ]


def _reconciler(*shards: int) -> Reconciler:
    r = Reconciler(gap_timeout_s=0.05)
    r.apply_shard_map(ShardMap(ROOM, 1, shards or (1,)))
    return r


def _seqs(r: Reconciler) -> list[int]:
    return [d.message.seq for d in r.drain()]


@st.composite
def _traffic(draw: st.DrawFn) -> tuple[list[Message], list[Message]]:
    """A live shard's messages, and what reaches a client: every stream message (non-chatter)
    in order, chatter datagrams lost or moved anywhere (reordered, or late past later ones)."""
    priorities = draw(st.lists(st.sampled_from([CHATTER, CHATTER, NORMAL, HIGH]), max_size=40))
    messages = _sequence(priorities)
    stream = [m for m in messages if m.priority is not CHATTER]
    arrivals: list[Message] = list(stream)
    for m in (m for m in messages if m.priority is CHATTER):
        if draw(st.booleans()):  # lost on the way
            continue
        seqs = [a.seq for a in arrivals]
        natural = sum(1 for s in seqs if s < m.seq)  # where it would be without reordering
        shift = draw(st.integers(-3, 3))
        arrivals.insert(max(0, min(len(arrivals), natural + shift)), m)
    return messages, arrivals


@settings(max_examples=300, deadline=None)
@given(_traffic())
def test_lost_or_late_chatter_never_holds_anything_back(
    traffic: tuple[list[Message], list[Message]],
) -> None:
    messages, arrivals = traffic
    r = _reconciler()
    delivered: list[Message] = []
    for i, m in enumerate(arrivals):
        r.receive([m], now=i * 0.001)
        delivered += [d.message for d in r.drain()]
    seqs = [m.seq for m in delivered]
    assert seqs == sorted(set(seqs))  # once each, in the shard's order
    # Everything that is not chatter reaches the application, and nothing waits for chatter:
    # all that came is delivered or dropped as too late, and nothing is left to fetch.
    assert {m.seq for m in messages if m.priority is not CHATTER} <= set(seqs)
    assert r.buffered == 0
    assert r.wanted(now=10.0) == []
    top = seqs[-1] if seqs else 0
    assert r.passed == top - len(seqs)  # every seq up to the last is delivered or passed over
    assert len(delivered) + r.duplicates == len(arrivals)


def test_in_order_arrival_passes_nothing_over() -> None:
    messages = _sequence([CHATTER, NORMAL, CHATTER, CHATTER, HIGH, CHATTER])
    r = _reconciler()
    r.receive(messages, now=0.0)
    assert _seqs(r) == [1, 2, 3, 4, 5, 6]
    assert (r.passed, r.take_passed(), r.duplicates) == (0, 0, 0)


def test_lost_chatter_is_passed_over_and_a_late_copy_is_dropped() -> None:
    _c1, n2, c3, c4, h5 = _sequence([CHATTER, NORMAL, CHATTER, CHATTER, HIGH])
    assert (n2.chatter_before, c4.chatter_before, h5.chatter_before) == (1, 1, 2)
    r = _reconciler()
    r.receive([n2], now=0.0)  # chatter 1 lost: the normal message does not wait for it
    assert _seqs(r) == [2]
    r.receive([h5], now=0.001)  # chatter 3 and 4 lost
    assert _seqs(r) == [5]
    assert (r.passed, r.take_passed(), r.take_passed()) == (3, 3, 0)
    r.receive([c3], now=0.002)  # too late: its successors were shown without it
    assert _seqs(r) == []
    assert r.duplicates == 1


def test_a_missing_message_that_is_not_chatter_is_waited_for_and_fetched() -> None:
    c1, n2, c3 = _sequence([CHATTER, NORMAL, CHATTER])
    r = _reconciler()
    r.receive([c1, c3], now=0.0)  # the normal message 2 is still on its way (stream)
    assert _seqs(r) == [1]
    assert r.wanted(now=0.01) == []  # normal reordering is waited out first
    assert r.wanted(now=0.1) == [FetchRange(1, 2, 2)]
    r.receive([n2], now=0.1)
    assert _seqs(r) == [2, 3]
    assert r.passed == 0


def test_group_rooms_stamp_no_chatter_so_every_gap_is_fetched() -> None:
    _c1, c2 = _sequence([CHATTER, CHATTER], live=False)
    r = _reconciler()
    r.receive([c2], now=0.0)
    assert _seqs(r) == []
    assert r.wanted(now=1.0) == [FetchRange(1, 1, 1)]


def test_the_first_message_of_a_shard_still_waits_for_the_sealed_epoch() -> None:
    """Passing over chatter at the start of a shard does not skip the previous epoch."""
    old = _sequence([NORMAL, NORMAL], shard_id=1)
    new = _sequence([CHATTER, CHATTER, NORMAL], shard_id=2)
    r = Reconciler()
    r.apply_shard_map(ShardMap(ROOM, 1, (1,)))
    r.apply_shard_map(ShardMap(ROOM, 2, (2,), {1: 2}, base_sum=2))
    r.receive([new[2]], now=0.0)  # both chatter lost; shard 1's seq 2 not here yet
    r.receive([old[0]], now=0.0)
    assert [(d.message.shard, d.message.seq) for d in r.drain()] == [(1, 1)]
    r.receive([old[1]], now=0.0)
    assert [(d.message.shard, d.message.seq) for d in r.drain()] == [(1, 2), (2, 3)]
    assert r.passed == 2
