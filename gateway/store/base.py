"""The durable store's seam: the :class:`Store` protocol, its configuration and the registry.

A store keeps, per room, the reliable path's messages (exact ``(shard, seq)``, never renumbered;
a shard's stored seqs may have holes where chatter was not stored), the room's record and shard
maps, and per shard a high-water mark: the last seq the shard is known to have assigned, stored or
not. That is what a restart needs (see :mod:`gateway.store.recovery`).

Stores are synchronous and single-threaded: one caller at a time, from any one thread at a time.
The asyncio server does not call them directly; :class:`~gateway.store.writer.StoreWriter` runs
every call on one worker thread and groups appends into commits.

A room's record comes first: :meth:`Store.append` refuses messages and marks of a room with no
stored record, so a room whose record write failed (a full disk) can never leave messages behind
that a restart would not know how to take up.

Errors: the caller's mistakes (a duplicate or out-of-order seq, a room with no record, a bad limit,
use after close) raise
:class:`~gateway.errors.LocalProtocolError`; failures of the store (I/O, corruption) raise
:class:`~gateway.store.records.StoreError`. A failed :meth:`Store.append` changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.errors import LocalProtocolError
from gateway.store.records import EpochRecord, RoomRecord, StoredMessage, check_mark

__all__ = [
    "FSYNC_LEVELS",
    "MAX_READ_LIMIT",
    "STORES",
    "Retention",
    "ShardAppend",
    "Store",
    "StoreConfig",
    "check_limit",
    "next_cursor",
    "no_record",
    "open_store",
    "plan_append",
    "prev_cursor",
]

MAX_READ_LIMIT = 1000
"""The most messages one read returns; larger limits are clipped to it."""

FSYNC_LEVELS = ("off", "normal", "full")
_WEEK_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """What :meth:`Store.trim` keeps.

    - ``max_age_s``: messages stored longer ago than this go (``math.inf``: no age limit).
    - ``max_messages_per_shard``: beyond this many stored messages in a shard, its oldest go.
    - ``max_epochs_per_room``: beyond this many shard maps in a room, its oldest go (the newest
      is always kept), and with them the high-water marks of their shards that hold no messages.
    """

    max_age_s: float = _WEEK_S
    max_messages_per_shard: int = 100_000
    max_epochs_per_room: int = 64

    def __post_init__(self) -> None:
        if not self.max_age_s > 0:
            raise ValueError(f"retention max_age_s must be positive, got {self.max_age_s!r}")
        if self.max_messages_per_shard < 1 or self.max_epochs_per_room < 1:
            raise ValueError("retention counts must be >= 1")

    def cutoff_ms(self, now_ms: int) -> int | None:
        """Messages with ``stored_at_ms`` below this are too old; None when age is unlimited."""
        if math.isinf(self.max_age_s):
            return None
        return now_ms - int(self.max_age_s * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """The durable store. Loaded from a ``[store]`` table; every field has a safe default.

    - ``kind``: the store by name (:data:`STORES`): ``sqlite`` (durable, the default) or ``memory``
      (no durability at all: for tests, and for a gateway that wants none; everything is lost when
      the process ends).
    - ``path``: the SQLite database file (its ``-wal`` and ``-shm`` files sit next to it); the
      directory is created if missing.
    - ``fsync``: when a commit reaches the disk. SQLite runs in WAL mode; an acked message is one
      whose commit returned.

      - ``off``: SQLite never syncs (``synchronous=OFF``). A commit has been written to the
        operating system when it returns, so it survives a crash of the gateway process
        (``kill -9``), but an operating-system crash or power loss can lose recent commits *and
        corrupt the database file*.
      - ``normal`` (default): ``synchronous=NORMAL``. As ``off`` for a process crash; on an
        operating-system crash or power loss the database stays consistent, but the latest commits
        may be lost (acked messages can vanish): SQLite syncs the WAL only at checkpoints, about
        every 4 MiB of WAL. A commit costs a write, no fsync.
      - ``full``: ``synchronous=FULL`` (and ``fullfsync`` on macOS): the WAL is fsynced before each
        commit returns, so acked messages survive power loss too, if the disk honours flushes.
        Group commit pays one fsync per batch, not per message.

    - ``retention_s``: stored messages older than this are trimmed (``inf``: never by age).
    - ``retention_messages_per_shard``: a shard keeps at most this many stored messages.
    - ``retention_epochs_per_room``: a room keeps at most this many shard maps (keep it at least
      the core's ``epochs_kept``).
    - ``trim_interval_s``: how often the server runs retention.
    - ``max_batch_messages``: the most messages one group commit takes (a single larger submission
      still commits whole).
    - ``max_queued_messages`` / ``max_queued_bytes``: the most messages, and bytes of them, waiting
      for a commit; beyond either, publishes that need durability are refused with
      ``RATE_LIMITED`` (see :class:`~gateway.store.writer.StoreWriter`).
    """

    kind: str = "sqlite"
    path: Path = Path("data/skein.db")
    fsync: str = "normal"
    retention_s: float = _WEEK_S
    retention_messages_per_shard: int = 100_000
    retention_epochs_per_room: int = 64
    trim_interval_s: float = 60.0
    max_batch_messages: int = 1000
    max_queued_messages: int = 100_000
    max_queued_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.kind not in STORES:
            known = ", ".join(sorted(STORES))
            raise ValueError(f"unknown store kind {self.kind!r}; known stores: {known}")
        if self.fsync not in FSYNC_LEVELS:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_LEVELS)}, got {self.fsync!r}")
        if not self.trim_interval_s > 0 or math.isinf(self.trim_interval_s):
            raise ValueError("trim_interval_s must be positive and finite")
        if not 1 <= self.max_batch_messages <= self.max_queued_messages:
            raise ValueError("need 1 <= max_batch_messages <= max_queued_messages")
        if self.max_queued_bytes < 1 << 16:
            raise ValueError("max_queued_bytes must be at least 65536")
        _ = self.retention  # building it validates the retention fields

    @property
    def retention(self) -> Retention:
        return Retention(
            max_age_s=self.retention_s,
            max_messages_per_shard=self.retention_messages_per_shard,
            max_epochs_per_room=self.retention_epochs_per_room,
        )


class Store(Protocol):
    """A durable log of the reliable path. Synchronous; one caller at a time (see module doc)."""

    def append(
        self, batch: Sequence[StoredMessage], high_water: Mapping[tuple[str, int], int]
    ) -> None:
        """Store ``batch`` and raise high-water marks, as one atomic group commit.

        All or nothing: when this returns, every message and mark is stored (durable as the fsync
        policy promises); when it raises, none is. ``high_water`` maps ``(room, shard)`` to the
        last seq the shard has assigned; marks only ever rise (a lower one is ignored) and a
        stored seq raises its shard's mark too. Within a shard, ``batch`` must hold strictly
        ascending seqs above every seq the shard ever stored (holes allowed), else
        LocalProtocolError. Every room ``batch`` or ``high_water`` names must have a stored record
        (:meth:`put_room`), else LocalProtocolError: a room is durable before any of its messages.
        An empty batch with marks only is fine. Raises StoreError on failure.
        """
        ...

    def put_room(self, record: RoomRecord) -> None:
        """Store a room's record, replacing any earlier one of that room. Durable on return."""
        ...

    def put_epoch(self, record: EpochRecord) -> None:
        """Store a shard map, replacing any of the same ``(room, epoch)``. Durable on return.

        Put an epoch before appending any message of its shards (the writer keeps that order).
        """
        ...

    def rooms(self) -> list[RoomRecord]:
        """Every stored room record, by room name."""
        ...

    def room(self, room: str) -> RoomRecord | None:
        """The room's stored record, or None."""
        ...

    def known_rooms(self) -> list[str]:
        """Every room the store holds anything of (a record, a shard map, a mark or a message), by
        name. A name without a record in :meth:`rooms` is an orphan, which only a store written
        before :meth:`append` required records can hold; recovery rebuilds it."""
        ...

    def epochs(self, room: str) -> list[EpochRecord]:
        """The room's retained shard maps, oldest epoch first (empty if none)."""
        ...

    def high_water(self, room: str) -> dict[int, int]:
        """Shard id -> high-water mark, for every shard of the room the store still tracks."""
        ...

    def read(
        self, room: str, shard: int, from_seq: int, to_seq: int, limit: int
    ) -> list[StoredMessage]:
        """The stored messages of one shard with ``from_seq <= seq <= to_seq``, ascending by seq,
        at most ``limit`` (clipped to :data:`MAX_READ_LIMIT`; below 1 is LocalProtocolError).
        Seqs that were never stored, or were trimmed, are simply absent."""
        ...

    def read_after(self, room: str, after: Mapping[int, int], limit: int) -> list[StoredMessage]:
        """History: the room's stored messages whose seq is above ``after.get(shard, 0)``, in
        commit order (the order of the appends that stored them, and within one append the
        batch's order; within a shard that is seq order), at most ``limit`` (clipped as in
        :meth:`read`). :func:`next_cursor` of the result continues exactly where it stopped,
        with nothing skipped or repeated."""
        ...

    def read_before(self, room: str, before: Mapping[int, int], limit: int) -> list[StoredMessage]:
        """The room's newest stored messages: those whose seq is below ``before[shard]`` (every
        one of a shard ``before`` does not name), newest first in commit order (the reverse of
        :meth:`read_after`), at most ``limit`` (clipped as in :meth:`read`); fewer only when no
        more are stored. :func:`prev_cursor` of the result continues exactly where it stopped,
        with nothing skipped or repeated. Recovery reads each room's retry window with it."""
        ...

    def trim(self, now_ms: int, retention: Retention, *, max_rows: int = 10_000) -> int:
        """Apply ``retention`` as of ``now_ms``; return how many messages were dropped.

        Deletes at most ``max_rows`` messages (oldest first) in one commit, so it never holds the
        store for long: call again while it returns ``max_rows``. High-water marks of shards of
        retained epochs stay. Raises StoreError on failure (then nothing changed).
        """
        ...

    def close(self) -> None:
        """Release the store. Idempotent; any later call raises LocalProtocolError."""
        ...


# ---- shared by the implementations --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardAppend:
    """What one append does to one shard: these messages (ascending) and this mark."""

    room: str
    shard: int
    messages: tuple[StoredMessage, ...]
    high_water: int


def plan_append(
    batch: Sequence[StoredMessage], high_water: Mapping[tuple[str, int], int]
) -> list[ShardAppend]:
    """Group an append by shard, checking what needs no stored state.

    Raises LocalProtocolError for a non-record, seqs not strictly ascending within a shard, or a
    bad high-water entry. The store must still check each shard's first seq against what it holds.
    """
    by_shard: dict[tuple[str, int], list[StoredMessage]] = {}
    for message in batch:
        if not isinstance(message, StoredMessage):
            raise LocalProtocolError(f"append takes StoredMessage records, got {message!r}")
        run = by_shard.setdefault((message.room, message.shard), [])
        if run and message.seq <= run[-1].seq:
            raise LocalProtocolError(
                f"room {message.room!r} shard {message.shard}: seq {message.seq} "
                f"after {run[-1].seq} in one batch (seqs must ascend)"
            )
        run.append(message)
    marks: dict[tuple[str, int], int] = {}
    for (room, shard), seq in high_water.items():
        check_mark(room, shard, seq)
        marks[room, shard] = seq
    for key, run in by_shard.items():
        marks[key] = max(marks.get(key, 0), run[-1].seq)
    return [
        ShardAppend(room, shard, tuple(by_shard.get((room, shard), ())), mark)
        for (room, shard), mark in marks.items()
    ]


def check_limit(limit: int) -> int:
    """``limit`` clipped to :data:`MAX_READ_LIMIT`; LocalProtocolError if it is below 1."""
    if not isinstance(limit, int) or limit < 1:
        raise LocalProtocolError(f"read limit must be an int >= 1, got {limit!r}")
    return min(limit, MAX_READ_LIMIT)


def next_cursor(after: Mapping[int, int], page: Iterable[StoredMessage]) -> dict[int, int]:
    """The history cursor after ``page`` (a :meth:`Store.read_after` result for ``after``)."""
    cursor = dict(after)
    for message in page:
        if message.seq > cursor.get(message.shard, 0):
            cursor[message.shard] = message.seq
    return cursor


def prev_cursor(before: Mapping[int, int], page: Iterable[StoredMessage]) -> dict[int, int]:
    """The cursor after ``page`` (a :meth:`Store.read_before` result for ``before``): per shard,
    the lowest seq read so far."""
    cursor = dict(before)
    for message in page:
        if message.shard not in cursor or message.seq < cursor[message.shard]:
            cursor[message.shard] = message.seq
    return cursor


def no_record(room: str) -> LocalProtocolError:
    """The refusal of an append that names ``room`` while the store holds no record of it."""
    return LocalProtocolError(
        f"room {room!r} has no stored record: its messages are refused until the record is stored"
    )


# ---- the registry -------------------------------------------------------------------------------


def _open_sqlite(config: StoreConfig) -> Store:
    from gateway.store.sqlite import SqliteStore

    return SqliteStore(config.path, fsync=config.fsync)


def _open_memory(config: StoreConfig) -> Store:
    from gateway.store.memory import MemoryStore

    return MemoryStore()


STORES: dict[str, Callable[[StoreConfig], Store]] = {
    "sqlite": _open_sqlite,
    "memory": _open_memory,
}
"""Store kinds by name. Each factory imports its implementation only when called."""


def open_store(config: StoreConfig) -> Store:
    """Open the store ``config.kind`` names. Raises StoreError if it can't be opened."""
    return STORES[config.kind](config)
