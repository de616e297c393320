"""A room: its shards, its epochs, and the messages waiting for the next fan-out tick.

Routing keeps sender affinity: within an epoch a sender always lands on the same shard (a stable hash
of the sender), so its messages keep their order by seq. Across a split or merge every shard of the
old epoch is sealed and the new shards' first messages depend on all of them (``ShardMap.sealed``),
so a sender's next message, wherever it lands, comes causally after its previous one.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from gateway.core.limits import TokenBucket
from gateway.core.shard import Entry, Shard
from gateway.core.sharder import ShardPolicy
from gateway.errors import ErrorCode, Rejected, RemoteProtocolError
from gateway.wire.frames import Cursor, Publish, ShardMap

__all__ = ["DEDUPE_WINDOW", "Published", "Room", "RoomMode"]

# Publishes per room remembered by (sender, client_msg_id), so a retry is acked, not resequenced.
DEDUPE_WINDOW = 4096


class RoomMode(Enum):
    """``live``: lossy chatter plus a reliable channel. ``group``: everything reliable."""

    LIVE = "live"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class Published:
    """The result of a publish: where it was sequenced, and whether it was a retry."""

    shard: int
    seq: int
    duplicate: bool
    entry: Entry | None


class Room:
    """One room's sequencing state. Sans-IO: time is passed in; nothing here sends anything."""

    def __init__(
        self,
        name: str,
        *,
        policy: ShardPolicy,
        now: float,
        mode: RoomMode = RoomMode.LIVE,
        log_messages: int = 10_000,
        epochs_kept: int = 16,
        dedupe_window: int = DEDUPE_WINDOW,
        initial_shards: int = 1,
        incarnation: int = 1,
    ) -> None:
        self.name = name
        self.incarnation = incarnation
        self.bucket: TokenBucket | None = None  # the room's publish rate (the hub sets it)
        self.mode = mode
        self.policy = policy
        self.subscribers: set[int] = set()
        self.fanned_out_at = float("-inf")  # when the room last sent a batch (the hub's clock)
        # When a subscriber last left (or the room was made): with fanned_out_at, when it went
        # idle, for reclaiming (gateway.core.reclaim).
        self.active_at = now
        self._rotation = 0
        self._log_messages = log_messages
        self._next_shard_id = 1
        self._maps: deque[ShardMap] = deque(maxlen=epochs_kept)
        self._shards: dict[int, Shard] = {}
        self._current: tuple[Shard, ...] = ()
        self._pending: list[Entry] = []
        self._undurable: set[tuple[int, int]] = set()  # pending (shard, seq) not yet stored
        self._recent: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()
        self._dedupe_window = dedupe_window
        self._start_epoch(initial_shards, {}, 0, now)

    def fan_out_order(self) -> tuple[int, ...]:
        """The subscribers in the order this batch serves them: each call starts one further
        along, so over a run of batches every subscriber is served early as often as late."""
        everyone = tuple(self.subscribers)
        if len(everyone) < 2:
            return everyone
        self._rotation = (self._rotation + 1) % len(everyone)
        k = self._rotation
        return everyone[k:] + everyone[:k]

    # ---- epochs ---------------------------------------------------------------------------------

    @property
    def shard_map(self) -> ShardMap:
        return self._maps[-1]

    @property
    def shard_maps(self) -> tuple[ShardMap, ...]:
        """Every epoch whose shards are still retained, oldest first."""
        return tuple(self._maps)

    @property
    def current_shards(self) -> tuple[Shard, ...]:
        return self._current

    def _start_epoch(self, count: int, sealed: dict[int, int], base_sum: int, now: float) -> None:
        epoch = self._maps[-1].epoch + 1 if self._maps else 1
        if len(self._maps) == self._maps.maxlen:
            for shard_id in self._maps[0].shards:  # the oldest epoch's logs go with its map
                self._shards.pop(shard_id, None)
        new = []
        for _ in range(count):
            shard = Shard(self._next_shard_id, log_messages=self._log_messages)
            self._next_shard_id += 1
            self._shards[shard.id] = shard
            new.append(shard)
        self._current = tuple(new)
        ids = tuple(s.id for s in new)
        self._maps.append(ShardMap(self.name, epoch, ids, sealed, base_sum))
        self.policy.reset(ids, now)

    def reshard(self, count: int, now: float) -> ShardMap:
        """Seal every current shard and start a new epoch with ``count`` shards.

        The caller must fan out what is pending (``take_pending``) *before* it sends the new map, so
        that subscribers see the old epoch's messages first; a room with messages still waiting to
        be stored can't reshard (``can_reshard``).
        """
        if self._pending:
            raise RuntimeError("take_pending() before reshard()")
        sealed = {}
        for shard in self._current:
            shard.sealed = True
            if shard.last_seq:
                sealed[shard.id] = shard.last_seq
        base_sum = self.shard_map.base_sum + sum(sealed.values())
        self._start_epoch(count, sealed, base_sum, now)
        return self.shard_map

    # ---- publishing -----------------------------------------------------------------------------

    def route(self, sender: str) -> Shard:
        """The shard this sender's messages go to in the current epoch (stable within an epoch)."""
        current = self._current
        if len(current) == 1:
            return current[0]
        return current[zlib.crc32(sender.encode()) % len(current)]

    def _own_deps(self, deps: Mapping[int, int], own: int) -> dict[int, int]:
        """Validate a publisher's clock; keep the current epoch's other shards only.

        Entries for sealed shards are dropped unchecked: the epoch's ``sealed`` map dominates them,
        and after a crash a client may rightly claim more of a sealed shard than the store knew
        (chatter is fanned out without waiting for the store, so a restart seals a shard at its
        last stored mark, which can be below what clients saw).
        """
        kept = {}
        current_ids = {s.id for s in self._current}
        for shard_id, seq in deps.items():
            shard = self._shards.get(shard_id)
            if shard is None:
                if 1 <= shard_id < self._next_shard_id:
                    continue  # an epoch that is no longer retained: long dominated
                raise RemoteProtocolError(
                    f"vector clock names shard {shard_id}, which room {self.name!r} never had",
                    code=ErrorCode.BAD_VECTOR_CLOCK,
                )
            if shard_id not in current_ids:
                continue
            shard.check_dep(seq)
            if shard_id != own:
                kept[shard_id] = seq
        return kept

    def publish(self, frame: Publish, sender: str, *, durable: bool = True) -> Published:
        """Sequence a publish (or recognise a retry of one). Raises RemoteProtocolError.

        ``durable=False`` holds the message (and everything after it in this room) back from
        fan-out until :meth:`stored` says it is in the durable log: store, then notify.
        """
        key = (sender, frame.client_msg_id)
        if frame.client_msg_id and (seen := self._recent.get(key)) is not None:
            return Published(seen[0], seen[1], True, None)
        shard = self.route(sender)
        deps = self._own_deps(frame.deps, shard.id) if frame.deps else {}
        entry = shard.sequence(
            deps=deps,
            sender=sender,
            client_msg_id=frame.client_msg_id,
            priority=frame.priority,
            body=frame.body,
            live=self.mode is RoomMode.LIVE,
        )
        if frame.client_msg_id:
            self.remember(sender, frame.client_msg_id, shard.id, entry.message.seq)
        self._pending.append(entry)
        if not durable:
            self._undurable.add((shard.id, entry.message.seq))
        return Published(shard.id, entry.message.seq, False, entry)

    def stored(self, shard: int, seq: int) -> None:
        """The message ``shard:seq`` is durable: it may be fanned out."""
        self._undurable.discard((shard, seq))

    def remember(self, sender: str, client_msg_id: str, shard: int, seq: int) -> None:
        """Put a sequenced publish in the retry window: a retry of it is acked as ``shard:seq``."""
        self._recent[(sender, client_msg_id)] = (shard, seq)
        if len(self._recent) > self._dedupe_window:
            self._recent.popitem(last=False)

    def forget(self, sender: str, client_msg_id: str) -> None:
        """Drop a publish from the retry window (its store write failed: a retry is new)."""
        self._recent.pop((sender, client_msg_id), None)

    @property
    def can_reshard(self) -> bool:
        return not self._pending and not self._undurable

    def take_pending(self) -> list[Entry]:
        """Hand over the messages ready for fan-out, in sequence order: everything up to the first
        one still waiting for the store. Marks them notified on their shards."""
        pending = self._pending
        if self._undurable:
            cut = next(
                (
                    i
                    for i, e in enumerate(pending)
                    if (e.message.shard, e.message.seq) in self._undurable
                ),
                len(pending),
            )
            ready, self._pending = pending[:cut], pending[cut:]
        else:
            ready, self._pending = pending, []
        shards = self._shards
        for entry in ready:
            shard = shards.get(entry.message.shard)
            if shard is not None:
                shard.notified_seq = entry.message.seq
        return ready

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    # ---- reading --------------------------------------------------------------------------------

    def frontier(self) -> dict[int, int]:
        """What a new subscriber starts from: what was already fanned out on the current shards,
        and the sealed seqs. Messages still pending will reach it with the next batch."""
        result = dict(self.shard_map.sealed)
        for shard in self._current:
            if shard.notified_seq:
                result[shard.id] = shard.notified_seq
        return result

    def marks(self) -> dict[int, int]:
        """The last seq of every retained shard that assigned any (sealed ones included)."""
        return {sid: shard.last_seq for sid, shard in self._shards.items() if shard.last_seq}

    def shard(self, shard_id: int) -> Shard:
        """A retained shard, or Rejected(OUT_OF_RANGE)."""
        shard = self._shards.get(shard_id)
        if shard is None:
            raise Rejected(
                f"room {self.name!r} has no shard {shard_id} (unknown or no longer retained)",
                code=ErrorCode.OUT_OF_RANGE,
            )
        return shard

    def replay(self, cursor: Cursor) -> tuple[list[bytes], list[tuple[int, int, int]]]:
        """What follows ``cursor``: the encoded messages the shard logs hold, and the ranges
        ``(shard, from_seq, to_seq)`` they no longer hold (in the durable store, or gone)."""
        held, older = self.replay_ranges(cursor)
        out = [e.encoded for sid, lo, hi in held for e in self._shards[sid].entries(lo, hi)]
        return out, older

    def replay_ranges(
        self, cursor: Cursor
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """What follows ``cursor``, as ranges ``(shard, from_seq, to_seq)``: those the shard logs
        hold, and those they no longer hold (in the durable store, or gone).

        A cursor of another incarnation of the room means nothing here: everything retained is
        replayed (the client starts the room afresh).
        """
        held: list[tuple[int, int, int]] = []
        older: list[tuple[int, int, int]] = []
        stale = cursor.incarnation not in (0, self.incarnation)
        for shard in self._shards.values():
            after = 0 if stale else cursor.delivered.get(shard.id, 0)
            if after >= shard.last_seq:
                continue
            first = shard.first_seq
            if first > after + 1:
                older.append((shard.id, after + 1, first - 1))
            lo = max(after + 1, first)
            if lo <= shard.last_seq:
                held.append((shard.id, lo, shard.last_seq))
        return held, older

    def restore(
        self, maps: list[ShardMap], high_water: Mapping[int, int], next_shard_id: int, now: float
    ) -> None:
        """Take up the room as a restarted gateway found it in the durable store.

        ``maps`` end with the restart epoch, whose shards start empty; every earlier shard is
        sealed at its high-water mark with an empty in-memory log (the store serves it).
        """
        kept = maps[-(self._maps.maxlen or len(maps)) :]
        self._maps.clear()
        self._shards.clear()
        for shard_map in kept:
            self._maps.append(shard_map)
            for shard_id in shard_map.shards:
                shard = Shard(shard_id, log_messages=self._log_messages)
                shard.last_seq = shard.notified_seq = high_water.get(shard_id, 0)
                shard.sealed = shard_map is not kept[-1]
                self._shards[shard_id] = shard
        self._current = tuple(self._shards[s] for s in kept[-1].shards)
        self._next_shard_id = next_shard_id
        self.policy.reset([s.id for s in self._current], now)
