"""A restart seals each room's last epoch at its high-water marks and never reuses a shard id."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.errors import LocalProtocolError
from gateway.store.base import Store
from gateway.store.records import EpochRecord, RoomRecord
from gateway.store.recovery import RESTART_EPOCH_GAP, RESTART_ID_GAP, recover, restart_epoch
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
    # The last two epochs' shards share the window (2 each), newest seqs of each.
    assert sorted((p.shard, p.seq) for p in lobby.recent) == [
        (1, 4),
        (1, 5),
        (2, 9),
        (2, 10),
        (3, 2),
    ]
    assert {(p.sender, p.client_msg_id) for p in lobby.recent if p.shard == 2} == {
        ("alice", "c-lobby-2-9"),
        ("alice", "c-lobby-2-10"),
    }
    (again,) = recover(store)  # no window asked: nothing read
    assert again.recent == ()
