"""loadgen.stats and loadgen.tracker: histogram merging, the steady/handoff split, the checks."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.wire.frames import Message, Priority
from loadgen.payload import (
    FLAG_HANDOFF,
    HEADER_BYTES,
    Payload,
    decode_body,
    encode_body,
    handoff_flags,
    handoff_kind,
)
from loadgen.scenario import HANDOFF_KINDS
from loadgen.stats import (
    HIGHEST_US,
    MIXED,
    Recorder,
    Summary,
    decode,
    encode,
    in_handoff_window,
    merge,
    merge_encoded,
    new_histogram,
    record_us,
)
from loadgen.tracker import MAX_OUT_OF_ORDER, ClientTracker, RoomTracker, SeenSet

MS = 1_000_000  # ns


def _same(a: Any, b: Any) -> None:
    for p in (0.0, 10.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        assert a.get_value_at_percentile(p) == b.get_value_at_percentile(p)
    assert a.get_total_count() == b.get_total_count()
    assert a.get_max_value() == b.get_max_value()
    assert a.get_min_value() == b.get_min_value()


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(1, 50_000_000), min_size=1, max_size=300),
    workers=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_merging_encoded_worker_histograms_equals_one_histogram(
    values: list[int], workers: int, seed: int
) -> None:
    single = new_histogram()
    parts = [new_histogram() for _ in range(workers)]
    rng = random.Random(seed)
    for value in values:
        record_us(single, value)
        record_us(parts[rng.randrange(workers)], value)
    merged = merge_encoded(encode(p) for p in parts)
    _same(merged, single)
    _same(decode(encode(single)), single)


def test_recorders_merge_into_the_same_percentiles_as_one_recorder() -> None:
    rng = random.Random(3)
    one = Recorder(origin_ns=0, bucket_s=1.0)
    workers = [Recorder(origin_ns=0, bucket_s=1.0) for _ in range(3)]
    for i in range(3000):
        at = rng.randrange(0, 10_000) * MS
        latency = int(rng.lognormvariate(3, 1) * MS)
        handoff = rng.random() < 0.3
        one.latency(latency, at, handoff=handoff)
        workers[i % 3].latency(latency, at, handoff=handoff)
        one.gap(latency, "blackout")
        workers[i % 3].gap(latency, "blackout")
    merged, alone = merge(w.snapshot() for w in workers), merge([one.snapshot()])
    for name in ("latency_steady", "latency_handoff", "gap", "gap:blackout"):
        _same(merged.histograms[name], alone.histograms[name])
    assert merged.timeline.keys() == alone.timeline.keys()
    assert len(merged.timeline) == 10
    for bucket in merged.timeline:
        _same(merged.timeline[bucket], alone.timeline[bucket])
    assert merged.summary("latency_steady") == alone.summary("latency_steady")
    assert merged.summary("latency_steady").count + merged.summary("latency_handoff").count == 3000


def test_summary_and_clamping() -> None:
    assert Summary.of(new_histogram()) == Summary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    h = new_histogram()
    for ms in range(1, 101):
        record_us(h, ms * 1000)
    s = Summary.of(h)
    assert s.count == 100
    assert s.p50_ms == pytest.approx(50, rel=0.01)
    assert s.p99_ms == pytest.approx(99, rel=0.01)
    assert s.max_ms == pytest.approx(100, rel=0.01)
    assert record_us(h, HIGHEST_US * 10) is True  # clamped, still counted
    assert h.get_total_count() == 101
    assert record_us(h, 0) is False  # below the range: counted at the bottom
    assert h.get_total_count() == 102


def test_handoff_window_boundaries() -> None:
    assert not in_handoff_window(5 * MS, None, 2000 * MS)
    assert in_handoff_window(10 * MS, 10 * MS, 2000 * MS)
    assert in_handoff_window(2010 * MS, 10 * MS, 2000 * MS)
    assert not in_handoff_window(2011 * MS, 10 * MS, 2000 * MS)
    assert not in_handoff_window(9 * MS, 10 * MS, 2000 * MS)  # before the handoff


def _message(
    shard: int,
    seq: int,
    publisher: int,
    n: int,
    sent_ns: int,
    *,
    deps: dict[int, int] | None = None,
    flags: int = 0,
) -> Message:
    body = encode_body(Payload(sent_ns, publisher, n, flags), 64)
    return Message(shard, seq, deps or {}, f"p{publisher}", f"m{n}", Priority.HIGH, body)


def test_steady_and_handoff_split_and_delivery_gap() -> None:
    recorder = Recorder(origin_ns=0, bucket_s=1.0)
    client = ClientTracker(recorder, window_s=2.0)
    client.joined("r", {})
    client.delivered("r", _message(1, 1, 7, 1, 0), 10 * MS)  # steady
    client.handoff(1000 * MS, "blackout")
    client.delivered("r", _message(1, 2, 7, 2, 900 * MS), 1500 * MS)  # first after: gap 500 ms
    client.delivered("r", _message(1, 3, 7, 3, 2900 * MS), 3000 * MS)  # in the window
    client.delivered("r", _message(1, 4, 7, 4, 3050 * MS), 3100 * MS)  # after the window
    # Sent while the publisher was in its window: handoff, though the receiver is steady.
    client.delivered("r", _message(1, 5, 8, 1, 3150 * MS, flags=FLAG_HANDOFF), 3200 * MS)
    merged = merge([recorder.snapshot()])
    assert merged.summary("latency_steady").count == 2
    assert merged.summary("latency_handoff").count == 3
    assert merged.summary("latency_handoff").max_ms == pytest.approx(600, rel=0.01)
    gap = merged.summary("gap:blackout")
    assert gap.count == 1 and gap.max_ms == pytest.approx(500, rel=0.01)
    assert merged.summary("interarrival").count == 1  # 3000 -> 3100 ms, the one steady step
    assert merged.marks == [(1.0, "blackout")]
    assert recorder.counters["order_violations"] == 0 and recorder.counters["delivered"] == 5


def test_a_handoff_without_a_delivery_is_counted() -> None:
    recorder = Recorder(origin_ns=0, bucket_s=1.0)
    client = ClientTracker(recorder, window_s=1.0)
    client.joined("r", {})
    client.handoff(0, "migrate")
    client.handoff(5 * MS, "reconnect")
    client.finish()
    assert recorder.counters["gap_no_delivery"] == 2
    assert "gap" not in merge([recorder.snapshot()]).counters


def test_order_violations_duplicates_and_foreign_messages() -> None:
    recorder = Recorder(origin_ns=0, bucket_s=1.0)
    client = ClientTracker(recorder, window_s=1.0)
    client.joined("r", {1: 10, 2: 4})  # a fresh join starts from the room's frontier
    client.delivered("r", _message(1, 11, 1, 1, 0, deps={2: 4}), MS)
    client.delivered("r", _message(2, 5, 2, 1, 0, deps={1: 11}), MS)
    assert recorder.counters["order_violations"] == 0
    client.delivered("r", _message(1, 13, 1, 2, 0), MS)  # skipped seq 12
    client.delivered("r", _message(2, 6, 2, 2, 0, deps={1: 99}), MS)  # dep not yet delivered
    assert recorder.counters["order_violations"] == 2
    client.delivered("r", _message(1, 14, 1, 2, 0), MS)  # the same (publisher, n) again
    assert recorder.counters["duplicates"] == 1
    client.delivered("r", Message(1, 15, {}, "x", "y", Priority.NORMAL, b"not ours"), MS)
    client.delivered("other", _message(1, 1, 1, 9, 0), MS)
    assert recorder.counters["foreign"] == 2
    assert client.rooms["r"].received == [0, 0, 4]


def test_seen_set_out_of_order_and_bound() -> None:
    seen = SeenSet()
    assert seen.add(2) == (True, False)
    assert seen.add(1) == (True, False)
    assert seen.floor == 2 and not seen.above
    assert seen.add(2) == (False, False)
    for n in range(4, 4 + MAX_OUT_OF_ORDER):
        assert seen.add(n) == (True, False)
    new, overflowed = seen.add(10 * MAX_OUT_OF_ORDER)
    assert new and overflowed and len(seen.above) <= MAX_OUT_OF_ORDER


def test_room_tracker_counts_by_priority() -> None:
    room = RoomTracker({})
    assert room.first_copy(1, 1, int(Priority.CHATTER)) == (True, False)
    assert room.first_copy(1, 1, int(Priority.CHATTER)) == (False, False)
    assert room.first_copy(2, 1, int(Priority.NORMAL)) == (True, False)
    assert room.received == [1, 1, 0]


def test_payload_round_trip() -> None:
    payload = Payload(123_456_789_012, 42, 7, FLAG_HANDOFF)
    body = encode_body(payload, 300)
    assert len(body) == 300
    assert decode_body(body) == payload
    assert len(encode_body(payload, 1)) == HEADER_BYTES
    assert decode_body(b"hello, world, this is a normal chat message") is None


def test_handoff_flags_carry_the_kind() -> None:
    for kind in HANDOFF_KINDS:
        flags = handoff_flags(kind)
        assert flags & FLAG_HANDOFF
        assert handoff_kind(flags) == kind
        body = encode_body(Payload(1, 2, 3, flags), 64)
        decoded = decode_body(body)
        assert decoded is not None and handoff_kind(decoded.flags) == kind
    assert handoff_flags(None) == 0 and handoff_kind(0) is None
    assert handoff_kind(FLAG_HANDOFF) is None  # a publisher that did not say which kind
    assert handoff_kind(FLAG_HANDOFF | 0b111 << 1) is None  # a kind this version does not know
    with pytest.raises(ValueError):
        handoff_flags("teleport")


def test_handoff_samples_are_kept_per_kind_and_two_kinds_at_once_apart() -> None:
    recorder = Recorder(origin_ns=0, bucket_s=1.0)
    client = ClientTracker(recorder, window_s=1.0)
    client.joined("r", {})
    client.delivered("r", _message(1, 1, 7, 1, 0), 10 * MS)  # steady
    client.handoff(1000 * MS, "migrate")
    assert client.window_kind(1500 * MS) == "migrate" and client.window_kind(2500 * MS) is None
    client.delivered("r", _message(1, 2, 7, 2, 1000 * MS), 1040 * MS)  # receiver migrating: 40
    # Both in a migrate window: migrate.
    migrating = handoff_flags("migrate")
    client.delivered("r", _message(1, 3, 9, 1, 1100 * MS, flags=migrating), 1150 * MS)  # 50
    # The receiver migrating, its publisher in a blackout: neither kind alone explains it.
    flags = handoff_flags("blackout")
    client.delivered("r", _message(1, 4, 8, 1, 1100 * MS, flags=flags), 1400 * MS)  # 300
    # Receiver steady again, publisher within a blackout window: the publisher's kind.
    client.delivered("r", _message(1, 5, 8, 2, 2500 * MS, flags=flags), 2800 * MS)  # 300
    # Publisher in a window of a kind it did not say: handoff, under no kind.
    client.delivered("r", _message(1, 6, 8, 3, 3000 * MS, flags=FLAG_HANDOFF), 3010 * MS)
    client.handoff(4000 * MS, "reconnect")
    client.delivered("r", _message(1, 7, 7, 3, 4000 * MS), 4100 * MS)  # 100
    merged = merge([recorder.snapshot()])
    assert merged.summary("latency_steady").count == 1
    assert merged.summary("latency_handoff").count == 6
    migrate = merged.summary("latency_handoff:migrate")
    assert migrate.count == 2 and migrate.max_ms == pytest.approx(50, rel=0.01)
    assert migrate.p50_ms == pytest.approx(40, rel=0.01)
    mixed = merged.summary(f"latency_handoff:{MIXED}")
    assert mixed.count == 1 and mixed.max_ms == pytest.approx(300, rel=0.01)
    blackout = merged.summary("latency_handoff:blackout")
    assert blackout.count == 1 and blackout.max_ms == pytest.approx(300, rel=0.01)
    assert merged.summary("latency_handoff:reconnect").count == 1
    assert "latency_handoff:nat_rebind" not in merged.histograms


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.integers(0, 5000),  # receive time, ms
            st.integers(0, 400),  # latency, ms
            st.sampled_from([None, *HANDOFF_KINDS]),  # the publisher's window kind
            st.sampled_from([None, *HANDOFF_KINDS]),  # a handoff of the receiver just before
        ),
        max_size=60,
    )
)
def test_per_kind_and_mixed_counts_add_up_to_the_handoff_count(
    events: list[tuple[int, int, str | None, str | None]],
) -> None:
    recorder = Recorder(origin_ns=0, bucket_s=1.0)
    client = ClientTracker(recorder, window_s=0.5)
    client.joined("r", {})
    for n, (at_ms, latency_ms, publisher_kind, own) in enumerate(
        sorted(events, key=lambda e: e[0]), start=1
    ):
        if own is not None:
            client.handoff(at_ms * MS, own)
        sent = (at_ms - latency_ms) * MS
        message = _message(1, n, 1, n, sent, flags=handoff_flags(publisher_kind))
        client.delivered("r", message, at_ms * MS)
    merged = merge([recorder.snapshot()])
    per_kind = sum(merged.summary(f"latency_handoff:{k}").count for k in (*HANDOFF_KINDS, MIXED))
    assert per_kind == merged.summary("latency_handoff").count
    assert per_kind + merged.summary("latency_steady").count == len(events)
