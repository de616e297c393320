"""What one simulated client checks about the messages it receives (sans-IO, time passed in).

Per room, a :class:`RoomTracker` checks the causal order of what the SDK delivers against its own
frontier (shard -> last seq delivered, starting from the ``Joined`` frontier): a message must have
``seq == frontier[shard] + 1`` and every ``deps[T] <= frontier[T]``; anything else is an order
violation. It also drops duplicates by (publisher, n) and counts distinct messages per priority,
for the loss check at the end.

A :class:`ClientTracker` holds a client's rooms and handoff state: it classifies each latency
sample as steady or handoff, and a handoff sample by kind (see :mod:`loadgen.stats`), and measures
the delivery gap per handoff (from the handoff's start to the next message delivered to the
client).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.wire.frames import Message
from loadgen.payload import FLAG_HANDOFF, decode_body, handoff_kind
from loadgen.stats import MIXED, Recorder, in_handoff_window

__all__ = ["MAX_OUT_OF_ORDER", "ClientTracker", "RoomTracker", "SeenSet"]

_PRIORITY_NAMES = ("chatter", "normal", "high")  # loadgen.scenario.PRIORITIES, by wire value

MAX_OUT_OF_ORDER = 4096
"""Numbers above a publisher's contiguous prefix remembered per (room, publisher). Past it the
floor jumps to the lowest remembered number (so a late copy of a skipped number is not recognised
as a duplicate) and ``dedupe_overflow`` is counted."""


class SeenSet:
    """Which numbers 1, 2, 3, ... have been seen: a contiguous floor plus the few above it.

    A publisher's messages usually arrive in order, so this stays O(1) per publisher.
    """

    __slots__ = ("above", "floor")

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] = set()

    def __contains__(self, n: object) -> bool:
        """Whether ``n`` was seen (or lies below the floor after an overflow jumped it)."""
        return isinstance(n, int) and (n <= self.floor or n in self.above)

    def add(self, n: int) -> tuple[bool, bool]:
        """Note ``n``. Returns (new: not seen before, overflowed: the bound was hit)."""
        if n <= self.floor or n in self.above:
            return False, False
        self.above.add(n)
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)
        if len(self.above) <= MAX_OUT_OF_ORDER:
            return True, False
        self.floor = min(self.above)
        self.above = {x for x in self.above if x > self.floor}
        return True, True


class RoomTracker:
    """One client's view of one room: causal frontier, duplicates, distinct counts by priority."""

    __slots__ = ("frontier", "received", "seen")

    def __init__(self, frontier: Mapping[int, int]) -> None:
        self.frontier = dict(frontier)
        self.seen: dict[int, SeenSet] = {}
        self.received = [0, 0, 0]  # distinct messages by priority: chatter, normal, high

    def in_order(self, message: Message) -> bool:
        """Check ``message`` against the frontier, then advance it. False = order violation.

        Its shard's previous seq must have been delivered, unless the seqs in between are live
        chatter the SDK passed over (lost datagrams: ``Message.chatter_before``)."""
        frontier = self.frontier
        done = frontier.get(message.shard, 0)
        ok = message.seq - 1 - message.chatter_before <= done < message.seq and all(
            seq <= frontier.get(shard, 0) for shard, seq in message.deps.items()
        )
        frontier[message.shard] = max(message.seq, frontier.get(message.shard, 0))
        return ok

    def first_copy(self, publisher: int, n: int, priority: int) -> tuple[bool, bool]:
        """Count (publisher, n) once. Returns (new, dedupe overflowed)."""
        seen = self.seen.get(publisher)
        if seen is None:
            seen = self.seen[publisher] = SeenSet()
        new, overflowed = seen.add(n)
        if new:
            self.received[min(max(priority, 1), 3) - 1] += 1
        return new, overflowed

    def has(self, publisher: int, n: int) -> bool:
        """Whether message ``n`` of ``publisher`` has been received (by any path)."""
        seen = self.seen.get(publisher)
        return seen is not None and n in seen


class ClientTracker:
    """A client's rooms and handoffs, feeding a worker's :class:`Recorder`.

    Call :meth:`joined` per room, :meth:`handoff` when a handoff begins, :meth:`delivered` for each
    message, :meth:`finish` at the end. Times are ``monotonic_ns`` values.
    """

    __slots__ = (
        "_gap_kind",
        "_gap_since",
        "_last_delivery",
        "_last_kind",
        "_recorder",
        "_window_ns",
        "last_handoff_ns",
        "rooms",
    )

    def __init__(self, recorder: Recorder, *, window_s: float) -> None:
        self._recorder = recorder
        self._window_ns = int(window_s * 1e9)
        self.rooms: dict[str, RoomTracker] = {}
        self.last_handoff_ns: int | None = None
        self._last_kind = ""
        self._gap_since: int | None = None
        self._gap_kind = ""
        self._last_delivery: int | None = None

    def joined(self, room: str, frontier: Mapping[int, int]) -> None:
        """A join (or a re-join in a new session) starting live at ``frontier``: the order check
        starts again from it; what was received before still counts, for duplicates and loss."""
        tracker = self.rooms.get(room)
        if tracker is None:
            self.rooms[room] = RoomTracker(frontier)
        else:
            tracker.frontier = dict(frontier)

    def recovered(self, room: str, body: bytes, priority: int) -> bool:
        """A message read from the room's stored history (after the session was lost): counted
        like a delivery for loss and duplicates, but not for order or latency (it is late by
        design). Returns True if it was new."""
        tracker = self.rooms.get(room)
        payload = decode_body(body)
        if tracker is None or payload is None:
            return False
        new, overflowed = tracker.first_copy(payload.publisher, payload.n, priority)
        self._recorder.counters["dedupe_overflow"] += overflowed
        if new:
            self._recorder.counters["history_recovered"] += 1
        return new

    def in_window(self, now_ns: int) -> bool:
        """Whether this client is within its handoff window at ``now_ns``."""
        return in_handoff_window(now_ns, self.last_handoff_ns, self._window_ns)

    def window_kind(self, now_ns: int) -> str | None:
        """The kind of the handoff whose window this client is in at ``now_ns``, or None."""
        return self._last_kind if self.in_window(now_ns) else None

    def handoff(self, now_ns: int, kind: str) -> None:
        """A handoff of ``kind`` begins. An earlier one still waiting for a delivery gets none."""
        if self._gap_since is not None:
            self._recorder.counters["gap_no_delivery"] += 1
        self.last_handoff_ns, self._last_kind = now_ns, kind
        self._gap_since, self._gap_kind = now_ns, kind
        self._recorder.mark(now_ns, kind)

    def delivered(self, room: str, message: Message, now_ns: int) -> None:
        """The SDK delivered ``message`` of ``room`` at ``now_ns``: check and record it."""
        counters = self._recorder.counters
        tracker = self.rooms.get(room)
        payload = decode_body(message.body)
        if tracker is None or payload is None:
            counters["foreign"] += 1  # not ours: another client's traffic in a shared room
            return
        if not tracker.in_order(message):
            counters["order_violations"] += 1
        new, overflowed = tracker.first_copy(payload.publisher, payload.n, int(message.priority))
        counters["dedupe_overflow"] += overflowed
        if not new:
            counters["duplicates"] += 1
            counters[
                f"duplicates:{_PRIORITY_NAMES[min(max(int(message.priority), 1), 3) - 1]}"
            ] += 1
            return
        counters["delivered"] += 1
        own, theirs = self.window_kind(now_ns), handoff_kind(payload.flags)
        handoff = own is not None or bool(payload.flags & FLAG_HANDOFF)
        kind = own if theirs is None or theirs == own else theirs if own is None else MIXED
        self._recorder.latency(now_ns - payload.intended_ns, now_ns, handoff=handoff, kind=kind)
        if self._gap_since is not None:
            self._recorder.gap(now_ns - self._gap_since, self._gap_kind)
            self._gap_since = None
        elif not handoff and self._last_delivery is not None:
            self._recorder.interarrival(now_ns - self._last_delivery)
        self._last_delivery = now_ns

    def finish(self) -> None:
        """The run is over: a handoff still waiting for a delivery never got one."""
        if self._gap_since is not None:
            self._recorder.counters["gap_no_delivery"] += 1
            self._gap_since = None
