"""Which connections are over their send budget, since when, and when to look at them again.

The server measures a connection's backlog (bytes queued or unacknowledged on all its streams)
and the hub reports it here (:meth:`Backpressure.measured`). A connection at or over
``send_budget_bytes`` is *congested* until it falls below half of it; fan-out then sheds for it.
Congested connections are looked at every tick; one congested for ``slow_consumer_s`` is a slow
consumer, and one over ``max_backlog_bytes`` is closed at once. Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

from gateway.core.config import CoreConfig

__all__ = ["Backpressure"]


class Backpressure:
    """The congested connections (conn_id -> since when) and the next look at them."""

    __slots__ = ("_budget", "_max_backlog", "_slow_s", "_watch_s", "congested", "watch_at")

    def __init__(self, config: CoreConfig) -> None:
        self._budget = config.send_budget_bytes
        self._max_backlog = config.max_backlog_bytes
        self._slow_s = config.slow_consumer_s
        self._watch_s = max(config.tick_ms / 1000.0, 0.001)
        self.congested: dict[int, float] = {}
        self.watch_at: float | None = None  # the next look at watched connections

    def measured(self, conn_id: int, queued_bytes: int, now: float) -> bool:
        """A connection's backlog, as the server measured it. Returns True if it is over
        ``max_backlog_bytes``: the caller closes it at once (SLOW_CONSUMER)."""
        if queued_bytes > self._max_backlog:
            return True
        if queued_bytes >= self._budget:
            self.congested.setdefault(conn_id, now)
            self.watch(now)
        elif queued_bytes < self._budget // 2:
            self.congested.pop(conn_id, None)
        return False

    def slow(self, now: float) -> list[int]:
        """Connections congested for ``slow_consumer_s`` or longer."""
        return [c for c, since in self.congested.items() if now - since >= self._slow_s]

    def watch(self, now: float) -> None:
        """Look at watched connections a tick from now (if a look is not already due)."""
        if self.watch_at is None:
            self.watch_at = now + self._watch_s

    def looked(self, now: float, *, others: bool) -> None:
        """The timer ran at ``now``: if the look was due, plan the next one while anything is
        watched (congested connections, or ``others``: replays still to send)."""
        if self.watch_at is not None and now >= self.watch_at:
            self.watch_at = now + self._watch_s if (self.congested or others) else None

    def forget(self, conn_id: int) -> None:
        """The connection's session is gone."""
        self.congested.pop(conn_id, None)
