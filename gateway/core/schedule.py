"""Deadlines by key: when each room is due for fan-out, for its sharder's next look, when each
session's token expires. One small type instead of a dict and a heap kept in step by hand.

Sans-IO: times are numbers the caller passes; nothing here reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Schedule"]

K = TypeVar("K", bound=Hashable)


class Schedule(Generic[K]):
    """At most one deadline per key. :meth:`next_at` is O(1) amortised and :meth:`set` and
    :meth:`due` O(log n): a moved or dropped deadline leaves a stale heap entry, skipped when it
    surfaces. Keys due at the same time come out in the order their deadlines were set."""

    __slots__ = ("_at", "_heap", "_order")

    def __init__(self) -> None:
        self._at: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()

    def __contains__(self, key: K) -> bool:
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)

    def get(self, key: K) -> float | None:
        """The key's deadline, or None."""
        return self._at.get(key)

    def set(self, key: K, at: float) -> None:
        """Give ``key`` the deadline ``at`` (replacing any it had)."""
        if self._at.get(key) == at:
            return
        self._at[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))

    def discard(self, key: K) -> None:
        """Drop the key's deadline, if it has one."""
        self._at.pop(key, None)

    def next_at(self) -> float | None:
        """The earliest deadline, or None when there is none."""
        heap, at = self._heap, self._at
        while heap and at.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale: the key's deadline moved or went
        return heap[0][0] if heap else None

    def due(self, now: float) -> list[K]:
        """Remove and return the keys whose deadline is at or before ``now``, earliest first.
        Deadlines set while the caller handles them wait for the next call."""
        out: list[K] = []
        heap, at = self._heap, self._at
        while heap and heap[0][0] <= now:
            when, _, key = heapq.heappop(heap)
            if at.get(key) == when:
                del at[key]
                out.append(key)
        return out

    def pop_all(self) -> list[K]:
        """Remove and return every key, earliest deadline first."""
        keys = sorted(self._at, key=self._at.__getitem__)
        self._at.clear()
        self._heap.clear()
        return keys
