"""The ``sqlite`` store: the embedded default, SQLite (stdlib ``sqlite3``) in WAL mode.

One connection, used by one thread at a time (the :class:`~gateway.store.writer.StoreWriter`'s
worker; it is opened with ``check_same_thread=False`` so that thread need not be the one that
opened it). Statements are constant strings, so ``sqlite3`` prepares each once and reuses it.

Tables:

- ``messages``: ``id INTEGER PRIMARY KEY`` is the commit order (a new row gets the largest rowid
  plus one, so it sorts after every row present; an alias of the rowid, it survives VACUUM),
  ``UNIQUE (room, shard, seq)`` is the message key, ``stored_at_ms`` (indexed) serves age
  retention and ``record`` is the msgpack-encoded :class:`StoredMessage`.
- ``shards``: per ``(room, shard)``: ``high_water``, ``last_stored`` (the highest seq ever stored,
  never lowered by trimming: a later append must stay above it) and ``stored`` (how many messages
  are held, for count retention).
- ``rooms`` and ``epochs``: the encoded records, by ``room`` and ``(room, epoch)``; ``epochs`` also
  keeps each epoch's lowest shard id, to know which shards' marks retention may drop.

``PRAGMA user_version`` holds the schema version; a database from a newer Skein is refused.
"""

from __future__ import annotations

import heapq
import itertools
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from operator import itemgetter
from pathlib import Path

from gateway.errors import LocalProtocolError
from gateway.store.base import Retention, check_limit, no_record, plan_append
from gateway.store.records import (
    EpochRecord,
    RoomRecord,
    StoredMessage,
    StoreError,
    decode_epoch,
    decode_message,
    decode_room,
    encode_epoch,
    encode_message,
    encode_room,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

SCHEMA_VERSION = 1
WAL_LIMIT_BYTES = 64 << 20  # the WAL file is truncated to this after a checkpoint
_MAX_SEQ = (1 << 63) - 1
_MAX_SHARD = (1 << 32) - 1
_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL"}

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS rooms (
    room TEXT PRIMARY KEY, record BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    room TEXT NOT NULL, epoch INTEGER NOT NULL, min_shard INTEGER NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (room, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shards (
    room TEXT NOT NULL, shard INTEGER NOT NULL, high_water INTEGER NOT NULL,
    last_stored INTEGER NOT NULL, stored INTEGER NOT NULL,
    PRIMARY KEY (room, shard)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, room TEXT NOT NULL, shard INTEGER NOT NULL, seq INTEGER NOT NULL,
    stored_at_ms INTEGER NOT NULL, record BLOB NOT NULL,
    UNIQUE (room, shard, seq)
);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (stored_at_ms);
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

_LAST_STORED = "SELECT last_stored FROM shards WHERE room = ? AND shard = ?"
_INSERT_MESSAGE = (
    "INSERT INTO messages (room, shard, seq, stored_at_ms, record) VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_SHARD = """
INSERT INTO shards (room, shard, high_water, last_stored, stored) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (room, shard) DO UPDATE SET
    high_water = MAX(high_water, excluded.high_water),
    last_stored = MAX(last_stored, excluded.last_stored),
    stored = stored + excluded.stored
"""
_READ = (
    "SELECT record FROM messages WHERE room = ? AND shard = ? AND seq BETWEEN ? AND ? "
    "ORDER BY seq LIMIT ?"
)
_READ_AFTER = (
    "SELECT id, record FROM messages WHERE room = ? AND shard = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_READ_BEFORE = (
    "SELECT id, record FROM messages WHERE room = ? AND shard = ? AND seq <= ? "
    "ORDER BY seq DESC LIMIT ?"
)
_HAS_ROOM = "SELECT 1 FROM rooms WHERE room = ?"
_KNOWN_ROOMS = (
    "SELECT room FROM rooms UNION SELECT room FROM epochs UNION SELECT room FROM shards "
    "ORDER BY room"
)
_ROOM_SHARDS = "SELECT shard, last_stored FROM shards WHERE room = ? AND stored > 0"
_OLD = (
    "SELECT id, room, shard FROM messages WHERE stored_at_ms < ? ORDER BY stored_at_ms, id LIMIT ?"
)
_DELETE_ID = "DELETE FROM messages WHERE id = ?"
_UNCOUNT = "UPDATE shards SET stored = stored - ? WHERE room = ? AND shard = ?"
_OVERFULL = "SELECT room, shard, stored FROM shards WHERE stored > ?"
_DELETE_OLDEST = (
    "DELETE FROM messages WHERE id IN "
    "(SELECT id FROM messages WHERE room = ? AND shard = ? ORDER BY seq LIMIT ?)"
)
_EPOCH_HEAVY = "SELECT room FROM epochs GROUP BY room HAVING COUNT(*) > ?"
_DELETE_EPOCHS = (
    "DELETE FROM epochs WHERE room = ? AND epoch <= "
    "(SELECT epoch FROM epochs WHERE room = ? ORDER BY epoch DESC LIMIT 1 OFFSET ?)"
)
_DELETE_MARKS = (
    "DELETE FROM shards WHERE stored = 0 AND shard < "
    "(SELECT MIN(min_shard) FROM epochs WHERE epochs.room = shards.room)"
)


class SqliteStore:
    """A :class:`~gateway.store.base.Store` in one SQLite database file (WAL mode).

    ``fsync`` is one of ``off``, ``normal``, ``full``; what each survives is documented on
    :class:`~gateway.store.base.StoreConfig`. Raises StoreError if the database can't be opened,
    isn't in WAL mode, or was written by a newer schema.
    """

    def __init__(self, path: Path | str, *, fsync: str = "normal") -> None:
        if fsync not in _SYNCHRONOUS:
            raise LocalProtocolError(f"unknown fsync level {fsync!r}")
        self.path = Path(path)
        self.fsync = fsync
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, cached_statements=64
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from exc
        try:
            self._setup(self._db)
        except BaseException:
            self.close()
            raise

    def _setup(self, db: sqlite3.Connection) -> None:
        with self._guard("open"):
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path} cannot use WAL mode (journal_mode is {mode})")
            db.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.fsync]}")
            if self.fsync == "full":
                db.execute("PRAGMA fullfsync = ON")  # macOS: F_FULLFSYNC; ignored elsewhere
                db.execute("PRAGMA checkpoint_fullfsync = ON")
            db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")
            db.execute("PRAGMA busy_timeout = 5000")  # outside readers (the sqlite3 shell)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; this Skein knows {SCHEMA_VERSION}"
                )
            if version < SCHEMA_VERSION:
                db.executescript(_SCHEMA)

    @contextmanager
    def _guard(self, what: str) -> Iterator[sqlite3.Connection]:
        """The open connection; SQLite's errors become StoreError."""
        if self._db is None:
            raise LocalProtocolError("the store is closed")
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise StoreError(f"store {what} failed: {exc}") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block completes, else rolled back."""
        with self._guard(what) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                # If ROLLBACK fails too, SQLite has already rolled back; the first error matters.
                if db.in_transaction:
                    with suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise

    # ---- writing --------------------------------------------------------------------------------

    def append(
        self, batch: Sequence[StoredMessage], high_water: Mapping[tuple[str, int], int]
    ) -> None:
        plan = plan_append(batch, high_water)
        # Rows go in in batch order: that is the commit order read_after follows.
        rows = [(m.room, m.shard, m.seq, m.stored_at_ms, encode_message(m)) for m in batch]
        marks = [
            (
                s.room,
                s.shard,
                s.high_water,
                s.messages[-1].seq if s.messages else 0,
                len(s.messages),
            )
            for s in plan
        ]
        with self._transaction("append") as db:
            for room in {step.room for step in plan}:
                if db.execute(_HAS_ROOM, (room,)).fetchone() is None:
                    raise no_record(room)
            for step in plan:
                if not step.messages:
                    continue
                row = db.execute(_LAST_STORED, (step.room, step.shard)).fetchone()
                if row is not None and step.messages[0].seq <= row[0]:
                    raise LocalProtocolError(
                        f"room {step.room!r} shard {step.shard}: seq {step.messages[0].seq} is "
                        f"not above {row[0]}, the last seq it stored"
                    )
            db.executemany(_INSERT_MESSAGE, rows)
            db.executemany(_UPSERT_SHARD, marks)

    def put_room(self, record: RoomRecord) -> None:
        with self._guard("put_room") as db:
            db.execute(
                "INSERT OR REPLACE INTO rooms (room, record) VALUES (?, ?)",
                (record.room, encode_room(record)),
            )

    def put_epoch(self, record: EpochRecord) -> None:
        with self._guard("put_epoch") as db:
            db.execute(
                "INSERT OR REPLACE INTO epochs (room, epoch, min_shard, record) VALUES (?, ?, ?, ?)",
                (record.room, record.epoch, min(record.shards), encode_epoch(record)),
            )

    # ---- reading --------------------------------------------------------------------------------

    def rooms(self) -> list[RoomRecord]:
        with self._guard("rooms") as db:
            rows = db.execute("SELECT record FROM rooms ORDER BY room").fetchall()
        return [decode_room(r[0]) for r in rows]

    def room(self, room: str) -> RoomRecord | None:
        with self._guard("room") as db:
            row = db.execute("SELECT record FROM rooms WHERE room = ?", (room,)).fetchone()
        return None if row is None else decode_room(row[0])

    def known_rooms(self) -> list[str]:
        with self._guard("known_rooms") as db:
            rows = db.execute(_KNOWN_ROOMS).fetchall()
        return [r[0] for r in rows]

    def epochs(self, room: str) -> list[EpochRecord]:
        with self._guard("epochs") as db:
            rows = db.execute(
                "SELECT record FROM epochs WHERE room = ? ORDER BY epoch", (room,)
            ).fetchall()
        return [decode_epoch(r[0]) for r in rows]

    def high_water(self, room: str) -> dict[int, int]:
        with self._guard("high_water") as db:
            rows = db.execute(
                "SELECT shard, high_water FROM shards WHERE room = ? ORDER BY shard", (room,)
            ).fetchall()
        return {shard: seq for shard, seq in rows}

    def read(
        self, room: str, shard: int, from_seq: int, to_seq: int, limit: int
    ) -> list[StoredMessage]:
        limit = check_limit(limit)
        lo, hi = max(from_seq, 0), min(to_seq, _MAX_SEQ)
        if lo > hi or not 0 <= shard <= _MAX_SHARD:  # (SQLite can't even bind a larger int)
            return []
        with self._guard("read") as db:
            rows = db.execute(_READ, (room, shard, lo, hi, limit)).fetchall()
        return [decode_message(r[0]) for r in rows]

    def read_after(self, room: str, after: Mapping[int, int], limit: int) -> list[StoredMessage]:
        limit = check_limit(limit)
        with self._guard("read_after") as db:
            cursors = []
            try:
                for shard, last_stored in db.execute(_ROOM_SHARDS, (room,)).fetchall():
                    start = min(max(after.get(shard, 0), 0), _MAX_SEQ)
                    if last_stored > start:
                        cursors.append(db.execute(_READ_AFTER, (room, shard, start, limit)))
                # Within a shard seq order is commit order, so merging the shards' runs by rowid
                # reads only what the page needs.
                merged = heapq.merge(*cursors, key=itemgetter(0))
                rows = list(itertools.islice(merged, limit))
            finally:
                for cursor in cursors:
                    cursor.close()
        return [decode_message(r[1]) for r in rows]

    def read_before(self, room: str, before: Mapping[int, int], limit: int) -> list[StoredMessage]:
        limit = check_limit(limit)
        with self._guard("read_before") as db:
            cursors = []
            try:
                for shard, _ in db.execute(_ROOM_SHARDS, (room,)).fetchall():
                    below = min(before.get(shard, _MAX_SEQ + 1), _MAX_SEQ + 1) - 1
                    if below >= 1:
                        cursors.append(db.execute(_READ_BEFORE, (room, shard, below, limit)))
                # Each shard's run is newest first (seq order is commit order within a shard), so
                # merging by descending rowid reads only what the page needs.
                merged = heapq.merge(*cursors, key=itemgetter(0), reverse=True)
                rows = list(itertools.islice(merged, limit))
            finally:
                for cursor in cursors:
                    cursor.close()
        return [decode_message(r[1]) for r in rows]

    # ---- retention ------------------------------------------------------------------------------

    def trim(self, now_ms: int, retention: Retention, *, max_rows: int = 10_000) -> int:
        if max_rows < 1:
            raise LocalProtocolError("trim max_rows must be >= 1")
        with self._transaction("trim") as db:
            dropped = self._trim_age(db, retention.cutoff_ms(now_ms), max_rows)
            dropped += self._trim_count(db, retention.max_messages_per_shard, max_rows - dropped)
            for (room,) in db.execute(_EPOCH_HEAVY, (retention.max_epochs_per_room,)).fetchall():
                db.execute(_DELETE_EPOCHS, (room, room, retention.max_epochs_per_room))
            db.execute(_DELETE_MARKS)
        return dropped

    @staticmethod
    def _trim_age(db: sqlite3.Connection, cutoff_ms: int | None, budget: int) -> int:
        if cutoff_ms is None or budget <= 0:
            return 0
        old = db.execute(_OLD, (max(cutoff_ms, 0), budget)).fetchall()
        db.executemany(_DELETE_ID, ((row_id,) for row_id, _, _ in old))
        per_shard = Counter((room, shard) for _, room, shard in old)
        db.executemany(_UNCOUNT, ((n, room, shard) for (room, shard), n in per_shard.items()))
        return len(old)

    @staticmethod
    def _trim_count(db: sqlite3.Connection, keep: int, budget: int) -> int:
        dropped = 0
        for room, shard, stored in db.execute(_OVERFULL, (keep,)).fetchall():
            excess = min(stored - keep, budget - dropped)
            if excess <= 0:
                break
            db.execute(_DELETE_OLDEST, (room, shard, excess))
            db.execute(_UNCOUNT, (excess, room, shard))
            dropped += excess
        return dropped

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
