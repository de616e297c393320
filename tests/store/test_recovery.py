"""A restart seals each room's last epoch at its high-water marks and never reuses a shard id."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.room import DEDUPE_WINDOW
from gateway.errors import LocalProtocolError
from gateway.store.base import Store
from gateway.store.records import EpochRecord, RoomRecord
from gateway.store.recovery import (
    RESTART_EPOCH_GAP,
    RESTART_ID_GAP,
    recover,
    recover_room,
    restart_epoch,
)
from gateway.store.sqlite import SqliteStore
from tests.store.factories import msg


def test_restart_seals_the_last_epoch_at_its_marks() -> None:
    epochs = [EpochRecord("r", 1, (1,), {}, 0), EpochRecord("r", 2, (2, 3, 4), {1: 10}, 10)]
    new = restart_epoch("r", epochs, {1: 10, 2: 7, 3: 0})
    # A gap above what is stored: clients may know an epoch the crash kept from the store.
    assert new == EpochRecord("r", 2 + RESTART_EPOCH_GAP, (1028, 1029, 1030), {2: 7}, 17)
    assert RESTART_ID_GAP == 1024
    assert restart_epoch("r", epochs, {9: 1}, shard_count=1).shards == (9 + 1024,)
    assert restart_epoch("r", [], {}) == EpochRecord("r", RESTART_EPOCH_GAP, (1024,), {}, 0)
    with pytest.raises(LocalProtocolError):
        restart_epoch("r", epochs, {}, shard_count=-1)


def test_recover_stores_the_restart_epoch_and_a_second_crash_seals_it(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.put_room(RoomRecord("lobby", 77, "group"))
    store.put_room(RoomRecord("quiet", 78, "live"))
    store.put_epoch(EpochRecord("lobby", 1, (1, 2), {}, 0))
    store.append([msg(3, shard=1), msg(5, shard=2)], {("lobby", 1): 4, ("lobby", 2): 6})

    lobby, quiet = recover(store)
    assert lobby.room == RoomRecord("lobby", 77, "group")
    assert lobby.current == EpochRecord(
        "lobby", 1 + RESTART_EPOCH_GAP, (1026, 1027), {1: 4, 2: 6}, 10
    )
    assert lobby.next_shard_id == 1028
    assert lobby.high_water == {1: 4, 2: 6}
    assert store.epochs("lobby")[-1] == lobby.current
    assert quiet.current == EpochRecord("quiet", RESTART_EPOCH_GAP, (1024,), {}, 0)

    store.append([msg(1, shard=1026)], {("lobby", 1026): 2})  # the restarted gateway ran a while
    lobby, _ = recover(store, shard_count=1)
    assert lobby.current == EpochRecord(
        "lobby", 1 + 2 * RESTART_EPOCH_GAP, (1027 + 1024,), {1026: 2}, 12
    )
    assert [e.epoch for e in lobby.epochs] == [1, 1 + RESTART_EPOCH_GAP, 1 + 2 * RESTART_EPOCH_GAP]
    assert [m.seq for m in store.read("lobby", 2, 1, 10, 10)] == [5]  # stored seqs untouched


def test_recover_returns_the_newest_stored_publishes_for_the_retry_window(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.put_room(RoomRecord("lobby", 77, "group"))
    store.put_epoch(EpochRecord("lobby", 1, (1,), {}, 0))
    store.put_epoch(EpochRecord("lobby", 2, (2, 3), {1: 5}, 5))
    store.append([msg(s, shard=1) for s in range(1, 6)], {("lobby", 1): 5})
    store.append([msg(s, shard=2) for s in range(1, 11)], {("lobby", 2): 10})
    store.append([msg(s, shard=3) for s in (1, 2)], {("lobby", 3): 3})  # seq 3 never stored

    (lobby,) = recover(store, dedupe_window=6)
    # The room's newest six in commit order, whatever shard or epoch; oldest first.
    assert [(p.shard, p.seq) for p in lobby.recent] == [
        (2, 7),
        (2, 8),
        (2, 9),
        (2, 10),
        (3, 1),
        (3, 2),
    ]
    assert {(p.sender, p.client_msg_id) for p in lobby.recent if p.shard == 3} == {
        ("alice", "c-lobby-3-1"),
        ("alice", "c-lobby-3-2"),
    }
    (again,) = recover(store)  # no window asked: nothing read
    assert again.recent == ()


def test_the_retry_window_after_restarts_holds_the_newest_publishes(
    make_store: Callable[[], Store],
) -> None:
    """Issue 21: 1,100 publishes in one shard; recovery read the oldest 1,000 and left out the
    newest, so their retries were stored twice. It must take the newest, across restarts."""
    store = make_store()
    store.put_room(RoomRecord("lobby", 77, "live"))
    store.put_epoch(EpochRecord("lobby", 1, (1,), {}, 0))
    for first in range(1, 1101, 100):
        store.append([msg(s) for s in range(first, first + 100)], {("lobby", 1): first + 99})
    for _ in range(3):  # restart after restart with nothing published between: still there
        (lobby,) = recover(store, dedupe_window=DEDUPE_WINDOW)
        assert [(p.shard, p.seq) for p in lobby.recent] == [(1, s) for s in range(1, 1101)]
        assert lobby.recent[-1].client_msg_id == "c-lobby-1-1100"
    (lobby,) = recover(store, dedupe_window=300)  # a window smaller than the room: the newest
    assert [p.seq for p in lobby.recent] == list(range(801, 1101))


def test_recovery_rebuilds_a_room_whose_record_was_never_stored(tmp_path: Path) -> None:
    """Issue 21: a room made while the disk was full had its messages stored but not its record;
    a restart must take the room up from what is stored (never refuse its next seq forever)."""
    path = tmp_path / "skein.db"
    store = SqliteStore(path)
    store.put_room(RoomRecord("group-1", 5, "group"))
    store.put_epoch(EpochRecord("group-1", 1, (1,), {}, 0))
    store.put_room(RoomRecord("group-2", 6, "group"))
    store.append([msg(s, room="group-1") for s in range(1, 8)], {("group-1", 1): 7})
    store.append([msg(s, room="group-2") for s in (1, 2)], {("group-2", 1): 3})
    store.close()
    with sqlite3.connect(path) as raw:  # what the full disk left: messages, no room records
        raw.execute("DELETE FROM rooms")
        raw.execute("DELETE FROM epochs WHERE room = 'group-1'")
    raw.close()

    store = SqliteStore(path)
    try:
        one, two = recover(store, mode_of=lambda name: "group")
        for rebuilt, last in ((one, 7), (two, 3)):
            assert rebuilt.room.mode == "group"
            assert rebuilt.current.sealed == {1: last}  # sealed at its mark: no seq reused
            assert min(rebuilt.current.shards) > 1
            assert len(rebuilt.current.shards) == 1
        assert store.rooms() == [one.room, two.room]
        new_shard = one.current.shards[0]
        store.append([msg(1, room="group-1", shard=new_shard)], {})  # seq 1 of a fresh shard
        again, _ = recover(store, mode_of=lambda name: "live")
        assert again.room == one.room  # stored now: the same incarnation from here on
        assert again.current.sealed == {new_shard: 1}
        history = store.read_after("group-1", {}, 100)
        assert [(m.shard, m.seq) for m in history] == [(1, s) for s in range(1, 8)] + [
            (new_shard, 1)
        ]
    finally:
        store.close()


def test_recover_room_takes_up_one_reclaimed_room_at_its_final_marks(
    make_store: Callable[[], Store],
) -> None:
    """A room reclaimed while idle: its final marks (chatter's seqs above its last stored one
    included) were recorded; taking it up seals there, keeps the incarnation and the retry
    window, and leaves every other room alone. A name the store knows nothing of is None."""
    store = make_store()
    assert recover_room(store, "never") is None
    assert store.room("never") is None
    store.put_room(RoomRecord("lobby", 77, "live"))
    store.put_room(RoomRecord("other", 78, "live"))
    store.put_epoch(EpochRecord("lobby", 1, (1,), {}, 0))
    store.append([msg(2, shard=1)], {("lobby", 1): 2})
    store.append([], {("lobby", 1): 9})  # the marks recorded when it was reclaimed
    assert store.room("lobby") == RoomRecord("lobby", 77, "live")

    taken = recover_room(store, "lobby", dedupe_window=DEDUPE_WINDOW)
    assert taken is not None and taken.room == RoomRecord("lobby", 77, "live")
    assert taken.current == EpochRecord("lobby", 1 + RESTART_EPOCH_GAP, (1025,), {1: 9}, 9)
    assert store.epochs("lobby")[-1] == taken.current
    assert [(p.shard, p.seq) for p in taken.recent] == [(1, 2)]
    assert store.epochs("other") == []  # untouched: only the room asked for

    again = recover_room(store, "lobby")  # reclaimed again with nothing new: one more epoch
    assert again is not None and again.current.sealed == {}
    assert min(again.current.shards) > max(taken.current.shards)


def test_recover_room_rebuilds_a_room_with_shard_maps_but_no_record(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    store.put_epoch(EpochRecord("lost", 1, (1,), {}, 0))  # its record write failed
    taken = recover_room(store, "lost", mode_of=lambda room: "group")
    assert taken is not None and taken.room.mode == "group"
    assert store.room("lost") == taken.room


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reshard", "restart", "crash_after_unstored_reshard"]),
            st.integers(1, 16),  # shard count of a reshard
            st.lists(st.integers(0, 50), min_size=16, max_size=16),  # marks the shards reach
        ),
        max_size=12,
    )
)
def test_maps_across_restarts_keep_what_protocol_md_promises_clients(
    steps: list[tuple[str, int, list[int]]],
) -> None:
    """docs/protocol.md 5.2 and 5.4: epoch numbers and shard ids only grow and are never reused
    (not consecutive across a restart), each map's ``sealed`` names the shards of the map before
    it, and ``base_sum(E) = base_sum(P) + sum(sealed(E))`` with P that map, not epoch E - 1;
    a map clients saw but the store never got is never reused by the restart after it."""
    stored = [EpochRecord("r", 1, (1,), {}, 0)]
    marks: dict[int, int] = {}
    seen_by_clients = list(stored)
    for action, count, reached in steps:
        last = stored[-1]
        for shard, mark in zip(last.shards, reached, strict=False):
            marks[shard] = max(marks.get(shard, 0), mark)
        if action == "restart":
            new = restart_epoch("r", stored, marks)
        else:  # what Room.reshard does: the next epoch, the next ids
            sealed = {s: marks[s] for s in last.shards if marks.get(s, 0) > 0}
            first = max(s for e in seen_by_clients for s in e.shards) + 1
            new = EpochRecord(
                "r",
                last.epoch + 1,
                tuple(range(first, first + count)),
                sealed,
                last.base_sum + sum(sealed.values()),
            )
            if action == "crash_after_unstored_reshard":  # clients got the map; the store not
                seen_by_clients.append(new)
                new = restart_epoch("r", stored, marks)
        assert new.epoch > max(e.epoch for e in seen_by_clients)
        assert min(new.shards) > max(s for e in seen_by_clients for s in e.shards)
        assert set(new.sealed) <= set(last.shards)
        assert all(new.sealed[s] == marks[s] > 0 for s in new.sealed)
        assert new.base_sum == last.base_sum + sum(new.sealed.values())
        stored.append(new)
        seen_by_clients.append(new)
