"""Tests of gateway.sdk.reconcile against a reference simulator of the gateway's sequencing rules."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError, RemoteProtocolError
from gateway.sdk.reconcile import Delivered, FetchRange, Gap, Reconciler
from gateway.wire.frames import Message, Priority, ShardMap

ROOM = "room"
Key = tuple[int, int]
FAST = settings(max_examples=100, deadline=None)


# ---- reference simulator -------------------------------------------------------------------------


@dataclass
class History:
    """A valid history: maps by epoch, messages in publish order, and their full vector clocks."""

    maps: list[ShardMap] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    clocks: dict[Key, dict[int, int]] = field(default_factory=dict)

    def log(self, shard: int) -> list[Message]:
        return [m for m in self.messages if m.shard == shard]

    def by_key(self) -> dict[Key, Message]:
        return {(m.shard, m.seq): m for m in self.messages}


def _join(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out = dict(a)
    for shard, seq in b.items():
        out[shard] = max(out.get(shard, 0), seq)
    return out


def simulate(rng: random.Random, n_messages: int, n_senders: int) -> History:
    """Publish ``n_messages`` by the gateway's rules (see the module docs of reconcile)."""
    h = History()
    next_shard = 100
    shards = [next_shard + i for i in range(rng.randint(1, 4))]
    next_shard += len(shards)
    h.maps.append(ShardMap(ROOM, 1, tuple(shards)))
    n: dict[int, int] = {}  # per shard, seqs assigned
    running: dict[int, dict[int, int]] = {}  # per shard, the max of its messages' deps
    earlier: dict[int, int] = {}  # the full clock of all earlier epochs
    views: list[dict[int, int]] = [{} for _ in range(n_senders)]  # causally closed
    for i in range(n_messages):
        if rng.random() < 0.06:
            sealed = {s: n[s] for s in shards if n.get(s)}
            earlier = _join(earlier, sealed)
            shards = [next_shard + j for j in range(rng.randint(1, 4))]
            next_shard += len(shards)
            prev = h.maps[-1]
            h.maps.append(
                ShardMap(
                    ROOM,
                    prev.epoch + 1,
                    tuple(shards),
                    sealed,
                    prev.base_sum + sum(sealed.values()),
                )
            )
        sender = rng.randrange(n_senders)
        for _ in range(rng.randint(0, 2)):  # catch up on some prefix of some shard
            if h.messages:
                m = rng.choice(h.messages)
                views[sender] = _join(views[sender], h.clocks[(m.shard, m.seq)])
        shard = shards[sender % len(shards)]  # sender affinity
        seq = n.get(shard, 0) + 1
        n[shard] = seq
        view = views[sender]
        deps = {t: view[t] for t in shards if t != shard and view.get(t)}
        deps = _join(running.get(shard, {}), deps)
        running[shard] = deps
        msg = Message(shard, seq, deps, f"s{sender}", f"c{i}", Priority.NORMAL, b"x")
        h.messages.append(msg)
        h.clocks[(shard, seq)] = {**_join(earlier, deps), shard: seq}
        views[sender] = _join(view, h.clocks[(shard, seq)])
    return h


def histories(max_messages: int = 200) -> st.SearchStrategy[tuple[History, random.Random]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[History, random.Random]:
        rng = draw(st.randoms(use_true_random=False))
        n = draw(st.integers(1, max_messages))
        return simulate(rng, n, draw(st.integers(1, 6))), rng

    return build()


# ---- checks --------------------------------------------------------------------------------------


def happened_before(h: History, a: Message, b: Message) -> bool:
    return a is not b and h.clocks[(b.shard, b.seq)].get(a.shard, 0) >= a.seq


def assert_causal(h: History, order: list[Message]) -> None:
    """No message comes before one it depends on (per shard in seq order + each clock entry)."""
    pos = {(m.shard, m.seq): i for i, m in enumerate(order)}
    for m in order:
        i = pos[(m.shard, m.seq)]
        for shard, seq in h.clocks[(m.shard, m.seq)].items():
            if (shard, seq) in pos and (shard, seq) != (m.shard, m.seq):
                assert pos[(shard, seq)] < i, f"{m.shard}:{m.seq} before its dep {shard}:{seq}"
        if (m.shard, m.seq - 1) in pos:
            assert pos[(m.shard, m.seq - 1)] < i


def assert_sender_fifo(h: History, order: list[Message]) -> None:
    publish = {(m.shard, m.seq): i for i, m in enumerate(h.messages)}
    last: dict[str, int] = {}
    for m in order:
        i = publish[(m.shard, m.seq)]
        assert last.get(m.sender, -1) < i, f"{m.sender} out of publish order"
        last[m.sender] = i


def feed_all(r: Reconciler, h: History) -> None:
    for sm in h.maps:
        r.apply_shard_map(sm)


# ---- properties ----------------------------------------------------------------------------------


@FAST
@given(histories(), st.data())
def test_any_permutation_with_duplicates_delivers_everything_causally(
    hr: tuple[History, random.Random], data: st.DataObject
) -> None:
    h, rng = hr
    extra = data.draw(st.lists(st.sampled_from(h.messages), max_size=30))
    stream = h.messages + extra
    rng.shuffle(stream)
    r = Reconciler()
    feed_all(r, h)
    cut = data.draw(st.integers(0, len(stream)))
    r.receive(stream[:cut], now=0.0)
    got = r.drain()
    r.receive(stream[cut:], now=0.01)
    got += r.drain()
    order = [d.message for d in got]
    assert sorted((m.shard, m.seq) for m in order) == sorted(h.by_key())  # all, exactly once
    assert_causal(h, order)
    for shard in {m.shard for m in h.messages}:
        assert [m.seq for m in order if m.shard == shard] == list(range(1, len(h.log(shard)) + 1))
    assert r.duplicates == len(extra)
    assert r.buffered == 0 and r.drain() == []
    assert r.wanted(100.0) == []


@FAST
@given(histories(), st.randoms(use_true_random=False))
def test_two_orders_converge_on_one_causal_total_order(
    hr: tuple[History, random.Random], rng: random.Random
) -> None:
    h, _ = hr
    results = []
    for _ in range(2):
        items: list[ShardMap | Message] = [*h.maps, *h.messages]
        rng.shuffle(items)
        r = Reconciler()
        for t, item in enumerate(items):
            if isinstance(item, ShardMap):
                r.apply_shard_map(item)
            else:
                r.receive([item], now=t * 0.001)
        assert len(r.drain()) == len(h.messages)
        results.append(r.ordered())
    assert results[0] == results[1]
    assert_causal(h, results[0])
    assert_sender_fifo(h, results[0])


@FAST
@given(histories(150), st.data())
def test_lost_messages_are_fetched_until_everything_is_delivered(
    hr: tuple[History, random.Random], data: st.DataObject
) -> None:
    h, rng = hr
    # Never drop a shard's last message: a lost tail is invisible until something newer arrives.
    tails = {(s, len(h.log(s))) for s in {m.shard for m in h.messages}}
    p = data.draw(st.floats(0.0, 0.8))
    dropped = {
        (m.shard, m.seq) for m in h.messages if (m.shard, m.seq) not in tails and rng.random() < p
    }
    fed = [m for m in h.messages if (m.shard, m.seq) not in dropped]
    rng.shuffle(fed)
    r = Reconciler(gap_timeout_s=0.05, refetch_after_s=1.0)
    feed_all(r, h)
    r.receive(fed, now=0.0)
    assert r.wanted(0.0) == []  # reordering shorter than gap_timeout_s is normal
    log = h.by_key()
    now = 0.0
    for _ in range(4):
        now += 0.1
        asked = r.wanted(now)
        assert r.wanted(now + 0.5) == []  # not again before refetch_after_s
        now += 0.5
        asked_seqs = {(f.shard, q) for f in asked for q in range(f.from_seq, f.to_seq + 1)}
        done = r.delivered
        assert not any(q <= done.get(s, 0) for s, q in asked_seqs)  # nothing delivered
        assert len(asked_seqs) == sum(f.to_seq - f.from_seq + 1 for f in asked)  # no overlap
        missing = {k for k in dropped if k[1] > done.get(k[0], 0)}
        assert missing <= asked_seqs  # every needed message is asked for...
        assert asked_seqs <= missing  # ...and nothing held or delivered
        r.receive([log[k] for k in sorted(asked_seqs)], now=now)
        r.drain()
        dropped -= asked_seqs
    assert r.delivered == {s: len(h.log(s)) for s in {m.shard for m in h.messages}}
    assert r.buffered == 0 and r.missed == 0
    assert_causal(h, r.ordered())


@FAST
@given(histories(120), st.data())
def test_lost_reports_a_gap_and_later_messages_deliver(
    hr: tuple[History, random.Random], data: st.DataObject
) -> None:
    h, rng = hr
    shard = data.draw(st.sampled_from(sorted({m.shard for m in h.messages})))
    n = len(h.log(shard))
    first_available = data.draw(st.integers(1, n + 1))
    fed = [m for m in h.messages if m.shard != shard or m.seq >= first_available]
    rng.shuffle(fed)
    r = Reconciler()
    feed_all(r, h)
    r.receive(fed, now=0.0)
    before = len(r.drain())
    gap = r.lost(shard, first_available)
    if first_available == 1:
        assert gap is None and r.missed == 0
    else:
        assert gap == Gap(shard, 1, first_available - 1)
        assert gap.count == r.missed == first_available - 1
    assert before + len(r.drain()) == len(fed)  # everything held delivers
    assert r.delivered[shard] == n
    assert r.buffered == 0
    assert r.lost(shard, first_available) is None  # reported once
    r.receive([m for m in h.log(shard) if m.seq < first_available], now=1.0)
    assert r.drain() == [] and r.duplicates == first_available - 1  # late copies are stale


@FAST
@given(histories(60), st.integers(4, 8))  # the simulator makes at most 4 shards per epoch
def test_a_small_buffer_evicts_then_fetches_until_everything_is_delivered(
    hr: tuple[History, random.Random], max_buffered: int
) -> None:
    h, rng = hr
    stream = list(h.messages)
    rng.shuffle(stream)
    r = Reconciler(max_buffered=max_buffered)
    feed_all(r, h)
    r.receive(stream, now=0.0)
    got = r.drain()
    assert r.buffered <= max_buffered
    assert r.evicted == len(h.messages) - len(got) - r.buffered
    log = h.by_key()
    for i in range(1, len(h.messages) + 2):  # each round delivers at least one message
        if len(got) == len(h.messages):
            break
        asked = r.wanted(i * 2.0)
        assert 0 < sum(f.to_seq - f.from_seq + 1 for f in asked) <= max_buffered
        r.receive(
            [log[(f.shard, q)] for f in asked for q in range(f.from_seq, f.to_seq + 1)], i * 2.0
        )
        got += r.drain()
        assert r.buffered <= max_buffered
    assert sorted((d.message.shard, d.message.seq) for d in got) == sorted(log)
    assert_causal(h, [d.message for d in got])
    assert r.duplicates == 0 and r.missed == 0


# ---- units ---------------------------------------------------------------------------------------


def msg(shard: int, seq: int, deps: dict[int, int] | None = None, sender: str = "a") -> Message:
    return Message(shard, seq, deps or {}, sender, f"{shard}.{seq}", Priority.NORMAL, b"")


def test_unknown_epoch_waits_for_its_map() -> None:
    r = Reconciler()
    r.apply_shard_map(ShardMap(ROOM, 1, (1,)))
    r.receive([msg(1, 1), msg(2, 1), msg(2, 2)], now=0.0)
    assert [d.message.seq for d in r.drain()] == [1]
    assert r.buffered == 2
    r.apply_shard_map(ShardMap(ROOM, 2, (2,), {1: 1}, 1))
    got = r.drain()
    assert [(d.message.shard, d.message.seq) for d in got] == [(2, 1), (2, 2)]
    assert [d.key for d in got] == [(2, 2, 1), (3, 2, 2)]  # base_sum + deps + seq
    r.apply_shard_map(ShardMap(ROOM, 2, (2,), {1: 1}, 1))  # idempotent
    assert r.cursor().epoch == 2


def test_first_message_of_an_epoch_waits_for_the_sealed_seqs() -> None:
    r = Reconciler()
    r.apply_shard_map(ShardMap(ROOM, 1, (1, 2)))
    r.apply_shard_map(ShardMap(ROOM, 2, (3,), {1: 2, 2: 1}, 3))
    r.receive([msg(3, 1), msg(1, 1), msg(2, 1)], now=0.0)
    assert [d.message.shard for d in r.drain()] == [1, 2]
    assert r.wanted(0.1) == [FetchRange(1, 2, 2)]  # known from sealed
    r.receive([msg(1, 2)], now=0.1)
    assert [(d.message.shard, d.message.seq) for d in r.drain()] == [(1, 2), (3, 1)]


def test_cursor_reflects_the_frontier() -> None:
    r = Reconciler()
    assert r.cursor().epoch == 0 and dict(r.cursor().delivered) == {}
    r.apply_shard_map(ShardMap(ROOM, 3, (7, 8), {}, 10))
    r.receive([msg(7, 1), msg(7, 2), msg(8, 2)], now=0.0)
    cursor = r.cursor()
    assert cursor.epoch == 3 and dict(cursor.delivered) == {7: 2} == r.delivered


def test_buffer_bound_evicts_furthest_and_counts() -> None:
    r = Reconciler(max_buffered=3)
    r.apply_shard_map(ShardMap(ROOM, 1, (1, 2)))
    r.receive([msg(1, 5), msg(1, 9), msg(2, 3), msg(2, 2)], now=0.0)
    assert r.buffered == 3 and r.evicted == 1  # 1:9 is furthest ahead
    r.receive([msg(1, 9)], now=0.0)  # an evicted message is not a duplicate
    assert r.evicted == 2 and r.duplicates == 0
    # At most max_buffered seqs per call, nearest to each shard's frontier first.
    assert r.wanted(1.0) == [FetchRange(1, 1, 2), FetchRange(2, 1, 1)]
    assert r.wanted(1.0) == [FetchRange(1, 3, 4), FetchRange(1, 6, 6)]
    assert r.wanted(1.0) == [FetchRange(1, 7, 9)]
    assert r.wanted(1.0) == []


def test_full_stream_pauses_delivery_without_dropping() -> None:
    r = Reconciler(max_buffered=2)
    r.apply_shard_map(ShardMap(ROOM, 1, (1,)))
    r.receive([msg(1, 1), msg(1, 2), msg(1, 3), msg(1, 4)], now=0.0)
    assert r.delivered == {1: 2} and r.buffered == 2 and r.evicted == 0
    assert [d.message.seq for d in r.drain()] == [1, 2, 3, 4]


def test_dependency_on_another_shard_blocks_and_is_fetched() -> None:
    r = Reconciler(gap_timeout_s=0.05, refetch_after_s=1.0)
    r.apply_shard_map(ShardMap(ROOM, 1, (1, 2)))
    r.receive([msg(2, 1, {1: 3}), msg(1, 1)], now=0.0)
    assert [d.message.shard for d in r.drain()] == [1]
    assert r.wanted(0.01) == []
    assert r.wanted(0.06) == [FetchRange(1, 2, 3)]
    assert r.wanted(0.5) == []
    assert r.wanted(1.06) == [FetchRange(1, 2, 3)]  # asked again after refetch_after_s
    r.receive([msg(1, 3), msg(1, 2)], now=1.1)
    assert [(d.message.shard, d.message.seq) for d in r.drain()] == [(1, 2), (1, 3), (2, 1)]


def test_lost_stops_at_messages_already_held() -> None:
    r = Reconciler()
    r.apply_shard_map(ShardMap(ROOM, 1, (1, 2)))
    r.receive([msg(1, 3, {2: 1}), msg(1, 6)], now=0.0)
    assert r.lost(1, 10) == Gap(1, 1, 2)
    assert r.delivered == {1: 2} and r.buffered == 2  # 1:3 waits for 2:1, nothing skipped
    assert r.lost(1, 10) is None
    r.receive([msg(2, 1)], now=0.0)
    assert r.delivered == {1: 3, 2: 1}
    assert r.lost(1, 10) == Gap(1, 4, 5) and r.missed == 4
    assert r.delivered[1] == 6


def test_validation() -> None:
    with pytest.raises(LocalProtocolError):
        FetchRange(1, 3, 2)
    with pytest.raises(LocalProtocolError):
        Gap(1, 0, 2)
    with pytest.raises(LocalProtocolError):
        Delivered(msg(1, 1), (1, 2, 1))
    with pytest.raises(LocalProtocolError):
        Reconciler(max_buffered=0)
    r = Reconciler()
    r.apply_shard_map(ShardMap(ROOM, 1, (1, 2)))
    with pytest.raises(RemoteProtocolError):
        r.apply_shard_map(ShardMap(ROOM, 1, (1,)))
    with pytest.raises(RemoteProtocolError):
        r.apply_shard_map(ShardMap(ROOM, 2, (2,), {1: 1}, 1))  # shard 2 reused
    with pytest.raises(LocalProtocolError):
        r.apply_shard_map(ShardMap("other", 2, (3,)))
    with pytest.raises(RemoteProtocolError):
        r.receive([msg(1, 1), msg(2, 1, {2: 1})], now=0.0)
    assert r.buffered == 0 and r.delivered == {}  # the whole batch was refused
    with pytest.raises(LocalProtocolError):
        r.lost(-1, 3)


def test_ordered_keeps_the_last_max_history_by_key() -> None:
    r = Reconciler(max_history=2)
    r.apply_shard_map(ShardMap(ROOM, 1, (1, 2)))
    r.receive([msg(1, 1), msg(1, 2), msg(2, 1, {1: 2})], now=0.0)
    assert len(r.drain()) == 3
    assert [(m.shard, m.seq) for m in r.ordered()] == [(1, 2), (2, 1)]  # keys 2 and 3
