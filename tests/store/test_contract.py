"""The Store contract, run against every store kind (sqlite in tmp_path, memory)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, LocalProtocolError
from gateway.store.base import (
    MAX_READ_LIMIT,
    Retention,
    Store,
    StoreConfig,
    next_cursor,
    open_store,
    prev_cursor,
)
from gateway.store.records import EpochRecord, RoomRecord, StoredMessage
from tests.store.conftest import STORE_KINDS
from tests.store.factories import msg, with_rooms


def keys(messages: list[StoredMessage]) -> list[tuple[int, int]]:
    return [(m.shard, m.seq) for m in messages]


def test_read_returns_exact_seqs_with_holes(store: Store) -> None:
    store.append([msg(1), msg(2), msg(4), msg(7)], {("lobby", 1): 9})
    assert [m.seq for m in store.read("lobby", 1, 1, 100, 100)] == [1, 2, 4, 7]
    assert [m.seq for m in store.read("lobby", 1, 2, 5, 100)] == [2, 4]
    assert [m.seq for m in store.read("lobby", 1, 1, 100, 2)] == [1, 2]
    assert store.read("lobby", 1, 5, 6, 10) == []
    assert store.read("lobby", 2, 1, 100, 10) == []
    assert store.read("other", 1, 1, 100, 10) == []
    assert store.read("lobby", 1, 5, 1, 10) == []
    assert store.read("lobby", 1, 0, 1 << 70, 10)[0] == msg(1)  # ranges beyond int64 clip
    assert store.read("lobby", 1 << 70, 1, 10, 10) == []


def test_read_limits_are_clipped_and_checked(store: Store) -> None:
    store.append([msg(s) for s in range(1, MAX_READ_LIMIT + 21)], {})
    assert len(store.read("lobby", 1, 1, 1 << 40, 10**6)) == MAX_READ_LIMIT
    assert len(store.read_after("lobby", {}, 10**6)) == MAX_READ_LIMIT
    with pytest.raises(LocalProtocolError):
        store.read("lobby", 1, 1, 10, 0)
    with pytest.raises(LocalProtocolError):
        store.read_after("lobby", {}, -1)


def test_read_after_is_commit_order_and_pages_exactly(store: Store) -> None:
    store.append([msg(1, shard=1), msg(1, shard=2)], {})
    store.append([msg(2, shard=2), msg(3, shard=1)], {})
    store.append([msg(1, room="other")], {})
    store.append([msg(5, shard=1), msg(3, shard=2)], {})
    everything = [(1, 1), (2, 1), (2, 2), (1, 3), (1, 5), (2, 3)]
    assert keys(store.read_after("lobby", {}, 100)) == everything
    assert keys(store.read_after("lobby", {1: 3, 2: 1}, 100)) == [(2, 2), (1, 5), (2, 3)]
    assert keys(store.read_after("lobby", {1: 99, 2: 99}, 100)) == []
    pages: list[list[tuple[int, int]]] = []
    cursor: dict[int, int] = {}
    while page := store.read_after("lobby", cursor, 4):
        pages.append(keys(page))
        cursor = next_cursor(cursor, page)
    assert pages == [everything[:4], everything[4:]]
    assert cursor == {1: 5, 2: 3}


def test_seqs_must_rise_per_shard_and_duplicates_change_nothing(store: Store) -> None:
    store.append([msg(5)], {})
    for bad in ([msg(5)], [msg(3)], [msg(7), msg(6)], [msg(8), msg(8)]):
        with pytest.raises(LocalProtocolError):
            store.append(bad, {})
    store.append([msg(6)], {})
    assert [m.seq for m in store.read("lobby", 1, 1, 100, 100)] == [5, 6]


def test_a_failed_batch_changes_nothing_and_the_store_goes_on(store: Store) -> None:
    store.append([msg(1), msg(2)], {("lobby", 1): 3})
    batch = [msg(1, shard=2), msg(2, shard=2), msg(9), msg(2)]  # shard 1 seq 2 is stored already
    with pytest.raises(LocalProtocolError):
        store.append(batch, {("lobby", 1): 50, ("lobby", 3): 9})
    assert store.read("lobby", 2, 1, 100, 100) == []
    assert keys(store.read_after("lobby", {}, 100)) == [(1, 1), (1, 2)]
    assert store.high_water("lobby") == {1: 3}
    store.append([msg(1, shard=2), msg(9)], {})
    assert keys(store.read_after("lobby", {}, 100)) == [(1, 1), (1, 2), (2, 1), (1, 9)]


def test_high_water_only_rises_and_stored_seqs_raise_it(store: Store) -> None:
    store.append([], {("lobby", 1): 10, ("lobby", 2): 4, ("other", 1): 2})
    store.append([], {("lobby", 1): 7})
    store.append([msg(12, shard=2)], {})
    store.append([msg(1, shard=3)], {("lobby", 3): 0})
    assert store.high_water("lobby") == {1: 10, 2: 12, 3: 1}
    assert store.high_water("other") == {1: 2}
    assert store.high_water("nowhere") == {}
    with pytest.raises(LocalProtocolError):
        store.append([], {("bad room", 1): 1})
    with pytest.raises(LocalProtocolError):
        store.append([], {("lobby", 1): -1})


def test_rooms_and_epochs_are_stored_and_replaced(make_store: Callable[[], Store]) -> None:
    store = make_store()
    store.put_room(RoomRecord("zeta", 7, "group"))
    store.put_room(RoomRecord("alpha", 1, "live"))
    store.put_room(RoomRecord("zeta", 8, "live"))  # re-created: replaces
    assert store.rooms() == [RoomRecord("alpha", 1, "live"), RoomRecord("zeta", 8, "live")]
    second = EpochRecord("alpha", 2, (2, 3), {1: 40}, 40)
    store.put_epoch(second)
    store.put_epoch(EpochRecord("alpha", 1, (1,), {}, 0))
    assert [e.epoch for e in store.epochs("alpha")] == [1, 2]
    assert store.epochs("alpha")[1] == second
    assert store.epochs("zeta") == []
    assert store.known_rooms() == ["alpha", "zeta"]


def test_a_room_is_stored_before_any_of_its_messages(make_store: Callable[[], Store]) -> None:
    """Issue 21: a room whose record write failed must not get messages stored, or a restart
    finds messages of a room it does not know and can never sequence it again."""
    store = make_store()
    store.put_epoch(EpochRecord("group-1", 1, (1,), {}, 0))  # its record failed; its map did not
    for batch, marks in (([msg(1, room="group-1")], {}), ([], {("group-1", 1): 3})):
        with pytest.raises(LocalProtocolError, match="no stored record"):
            store.append(batch, marks)
    store.put_room(RoomRecord("lobby2", 1, "group"))
    with pytest.raises(LocalProtocolError, match="'group-1' has no stored record"):
        store.append([msg(1, room="lobby2"), msg(1, room="group-1")], {})  # all or nothing
    assert store.high_water("group-1") == {} and store.read_after("lobby2", {}, 10) == []
    assert store.known_rooms() == ["group-1", "lobby2"]  # the map alone makes it an orphan
    store.put_room(RoomRecord("group-1", 9, "group"))
    store.append([msg(1, room="group-1")], {("group-1", 1): 3})
    assert store.high_water("group-1") == {1: 3}


def test_read_before_is_newest_first_in_commit_order_and_pages_exactly(store: Store) -> None:
    store.append([msg(1, shard=1), msg(1, shard=2)], {})
    store.append([msg(2, shard=2), msg(3, shard=1)], {})
    store.append([msg(1, room="other")], {})
    store.append([msg(5, shard=1), msg(3, shard=2)], {})
    newest = [(2, 3), (1, 5), (1, 3), (2, 2), (2, 1), (1, 1)]
    assert keys(store.read_before("lobby", {}, 100)) == newest
    assert keys(store.read_before("lobby", {1: 5, 2: 2}, 100)) == [(1, 3), (2, 1), (1, 1)]
    assert keys(store.read_before("lobby", {1: 1, 2: 1}, 100)) == []
    assert keys(store.read_before("lobby", {1: 1 << 70, 2: -5}, 100)) == [(1, 5), (1, 3), (1, 1)]
    assert store.read_before("nowhere", {}, 10) == []
    pages: list[list[tuple[int, int]]] = []
    cursor: dict[int, int] = {}
    while page := store.read_before("lobby", cursor, 4):
        pages.append(keys(page))
        cursor = prev_cursor(cursor, page)
    assert pages == [newest[:4], newest[4:]]
    assert cursor == {1: 1, 2: 1}
    store.append([msg(s, shard=3) for s in range(1, MAX_READ_LIMIT + 21)], {})
    page = store.read_before("lobby", {}, 10**6)
    assert len(page) == MAX_READ_LIMIT and page[0].seq == MAX_READ_LIMIT + 20  # newest, clipped
    with pytest.raises(LocalProtocolError):
        store.read_before("lobby", {}, 0)


def test_trim_by_age_keeps_marks_and_the_seq_floor(store: Store) -> None:
    store.append([msg(1, at_ms=1_000), msg(2, at_ms=5_000), msg(3, at_ms=20_000)], {})
    store.append([msg(1, shard=2, at_ms=2_000)], {})
    dropped = store.trim(21_000, Retention(max_age_s=10.0))
    assert dropped == 3
    assert keys(store.read_after("lobby", {}, 100)) == [(1, 3)]
    assert store.high_water("lobby") == {1: 3, 2: 1}
    with pytest.raises(LocalProtocolError):
        store.append([msg(2)], {})  # trimmed seqs are never stored again
    assert store.trim(21_000, Retention(max_age_s=float("inf"), max_messages_per_shard=1)) == 0


def test_trim_by_count_drops_each_shards_oldest(store: Store) -> None:
    store.append([msg(s) for s in range(1, 11)] + [msg(1, shard=2)], {})
    assert store.trim(0, Retention(max_messages_per_shard=3)) == 7
    assert [m.seq for m in store.read("lobby", 1, 1, 100, 100)] == [8, 9, 10]
    assert [m.seq for m in store.read("lobby", 2, 1, 100, 100)] == [1]
    store.append([msg(11)], {})
    assert store.trim(0, Retention(max_messages_per_shard=3)) == 1
    assert [m.seq for m in store.read("lobby", 1, 1, 100, 100)] == [9, 10, 11]


def test_trim_works_in_bounded_chunks(store: Store) -> None:
    store.append([msg(s, at_ms=s) for s in range(1, 11)], {})
    old = Retention(max_age_s=1.0)
    assert [store.trim(100_000, old, max_rows=4) for _ in range(4)] == [4, 4, 2, 0]
    assert store.read("lobby", 1, 1, 100, 100) == []


def test_trim_keeps_the_newest_epochs_and_their_marks(store: Store) -> None:
    for epoch in range(1, 6):  # epoch e has shards 2e-1, 2e
        store.put_epoch(EpochRecord("lobby", epoch, (2 * epoch - 1, 2 * epoch), {}, 0))
    store.append([msg(1, shard=3)], {("lobby", s): 5 for s in range(1, 11)})
    store.trim(0, Retention(max_epochs_per_room=2))
    assert [e.epoch for e in store.epochs("lobby")] == [4, 5]
    # Shards 1, 2, 4, 5, 6 belong to dropped epochs and hold nothing; 3 still holds a message.
    assert sorted(store.high_water("lobby")) == [3, 7, 8, 9, 10]


def test_a_closed_store_refuses_calls(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(LocalProtocolError):
        store.append([msg(1)], {})
    with pytest.raises(LocalProtocolError):
        store.rooms()


# A batch is a list of shard ids (1..3); each gets the shard's next seq, skipping some (chatter).
batches = st.lists(
    st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=0, max_size=6),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("kind", STORE_KINDS)
@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    batches=batches,
    page=st.integers(1, 7),
    start=st.dictionaries(st.integers(1, 3), st.integers(0, 20)),
)
def test_paging_history_yields_every_message_once_in_commit_order(
    kind: str, batches: list[list[tuple[int, int]]], page: int, start: dict[int, int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = with_rooms(open_store(StoreConfig(kind=kind, path=Path(tmp) / "p.db")))
        try:
            last = {1: 0, 2: 0, 3: 0}
            committed = []
            for batch in batches:
                messages = []
                for shard, step in batch:
                    last[shard] += step
                    messages.append(msg(last[shard], shard=shard))
                store.append(messages, {})
                committed += keys(messages)
            expected = [(s, q) for s, q in committed if q > start.get(s, 0)]
            seen, cursor = [], dict(start)
            while chunk := store.read_after("lobby", cursor, page):
                assert len(chunk) <= page
                seen += keys(chunk)
                cursor = next_cursor(cursor, chunk)
            assert seen == expected
        finally:
            store.close()


def test_store_errors_are_gateway_errors() -> None:
    assert issubclass(LocalProtocolError, GatewayError)
