"""What only the SQLite store does: persist across reopen, roll back for real, refuse bad files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store.records import EpochRecord, RoomRecord, StoreError
from gateway.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.store.factories import msg, with_rooms


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "skein.db"
    store = SqliteStore(path)
    store.put_room(RoomRecord("lobby", 12345, "group"))
    store.put_epoch(EpochRecord("lobby", 1, (1, 2), {}, 0))
    store.append([msg(1), msg(3), msg(2, shard=2)], {("lobby", 1): 4})
    store.close()
    store = SqliteStore(path)
    try:
        assert store.rooms() == [RoomRecord("lobby", 12345, "group")]
        assert store.epochs("lobby") == [EpochRecord("lobby", 1, (1, 2), {}, 0)]
        assert store.high_water("lobby") == {1: 4, 2: 2}
        assert store.read_after("lobby", {}, 10) == [msg(1), msg(3), msg(2, shard=2)]
        store.append([msg(5)], {})  # the seq floor survived too
        with pytest.raises(Exception, match="not above"):
            store.append([msg(4)], {})
    finally:
        store.close()


def test_a_failing_insert_rolls_the_whole_batch_back(tmp_path: Path) -> None:
    path = tmp_path / "skein.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as raw:  # a row the store's bookkeeping doesn't know about
        raw.execute(
            "INSERT INTO messages (room, shard, seq, stored_at_ms, record) VALUES (?, ?, ?, ?, ?)",
            ("lobby", 1, 7, 0, b"\x01"),
        )
    raw.close()
    store = with_rooms(SqliteStore(path))
    try:
        with pytest.raises(StoreError, match="UNIQUE"):
            store.append([msg(1, shard=2), msg(5), msg(6), msg(7), msg(8)], {("lobby", 3): 9})
        assert store.read("lobby", 2, 1, 100, 100) == []
        assert store.high_water("lobby") == {}
        store.append([msg(8), msg(1, shard=2)], {})
        assert [m.seq for m in store.read("lobby", 1, 8, 100, 100)] == [8]
    finally:
        store.close()


def test_a_corrupt_record_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "skein.db"
    store = with_rooms(SqliteStore(path))
    store.append([msg(1)], {})
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE messages SET record = ?", (b"\x01\xc1",))
    raw.close()
    try:
        with pytest.raises(StoreError, match="undecodable"):
            store.read("lobby", 1, 1, 1, 1)
    finally:
        store.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "skein.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="schema version"):
        SqliteStore(path)


def test_an_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        SqliteStore(tmp_path)  # a directory


@pytest.mark.parametrize(("fsync", "level"), [("off", 0), ("normal", 1), ("full", 2)])
def test_fsync_levels_set_wal_and_synchronous(tmp_path: Path, fsync: str, level: int) -> None:
    store = SqliteStore(tmp_path / "skein.db", fsync=fsync)
    try:
        db = store._db
        assert db is not None
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        store.close()
