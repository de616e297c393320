"""The ``memory`` store: the :class:`~gateway.store.base.Store` contract with no durability.

Everything lives in this process and is gone when it ends, so it survives nothing: not a restart,
not a crash. It is for tests, and for a gateway that wants the reliable path's ordering, history and
retention without a disk. Bounded by retention like the SQLite store (:meth:`MemoryStore.trim`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Mapping, Sequence

from gateway.errors import LocalProtocolError
from gateway.store.base import Retention, check_limit, no_record, plan_append
from gateway.store.records import EpochRecord, RoomRecord, StoredMessage

__all__ = ["MemoryStore"]


class _Shard:
    """One shard's stored messages, ascending by seq (which is also their commit order)."""

    __slots__ = ("high_water", "ids", "last_stored", "messages", "seqs")

    def __init__(self) -> None:
        self.high_water = 0
        self.last_stored = 0
        self.ids: list[int] = []
        self.seqs: list[int] = []
        self.messages: list[StoredMessage] = []

    def keep(self, indexes: list[int]) -> None:
        self.ids = [self.ids[i] for i in indexes]
        self.seqs = [self.seqs[i] for i in indexes]
        self.messages = [self.messages[i] for i in indexes]


class MemoryStore:
    """A :class:`~gateway.store.base.Store` in memory. Single-threaded, like every store."""

    def __init__(self) -> None:
        self._rooms: dict[str, RoomRecord] = {}
        self._epochs: dict[str, dict[int, EpochRecord]] = {}
        self._shards: dict[str, dict[int, _Shard]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def _open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the store is closed")

    def append(
        self, batch: Sequence[StoredMessage], high_water: Mapping[tuple[str, int], int]
    ) -> None:
        self._open()
        plan = plan_append(batch, high_water)
        for step in plan:  # check everything before changing anything: all or nothing
            if step.room not in self._rooms:
                raise no_record(step.room)
            shard = self._shards.get(step.room, {}).get(step.shard)
            if step.messages and shard is not None and step.messages[0].seq <= shard.last_stored:
                raise LocalProtocolError(
                    f"room {step.room!r} shard {step.shard}: seq {step.messages[0].seq} is not "
                    f"above {shard.last_stored}, the last seq it stored"
                )
        for message in batch:  # in batch order: that is the commit order read_after follows
            shard = self._shards.setdefault(message.room, {}).setdefault(message.shard, _Shard())
            shard.ids.append(next(self._ids))
            shard.seqs.append(message.seq)
            shard.messages.append(message)
            shard.last_stored = message.seq
        for step in plan:
            shard = self._shards.setdefault(step.room, {}).setdefault(step.shard, _Shard())
            shard.high_water = max(shard.high_water, step.high_water)

    def put_room(self, record: RoomRecord) -> None:
        self._open()
        self._rooms[record.room] = record

    def put_epoch(self, record: EpochRecord) -> None:
        self._open()
        self._epochs.setdefault(record.room, {})[record.epoch] = record

    def rooms(self) -> list[RoomRecord]:
        self._open()
        return [self._rooms[name] for name in sorted(self._rooms)]

    def room(self, room: str) -> RoomRecord | None:
        self._open()
        return self._rooms.get(room)

    def known_rooms(self) -> list[str]:
        self._open()
        return sorted(set(self._rooms) | set(self._epochs) | set(self._shards))

    def epochs(self, room: str) -> list[EpochRecord]:
        self._open()
        epochs = self._epochs.get(room, {})
        return [epochs[e] for e in sorted(epochs)]

    def high_water(self, room: str) -> dict[int, int]:
        self._open()
        return {sid: s.high_water for sid, s in sorted(self._shards.get(room, {}).items())}

    def read(
        self, room: str, shard: int, from_seq: int, to_seq: int, limit: int
    ) -> list[StoredMessage]:
        self._open()
        limit = check_limit(limit)
        s = self._shards.get(room, {}).get(shard)
        if s is None:
            return []
        lo = bisect.bisect_left(s.seqs, from_seq)
        hi = min(bisect.bisect_right(s.seqs, to_seq), lo + limit)
        return s.messages[lo:hi] if lo < hi else []

    def read_after(self, room: str, after: Mapping[int, int], limit: int) -> list[StoredMessage]:
        self._open()
        limit = check_limit(limit)
        runs = []
        for shard_id, s in self._shards.get(room, {}).items():
            lo = bisect.bisect_right(s.seqs, after.get(shard_id, 0))
            hi = min(len(s.seqs), lo + limit)
            runs.append(zip(s.ids[lo:hi], s.messages[lo:hi], strict=True))
        merged = heapq.merge(*runs, key=lambda pair: pair[0])
        return [message for _, message in itertools.islice(merged, limit)]

    def read_before(self, room: str, before: Mapping[int, int], limit: int) -> list[StoredMessage]:
        self._open()
        limit = check_limit(limit)
        runs = []
        for shard_id, s in self._shards.get(room, {}).items():
            hi = bisect.bisect_left(s.seqs, before[shard_id]) if shard_id in before else len(s.seqs)
            lo = max(0, hi - limit)
            runs.append(zip(reversed(s.ids[lo:hi]), reversed(s.messages[lo:hi]), strict=True))
        merged = heapq.merge(*runs, key=lambda pair: pair[0], reverse=True)
        return [message for _, message in itertools.islice(merged, limit)]

    def trim(self, now_ms: int, retention: Retention, *, max_rows: int = 10_000) -> int:
        self._open()
        if max_rows < 1:
            raise LocalProtocolError("trim max_rows must be >= 1")
        dropped = self._trim_age(retention.cutoff_ms(now_ms), max_rows)
        dropped += self._trim_count(retention.max_messages_per_shard, max_rows - dropped)
        self._trim_epochs(retention.max_epochs_per_room)
        return dropped

    def close(self) -> None:
        self._closed = True

    # ---- retention ------------------------------------------------------------------------------

    def _trim_age(self, cutoff_ms: int | None, budget: int) -> int:
        if cutoff_ms is None or budget <= 0:
            return 0
        old = [
            (m.stored_at_ms, s.ids[i], s, i)
            for shards in self._shards.values()
            for s in shards.values()
            for i, m in enumerate(s.messages)
            if m.stored_at_ms < cutoff_ms
        ]
        doomed = heapq.nsmallest(budget, old, key=lambda t: (t[0], t[1]))
        by_shard: dict[int, tuple[_Shard, set[int]]] = {}
        for _, _, s, i in doomed:
            by_shard.setdefault(id(s), (s, set()))[1].add(i)
        for s, gone in by_shard.values():
            s.keep([i for i in range(len(s.ids)) if i not in gone])
        return len(doomed)

    def _trim_count(self, keep: int, budget: int) -> int:
        dropped = 0
        for shards in self._shards.values():
            for s in shards.values():
                excess = min(len(s.ids) - keep, budget - dropped)
                if excess > 0:
                    s.keep(list(range(excess, len(s.ids))))
                    dropped += excess
        return dropped

    def _trim_epochs(self, keep: int) -> None:
        for room, epochs in self._epochs.items():
            for epoch in sorted(epochs)[:-keep]:
                del epochs[epoch]
            if not epochs:
                continue
            oldest_shard = min(min(e.shards) for e in epochs.values())
            shards = self._shards.get(room, {})
            for shard_id in [sid for sid, s in shards.items() if sid < oldest_shard and not s.ids]:
                del shards[shard_id]
