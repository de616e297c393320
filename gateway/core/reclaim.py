"""Reclaiming idle rooms, so that ``max_rooms`` counts only live ones. Sans-IO: time is passed in.

A room is *idle* while it has no subscriber and no pending work (no message waiting for fan-out
or for the store: ``Room.can_reshard``). One that has been idle for ``room_idle_s`` (since its
last subscriber left or its last batch went out, whichever is later) is reclaimed: the hub drops
it from memory.

What becomes of its state:

- A hub without a store (``durable=False``) forgets the room. A later Join makes it anew, with a
  new incarnation: a client resuming with a cursor of the old one is replayed what the new room
  has and told the room was reset (as after a restart without a store).
- A durable hub keeps the room's state in the store and only its name in memory (*dormant*). It
  emits :class:`~gateway.core.outputs.RoomReclaimed` with the last seq of every retained shard,
  for the store to record as high-water marks. A later Join of a dormant room waits while the
  server takes the room up from the store exactly as a restart does
  (:class:`~gateway.core.outputs.LoadRoom`, then ``Hub.restore_room`` and ``Hub.room_loaded``):
  the incarnation is kept, every shard of its last epoch is sealed at its mark and a new epoch
  starts with fresh shard ids, and the retry window is read back. So a cursor stays valid, no
  (shard, seq) is ever assigned twice, and stored messages are served from the store.

The schedule is a heap with exactly one entry per room held, looked at when it comes due: a busy
room is looked at again ``room_idle_s`` later, an idle one when its ``room_idle_s`` is up. So the
timer costs O(log rooms) per room per ``room_idle_s``, and a room is reclaimed exactly
``room_idle_s`` after it went idle, as the hub notes it in ``Room.active_at`` (a Leave, a
disconnect). A room that went idle unnoted since a look that found it busy (a session the gateway
closed, whose disconnect carries no time) counts as idle from the look that finds it so: it is
never reclaimed sooner than ``room_idle_s`` after it went idle, and at most twice that after.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from gateway.core.room import Room
from gateway.wire import frames as f

__all__ = ["MAX_RECLAIMS_PER_TIMER", "Reclaimer"]

MAX_RECLAIMS_PER_TIMER = 1024
"""The most rooms one :meth:`Reclaimer.due` hands back; the rest stay due (the timer says so)."""


class Reclaimer:
    """The idle-room schedule, the dormant rooms' names, and the Joins waiting for a room to be
    taken up from the store.

    Drive it from the hub: :meth:`add` every room the hub takes into memory, :meth:`due` from
    the hub's timer (:meth:`next_due` is its contribution to ``get_timer``).

    Bounds: the heap holds one entry per room in memory. ``dormant`` holds one name per room
    reclaimed by a durable hub and not taken up since (the store holds a record of each).
    ``loading`` holds at most ``max_rooms`` names (the hub counts them against it), each with the
    Joins waiting for it, as many as the join rate lets through while the store answers.
    """

    __slots__ = ("_heap", "dormant", "idle_s", "loading")

    def __init__(self, idle_s: float) -> None:
        if not idle_s > 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s!r}")
        self.idle_s = idle_s
        # (when to look, room, when a look last found it busy or None), one per room held
        self._heap: list[tuple[float, str, float | None]] = []
        self.dormant: set[str] = set()
        self.loading: dict[str, list[tuple[int, f.Join]]] = {}

    def add(self, name: str, now: float) -> None:
        """The hub took room ``name`` into memory at ``now`` (made, restored or loaded). Call
        once per time it enters the hub's rooms."""
        self.dormant.discard(name)
        heapq.heappush(self._heap, (now + self.idle_s, name, None))

    def next_due(self) -> float | None:
        """When :meth:`due` next has something to look at, or None."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float, rooms: Mapping[str, Room]) -> list[Room]:
        """The rooms to reclaim at ``now`` (at most :data:`MAX_RECLAIMS_PER_TIMER`), already off
        the schedule: the caller must drop each from ``rooms``. Busy rooms, and idle ones whose
        time is not up, are put back for later. Names no longer in ``rooms`` are dropped."""
        heap, idle_s = self._heap, self.idle_s
        out: list[Room] = []
        while heap and heap[0][0] <= now and len(out) < MAX_RECLAIMS_PER_TIMER:
            _, name, busy_at = heapq.heappop(heap)
            room = rooms.get(name)
            if room is None:
                continue
            if room.subscribers or not room.can_reshard:
                heapq.heappush(heap, (now + idle_s, name, now))
                continue
            idle_since = max(room.active_at, room.fanned_out_at)
            if busy_at is not None and idle_since < busy_at:
                idle_since = now  # it went idle since that look, and nobody said when
            if idle_since + idle_s > now:
                heapq.heappush(heap, (idle_since + idle_s, name, None))
                continue
            out.append(room)
        return out

    def wait(self, name: str, conn_id: int, frame: f.Join) -> bool:
        """A Join of ``name`` while it is being taken up from the store: queued with the others
        (True), or False if it is not being taken up."""
        waiting = self.loading.get(name)
        if waiting is None:
            return False
        waiting.append((conn_id, frame))
        return True

    def start_load(self, name: str, conn_id: int, frame: f.Join) -> None:
        """``name`` (dormant) is to be taken up from the store for this Join."""
        self.loading[name] = [(conn_id, frame)]

    def cancel(self, name: str, conn_id: int) -> None:
        """The session left ``name`` before it was taken up: its Joins are not answered."""
        waiting = self.loading.get(name)
        if waiting is not None:
            waiting[:] = [(c, j) for c, j in waiting if c != conn_id]

    def finish_load(self, name: str) -> list[tuple[int, f.Join]]:
        """The store answered for ``name``: the Joins that waited for it, in arrival order."""
        return self.loading.pop(name, [])
