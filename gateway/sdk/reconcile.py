"""Client-side causal delivery and the reconciled total order of one room (sans-IO).

The gateway sequences a room on shards (dense seqs 1, 2, 3, ... per shard) cut into epochs; each
:class:`~gateway.wire.frames.Message` carries ``deps`` for the other shards of its own epoch, and a
:class:`~gateway.wire.frames.ShardMap` gives an epoch's shards, the ``sealed`` last seqs of the
previous epoch and ``base_sum``. Messages may reach a client late, twice, out of order or never.
A :class:`Reconciler` turns whatever arrives into:

- a causal stream (:meth:`Reconciler.drain`): each message exactly once, never before anything it
  depends on;
- a total order (:meth:`Reconciler.ordered`) by ``(lamport, shard, seq)`` with
  ``lamport = base_sum(epoch) + sum(deps) + seq``: a linear extension of causality that every client
  holding the same messages agrees on, whatever order they arrived in;
- what to fetch (:meth:`Reconciler.wanted`) and explicit :class:`Gap` reports for what the gateway
  no longer has (:meth:`Reconciler.lost`). Nothing is skipped silently.

A message of shard S with seq k is *ready* when the map of S's epoch is known,
``delivered[S] == k - 1``, ``delivered[T] >= deps[T]`` for every T in deps and, when it is the
first of S delivered, ``delivered[T] >= sealed[T]`` for every T sealed by that epoch's map.

Live chatter may travel as QUIC datagrams, which can be lost: a message whose
``chatter_before`` is c is also ready with ``delivered[S] >= k - 1 - c`` when no earlier seq of S
is held; the chatter in between that never came is passed over (:attr:`Reconciler.passed`), not
waited for or fetched, and dropped as a duplicate if it comes later.

Nothing here does IO or reads a clock: callers pass ``now`` (seconds, any origin). Time is taken as
monotone: an earlier ``now`` than one already seen counts as the latest seen.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from gateway.wire.frames import Cursor, Message, ShardMap

__all__ = ["Delivered", "FetchRange", "Gap", "Reconciler"]

_Key = tuple[int, int]  # (shard, seq)

# Per shard, how many "first seen" time steps are kept. Over it the two oldest merge, keeping the
# older time: those seqs then look older and may be fetched a little sooner, never later.
_MAX_SEEN_STEPS = 64
# Per shard, how many asked ranges are remembered. At the cap the shard asks nothing new until some
# expire: re-asking early would break the refetch promise, so we wait instead.
_MAX_ASKED_PER_SHARD = 256


def _check_range(kind: str, shard: int, from_seq: int, to_seq: int) -> None:
    if shard < 0 or not 1 <= from_seq <= to_seq:
        raise LocalProtocolError(
            f"bad {kind} {shard}:{from_seq}..{to_seq}", code=ErrorCode.OUT_OF_RANGE
        )


@dataclass(frozen=True, slots=True)
class FetchRange:
    """Seqs ``from_seq..to_seq`` (inclusive) of ``shard`` to fetch from the gateway's log."""

    shard: int
    from_seq: int
    to_seq: int

    def __post_init__(self) -> None:
        _check_range("fetch range", self.shard, self.from_seq, self.to_seq)


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``from_seq..to_seq`` (inclusive) of ``shard`` that are lost for good.

    The log no longer has them; the reconciler has moved past them, so messages depending on them
    are delivered without them. The application decides what to show (e.g. "n messages missed").
    """

    shard: int
    from_seq: int
    to_seq: int

    def __post_init__(self) -> None:
        _check_range("gap", self.shard, self.from_seq, self.to_seq)

    @property
    def count(self) -> int:
        """How many messages were lost."""
        return self.to_seq - self.from_seq + 1


@dataclass(frozen=True, slots=True)
class Delivered:
    """A message in causal order, with its total-order ``key`` ``(lamport, shard, seq)``."""

    message: Message
    key: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.key[1:] != (self.message.shard, self.message.seq) or self.key[0] < self.message.seq:
            raise LocalProtocolError(f"key {self.key} does not belong to its message")


@dataclass(frozen=True, slots=True)
class _Epoch:
    shards: frozenset[int]
    sealed: Mapping[int, int]
    base_sum: int


def _bad_map(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=ErrorCode.INVALID_ARGUMENT)


def _history_key(d: Delivered) -> tuple[int, int, int]:
    return d.key


def _subtract(lo: int, hi: int, taken: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Yield the runs of ``lo..hi`` not covered by ``taken`` (inclusive ranges sorted by start)."""
    for a, b in taken:
        if b < lo:
            continue
        if a > hi:
            break
        if a > lo:
            yield lo, a - 1
        lo = max(lo, b + 1)
        if lo > hi:
            return
    yield lo, hi


class Reconciler:
    """Causal delivery, total order and gap repair for one room.

    Feed it shard maps (:meth:`apply_shard_map`) and messages (:meth:`receive`) in any order, take
    the causal stream with :meth:`drain`, send :meth:`wanted` as fetches, and report the gateway's
    ``first_available_seq`` answers with :meth:`lost`.

    Bounds (all memory that grows with traffic):

    - the buffer of messages not yet deliverable holds at most ``max_buffered``; beyond it the
      message furthest from delivery (highest ``seq - delivered[shard]``) is evicted and counted in
      :attr:`evicted`. Its seq stays known, so :meth:`wanted` fetches it again later.
    - the undrained causal stream holds at most ``max_buffered``; when it is full, delivery pauses
      (ready messages stay in the buffer, and count toward it) until :meth:`drain` makes room.
      Nothing delivered is ever dropped.
    - :meth:`ordered` keeps the last ``max_history`` delivered messages by key; older ones are
      trimmed from the front.
    - the wait and fetch indexes only refer to buffered messages or hold a constant per shard.

    Per-shard bookkeeping (frontier, epoch of each shard, highest seq known) grows with the number
    of shards the room ever had, which the gateway's epoch policy bounds, not with traffic.
    """

    __slots__ = (
        "_asked",
        "_behind",
        "_blocked",
        "_buffer",
        "_candidates",
        "_delivered",
        "_duplicates",
        "_epochs",
        "_evicted",
        "_first_seen",
        "_gap_timeout",
        "_history",
        "_known_last",
        "_latest_epoch",
        "_max_buffered",
        "_max_history",
        "_missed",
        "_now",
        "_outbox",
        "_passed",
        "_passed_untaken",
        "_refetch_after",
        "_room",
        "_seqs",
        "_shard_epoch",
        "_skipped",
        "_waiting",
    )

    def __init__(
        self,
        *,
        gap_timeout_s: float = 0.05,
        refetch_after_s: float = 1.0,
        max_buffered: int = 10_000,
        max_history: int = 10_000,
    ) -> None:
        if gap_timeout_s < 0 or refetch_after_s < 0:
            raise LocalProtocolError("gap_timeout_s and refetch_after_s must be >= 0")
        if max_buffered < 1 or max_history < 1:
            raise LocalProtocolError("max_buffered and max_history must be >= 1")
        self._gap_timeout = gap_timeout_s
        self._refetch_after = refetch_after_s
        self._max_buffered = max_buffered
        self._max_history = max_history
        self._room: str | None = None
        self._epochs: dict[int, _Epoch] = {}
        self._shard_epoch: dict[int, int] = {}
        self._latest_epoch = 0
        self._delivered: dict[int, int] = {}
        # Buffered messages by (shard, seq), and per shard their seqs sorted (for holes, eviction).
        self._buffer: dict[_Key, Message] = {}
        self._seqs: dict[int, list[int]] = {}
        # Buffered messages that may have become ready, oldest first; always a subset of _buffer.
        self._candidates: OrderedDict[_Key, None] = OrderedDict()
        # A buffered message blocked on another shard T waits here until delivered[T] >= q:
        # _waiting[T][q] holds its key and _blocked[key] == (T, q). One entry per blocked message.
        self._waiting: dict[int, dict[int, set[_Key]]] = {}
        self._blocked: dict[_Key, tuple[int, int]] = {}
        self._outbox: deque[Delivered] = deque()
        self._history: list[Delivered] = []
        # Highest seq known to exist per shard, and when each part of it was first known:
        # _first_seen[S] is a list of (upto, t): seqs (previous upto, upto] were first known at t.
        self._known_last: dict[int, int] = {}
        self._behind: set[int] = set()  # shards with known_last > delivered: wanted() scans these
        self._first_seen: dict[int, list[tuple[int, float]]] = {}
        # Ranges already asked for, per shard: (from, to, when).
        self._asked: dict[int, list[tuple[int, int, float]]] = {}
        self._now = float("-inf")
        self._duplicates = 0
        self._missed = 0
        self._evicted = 0
        self._skipped = 0
        self._passed = 0
        self._passed_untaken = 0

    # ---- state -----------------------------------------------------------------------------------

    @property
    def delivered(self) -> dict[int, int]:
        """A copy of the frontier: shard -> last seq delivered (shards with none are absent)."""
        return dict(self._delivered)

    @property
    def buffered(self) -> int:
        """Messages held but not yet delivered (at most ``max_buffered``)."""
        return len(self._buffer)

    @property
    def duplicates(self) -> int:
        """Messages dropped on arrival as already delivered (or skipped by a gap) or buffered."""
        return self._duplicates

    @property
    def missed(self) -> int:
        """Messages reported lost for good through :meth:`lost` (the sum of the gaps' counts)."""
        return self._missed

    @property
    def skipped(self) -> int:
        """Tombstones passed over: messages the gateway shed for this client."""
        return self._skipped

    @property
    def passed(self) -> int:
        """Live chatter passed over: seqs never received when a later message of their shard
        was delivered (lost on the way as datagrams, most likely)."""
        return self._passed

    def take_passed(self) -> int:
        """How much chatter was passed over since the last call (part of :attr:`passed`)."""
        taken, self._passed_untaken = self._passed_untaken, 0
        return taken

    @property
    def evicted(self) -> int:
        """Buffered messages dropped to respect ``max_buffered`` (they can be fetched again)."""
        return self._evicted

    def cursor(self) -> Cursor:
        """The resume point to send on re-join: the latest epoch known and the frontier."""
        return Cursor(epoch=self._latest_epoch, delivered=MappingProxyType(dict(self._delivered)))

    # ---- input -----------------------------------------------------------------------------------

    def apply_shard_map(self, sm: ShardMap) -> None:
        """Learn an epoch's shards, ``sealed`` and ``base_sum``; deliver what that makes ready.

        Idempotent. Raises :class:`LocalProtocolError` for a map of another room than the first
        one applied, and :class:`RemoteProtocolError` for a map contradicting one already applied
        (same epoch with other contents, or a shard id reused by another epoch).
        """
        if self._room is None:
            self._room = sm.room
        elif sm.room != self._room:
            raise LocalProtocolError(f"shard map of room {sm.room!r} given to {self._room!r}")
        info = _Epoch(frozenset(sm.shards), dict(sm.sealed), sm.base_sum)
        known = self._epochs.get(sm.epoch)
        if known is not None:
            if known != info:
                raise _bad_map(f"epoch {sm.epoch} announced twice with different shards")
            return
        if sm.base_sum < 0 or not info.shards.isdisjoint(info.sealed):
            raise _bad_map(f"epoch {sm.epoch}: negative base_sum or a shard sealed by itself")
        for shard in info.shards:
            if self._shard_epoch.get(shard, sm.epoch) != sm.epoch:
                raise _bad_map(
                    f"shard {shard} is in epochs {self._shard_epoch[shard]} and {sm.epoch}"
                )
        self._epochs[sm.epoch] = info
        self._latest_epoch = max(self._latest_epoch, sm.epoch)
        for shard in sorted(info.shards):
            self._shard_epoch[shard] = sm.epoch
            # The shard's next message was waiting for this map (nothing else wakes it).
            self._nominate_first(shard)
        # Sealed seqs are known to exist; stamped with the latest time seen (maps carry none).
        for shard, seq in info.sealed.items():
            self._learn(shard, seq)
        self._pump()

    def receive(self, messages: Iterable[Message], now: float) -> None:
        """Take messages in any order; buffer the new ones and deliver everything that is ready.

        A message already delivered, already passed by a gap, or already buffered is dropped and
        counted in :attr:`duplicates` (the first copy wins). Raises :class:`RemoteProtocolError`,
        before taking any of the batch, if a message lists its own shard in ``deps``.
        """
        batch = list(messages)
        for m in batch:
            if m.shard in m.deps:
                raise RemoteProtocolError(
                    f"message {m.shard}:{m.seq} depends on its own shard",
                    code=ErrorCode.BAD_VECTOR_CLOCK,
                )
        self._tick(now)
        for m in batch:
            self._accept(m)

    def lost(self, shard: int, first_available_seq: int) -> Gap | None:
        """Record that the gateway's log of ``shard`` starts at ``first_available_seq``.

        Moves the frontier of ``shard`` past the seqs that are missing there, i.e. from
        ``delivered + 1`` up to ``first_available_seq - 1`` but never past a message already held:
        held messages are delivered, not skipped. Returns the :class:`Gap` (also counted in
        :attr:`missed`) and delivers what became ready, or returns None if nothing was skipped.
        If held messages sit between further missing seqs, those are reported by a later call,
        once the frontier reaches them and the gateway says so again.
        """
        if shard < 0 or first_available_seq < 0:
            raise LocalProtocolError(f"bad lost report {shard}:{first_available_seq}")
        done = self._delivered.get(shard, 0)
        stop = first_available_seq - 1
        seqs = self._seqs.get(shard)
        if seqs:
            stop = min(stop, seqs[0] - 1)
        if stop <= done:
            return None
        gap = Gap(shard, done + 1, stop)
        self._missed += gap.count
        self._advance(shard, stop)
        self._pump()
        return gap

    def skip_to(self, frontier: Mapping[int, int]) -> None:
        """Start from ``frontier`` (shard -> seq): everything up to it counts as delivered.

        For a fresh join, whose live delivery begins after the room's frontier at that moment:
        earlier messages were never promised to this client, so they are neither delivered nor
        counted as missed. Buffered messages at or below the frontier are dropped.
        """
        for shard, upto in sorted(frontier.items()):
            if upto <= self._delivered.get(shard, 0):
                continue
            for seq in [q for q in self._seqs.get(shard, ()) if q <= upto]:
                key = (shard, seq)
                self._drop_seq(shard, seq)
                del self._buffer[key]
                self._candidates.pop(key, None)
                self._unblock(key)
            self._advance(shard, upto)
        self._pump()

    # ---- output ----------------------------------------------------------------------------------

    def drain(self) -> list[Delivered]:
        """Everything delivered since the last drain, in delivery order (a causal order).

        Also resumes delivery paused by a full stream, so one call returns all that is ready.
        """
        out: list[Delivered] = []
        while self._outbox:
            out.extend(self._outbox)
            self._outbox.clear()
            self._pump()
        return out

    def ordered(self) -> list[Message]:
        """The delivered messages in total order (the last ``max_history`` by key).

        Any two reconcilers that delivered the same messages return the same list. A message
        delivered after more than ``max_history`` others with larger keys falls in the trimmed
        front and is not shown here (it was still in :meth:`drain`).
        """
        return [d.message for d in self._history]

    def wanted(self, now: float) -> list[FetchRange]:
        """The ranges to fetch now, merged and sorted by (shard, from_seq).

        Asks for every seq that is known to exist (a higher seq of its shard, a ``deps`` entry or a
        ``sealed`` entry has been seen), is neither delivered nor buffered, and has been known for
        at least ``gap_timeout_s`` (shorter reordering is normal). A seq asked for is not asked for
        again until ``refetch_after_s`` has passed. At most ``max_buffered`` seqs per call (more
        could not be held): then the seqs nearest their shard's frontier go first, on every shard,
        since only those can unblock delivery (eviction drops the furthest, the mirror image).

        Liveness: with the maps known and ``max_buffered`` at least the number of shards of an
        epoch, serving every range asked (once ``refetch_after_s`` has passed since the previous
        round) delivers at least one message per round until everything known is delivered.
        """
        now = self._tick(now)
        runs = [
            (shard, lo, hi)
            for shard in sorted(self._behind)
            for lo, hi in self._fetchable(shard, now)
        ]
        out = [FetchRange(*run) for run in self._nearest_first(runs)]
        for r in out:
            self._asked.setdefault(r.shard, []).append((r.from_seq, r.to_seq, now))
        return out

    def _nearest_first(self, runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        """Clip ``runs`` (shard, lo, hi) to ``max_buffered`` seqs, keeping those nearest delivery.

        Keeps every seq at most D ahead of its frontier, for the largest D that fits the budget.
        """
        budget = self._max_buffered
        if sum(hi - lo + 1 for _, lo, hi in runs) <= budget:
            return runs
        ahead = [
            (s, lo - self._delivered.get(s, 0), hi - self._delivered.get(s, 0))
            for s, lo, hi in runs
        ]

        def count(limit: int) -> int:
            return sum(max(0, min(b, limit) - a + 1) for _, a, b in ahead)

        low, high = 0, max(b for _, _, b in ahead)  # count(low) <= budget < count(high)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if count(mid) <= budget else (low, mid)
        if count(low) == 0:
            # More shards are stalled than the budget allows: one seq each, oldest epoch first.
            # The earliest undelivered message causally is in the oldest epoch that has any, so
            # fetching that epoch's frontiers always unblocks something.
            nearest = sorted(runs, key=self._fallback_rank)
            return sorted((s, lo, lo) for s, lo, _ in nearest[:budget])
        return [
            (s, lo, min(hi, lo - a + low))
            for (s, lo, hi), (_, a, _) in zip(runs, ahead, strict=True)
            if a <= low
        ]

    # ---- receiving and delivering ----------------------------------------------------------------

    def _tick(self, now: float) -> float:
        if self._now == float("-inf"):
            # Maps applied before any time was given: their sealed seqs count as seen now.
            for shard, steps in self._first_seen.items():
                self._first_seen[shard] = [(upto, now) for upto, _ in steps]
        self._now = max(self._now, now)
        return self._now

    def _accept(self, m: Message) -> None:
        key = (m.shard, m.seq)
        if m.seq <= self._delivered.get(m.shard, 0) or key in self._buffer:
            self._duplicates += 1
            return
        self._learn(m.shard, m.seq)
        for shard, seq in m.deps.items():
            self._learn(shard, seq)
        self._buffer[key] = m
        bisect.insort(self._seqs.setdefault(m.shard, []), m.seq)
        self._nominate(key)
        self._pump()
        # One message in, at most one out: the buffer never exceeds max_buffered between calls.
        if len(self._buffer) > self._max_buffered:
            self._evict_one()

    def _nominate(self, key: _Key) -> None:
        """Queue ``key`` for a readiness check if it is buffered."""
        if key in self._buffer:
            self._candidates[key] = None

    def _nominate_first(self, shard: int) -> None:
        """Queue the lowest buffered message of ``shard``: the only one of it that can be next."""
        seqs = self._seqs.get(shard)
        if seqs:
            self._candidates[(shard, seqs[0])] = None

    def _pump(self) -> None:
        """Deliver ready candidates, cascading, until none is left or the stream is full."""
        while self._candidates and len(self._outbox) < self._max_buffered:
            key, _ = self._candidates.popitem(last=False)
            if self._is_ready(key):
                self._deliver(key)

    def _is_ready(self, key: _Key) -> bool:
        """Whether buffered ``key`` can be delivered now; if a dep blocks it, index it there."""
        shard, seq = key
        epoch = self._shard_epoch.get(shard)
        # Not ready yet: woken by its map (apply_shard_map) or by its predecessor (_advance).
        if epoch is None:
            return False
        done = self._delivered.get(shard, 0)
        m = self._buffer[key]
        if done != seq - 1 and (
            done < seq - 1 - m.chatter_before or self._seqs[shard][0] != seq
        ):  # missing seqs before it, not all of them chatter, or an earlier one is held
            return False
        # A tombstone's successor carries every dependency it had (per-shard clocks only grow),
        # so a tombstone waits only for its predecessor (and, as a first seq, the sealed seqs).
        blocker = None if m.shed else self._unmet(m.deps)
        if blocker is None and done == 0:
            blocker = self._unmet(self._epochs[epoch].sealed)
        if blocker is None:
            return True
        self._block(key, *blocker)
        return False

    def _unmet(self, clock: Mapping[int, int]) -> tuple[int, int] | None:
        for shard, seq in clock.items():
            if self._delivered.get(shard, 0) < seq:
                return shard, seq
        return None

    def _deliver(self, key: _Key) -> None:
        shard, seq = key
        m = self._buffer.pop(key)
        self._drop_seq(shard, seq)
        self._unblock(key)
        passed = seq - 1 - self._delivered.get(shard, 0)  # chatter that never came
        if passed:
            self._passed += passed
            self._passed_untaken += passed
        if m.shed:  # not sent to this client: counted, never shown, never fetched
            self._skipped += 1
            self._advance(shard, seq)
            return
        lamport = self._epochs[self._shard_epoch[shard]].base_sum + sum(m.deps.values()) + seq
        d = Delivered(m, (lamport, shard, seq))
        self._outbox.append(d)
        bisect.insort(self._history, d, key=_history_key)
        if len(self._history) > self._max_history:
            del self._history[0]
        self._advance(shard, seq)

    def _advance(self, shard: int, upto: int) -> None:
        """Move the frontier of ``shard`` to ``upto`` and nominate whoever that may unblock."""
        before = self._delivered.get(shard, 0)
        self._delivered[shard] = upto
        waiting = self._waiting.get(shard)
        if waiting:
            # Every entry has q > the frontier when it was indexed, so one step wakes only q == upto.
            due = [upto] if upto == before + 1 else [q for q in waiting if q <= upto]
            for q in due:
                for key in waiting.pop(q, ()):
                    del self._blocked[key]
                    self._nominate(key)
            if not waiting:
                del self._waiting[shard]
        self._nominate_first(shard)
        if upto >= self._known_last.get(shard, 0):
            self._behind.discard(shard)
        self._forget_below(shard, upto)

    def _block(self, key: _Key, shard: int, seq: int) -> None:
        self._unblock(key)
        self._blocked[key] = (shard, seq)
        self._waiting.setdefault(shard, {}).setdefault(seq, set()).add(key)

    def _unblock(self, key: _Key) -> None:
        entry = self._blocked.pop(key, None)
        if entry is None:
            return
        shard, seq = entry
        by_seq = self._waiting[shard]
        keys = by_seq[seq]
        keys.discard(key)
        if not keys:
            del by_seq[seq]
            if not by_seq:
                del self._waiting[shard]

    def _drop_seq(self, shard: int, seq: int) -> None:
        seqs = self._seqs[shard]
        del seqs[bisect.bisect_left(seqs, seq)]
        if not seqs:
            del self._seqs[shard]

    def _evict_one(self) -> None:
        """Drop the buffered message furthest ahead of its shard's frontier (highest seq on ties)."""
        shard, seqs = max(
            self._seqs.items(),
            key=lambda kv: (kv[1][-1] - self._delivered.get(kv[0], 0), kv[1][-1], kv[0]),
        )
        key = (shard, seqs[-1])
        self._drop_seq(*key)
        del self._buffer[key]
        self._candidates.pop(key, None)
        self._unblock(key)
        self._evicted += 1

    # ---- knowing what is missing -----------------------------------------------------------------

    def _learn(self, shard: int, seq: int) -> None:
        """Note that ``shard`` has at least ``seq`` seqs, first known now."""
        if seq <= max(self._known_last.get(shard, 0), self._delivered.get(shard, 0)):
            return
        self._known_last[shard] = seq
        self._behind.add(shard)
        steps = self._first_seen.setdefault(shard, [])
        if steps and steps[-1][1] == self._now:
            steps[-1] = (seq, self._now)
        else:
            steps.append((seq, self._now))
        if len(steps) > _MAX_SEEN_STEPS:
            steps[0:2] = [(steps[1][0], steps[0][1])]

    def _forget_below(self, shard: int, upto: int) -> None:
        """Drop first-seen steps that only concern seqs <= ``upto`` (now delivered or skipped).

        Asked ranges are pruned lazily by :meth:`_fetchable`, which rebuilds that list anyway.
        """
        steps = self._first_seen.get(shard)
        if steps:
            while steps and steps[0][0] <= upto:
                del steps[0]
            if not steps:
                del self._first_seen[shard]

    def _fetchable(self, shard: int, now: float) -> list[tuple[int, int]]:
        """The runs of ``shard`` to ask for now: known long enough, missing, not asked lately."""
        done = self._delivered.get(shard, 0)
        ripe = 0
        for upto, seen in self._first_seen.get(shard, ()):
            if now - seen < self._gap_timeout:
                break
            ripe = upto
        hi = min(ripe, self._known_last.get(shard, 0))
        if hi <= done:
            return []
        asked = [
            r
            for r in self._asked.pop(shard, ())
            if r[1] > done and now - r[2] < self._refetch_after
        ]
        if asked:
            self._asked[shard] = asked
        if len(asked) >= _MAX_ASKED_PER_SHARD:
            return []
        taken = sorted((a, b) for a, b, _ in asked)
        return [
            run for lo, hi_ in self._holes(shard, done + 1, hi) for run in _subtract(lo, hi_, taken)
        ]

    def _fallback_rank(self, run: tuple[int, int, int]) -> tuple[float, int, int]:
        shard, lo, _ = run
        epoch = self._shard_epoch.get(shard)
        return (math.inf if epoch is None else epoch), lo - self._delivered.get(shard, 0), shard

    def _holes(self, shard: int, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Yield the runs of ``lo..hi`` with no buffered message of ``shard``."""
        seqs = self._seqs.get(shard, [])
        i = bisect.bisect_left(seqs, lo)
        while lo <= hi:
            nxt = seqs[i] if i < len(seqs) else hi + 1
            if nxt > lo:
                yield lo, min(nxt - 1, hi)
            lo = nxt + 1
            i += 1
