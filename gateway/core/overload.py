"""Is the gateway overloaded? A sans-IO policy, on the caller's clock, with hysteresis.

``retry = "auto"`` asks new clients to prove their address with a QUIC Retry while handshakes
arrive faster than ``handshake_rate_per_s``. A flood the gateway cannot even *read* fast enough
never drains that bucket (issue 21: 1,500 Initials/s, read at 300/s, below the 500/s rate), so
Retry must also switch on from the gateway's own load. The server reports what it sees; this
object says whether the gateway is overloaded now (:meth:`OverloadPolicy.active`).

Each report is ranked HOT (switches the overload on), WARM (keeps it on, never switches it on)
or calm (neither):

=====================  ==============================================  =======================
report                 HOT                                             WARM
=====================  ==============================================  =======================
:meth:`drained`        the socket has not been emptied for             --
                       ``standing_queue_s`` (every read in that time
                       left datagrams waiting: a standing queue, not
                       a burst of ACKs)
:meth:`probe`          the loop ran a timer ``lag_hot_ms`` late while   ``lag_warm_ms`` late
                       datagrams were waiting
:meth:`kernel`         the kernel dropped datagrams since the last      the queue holds
                       report, or its queue holds ``queue_hot_ratio``  ``queue_warm_ratio``
                       of the receive buffer
:meth:`initial`        --                                              new clients arrive at
                                                                       ``initials_warm_per_s``
=====================  ==============================================  =======================

The overload goes off once no HOT or WARM report has come for ``calm_s``.

Retry is advised (:meth:`OverloadPolicy.retry_advised`) only while the gateway is overloaded *and*
new clients arrive at ``initials_retry_per_s`` or more: a Retry helps only against new clients,
and an overload of established traffic gains nothing from making the odd reconnecting client
pay a round trip (the soak's loaded gateway was overloaded a third of the time, with under one
new client a second). The WARM band is the
hysteresis: once Retry answers a flood, reading it is cheap and the load signals calm down, but
the flood's new clients keep it on; without them it would flap, letting a burst of expensive
handshakes in every ``calm_s``.

A loop lag with nothing waiting is the machine being busy, not the gateway being behind its
clients (a loaded CI machine), so lag alone never switches it on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["OverloadConfig", "OverloadPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OverloadConfig:
    """Thresholds of :class:`OverloadPolicy`. Every field must be a finite number > 0; each
    WARM threshold must be below its HOT one."""

    standing_queue_s: float = 0.1
    lag_hot_ms: float = 250.0
    lag_warm_ms: float = 50.0
    queue_hot_ratio: float = 0.5
    queue_warm_ratio: float = 0.125
    initials_warm_per_s: float = 100.0
    initials_retry_per_s: float = 20.0
    initials_window_s: float = 0.5
    calm_s: float = 2.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise ValueError(f"{field.name} must be a finite number > 0, got {value!r}")
        if not self.lag_warm_ms < self.lag_hot_ms:
            raise ValueError("lag_warm_ms must be below lag_hot_ms")
        if not self.queue_warm_ratio < self.queue_hot_ratio <= 1:
            raise ValueError("queue ratios must satisfy 0 < warm < hot <= 1")


class OverloadPolicy:
    """Whether the gateway is overloaded, from the reports of the server that owns the socket.

    Drive it with :meth:`drained` (after each read of the socket), :meth:`probe` (from a
    periodic timer), :meth:`kernel` (from the kernel's socket counters, now and then) and
    :meth:`initial` (a new client's first Initial); ask :meth:`active`. Every call takes ``now``
    in seconds from one monotonic clock; a ``now`` that goes backwards is treated as the latest
    seen. Nothing here reads a clock or a socket, and its memory is constant.

    ``episodes`` counts the switches on by the reason that made them (``standing_queue``,
    ``loop_lag``, ``drops``, ``queue``), for metrics; ``reason`` is the latest one's.
    """

    __slots__ = (
        "_behind_since",
        "_busy_until",
        "_drops_seen",
        "_initials",
        "_initials_before",
        "_latest",
        "_on",
        "_window_start",
        "config",
        "episodes",
        "last_lag_s",
        "reason",
    )

    def __init__(self, config: OverloadConfig | None = None) -> None:
        self.config = config or OverloadConfig()
        self.episodes: dict[str, int] = {
            "standing_queue": 0,
            "loop_lag": 0,
            "drops": 0,
            "queue": 0,
        }
        self.last_lag_s = 0.0
        self.reason: str | None = None
        self._on = False
        self._busy_until = -math.inf
        self._behind_since: float | None = None
        self._drops_seen: int | None = None
        self._initials = 0
        self._initials_before = 0  # in the window just before the current one
        self._window_start: float | None = None
        self._latest = -math.inf

    def _clock(self, now: float) -> float:
        self._latest = max(self._latest, now)
        return self._latest

    def _hot(self, now: float, reason: str) -> None:
        if not self.active(now):
            self._on = True
            self.episodes[reason] += 1
            self.reason = reason
        self._busy_until = max(self._busy_until, now + self.config.calm_s)

    def _warm(self, now: float) -> None:
        if self.active(now):
            self._busy_until = max(self._busy_until, now + self.config.calm_s)

    def active(self, now: float) -> bool:
        """True while the gateway is overloaded: from a HOT report until ``calm_s`` has passed
        without a HOT or WARM one."""
        now = self._clock(now)
        if self._on and now >= self._busy_until:
            self._on = False
        return self._on

    def drained(self, now: float, *, exhausted: bool) -> None:
        """The server read the socket: ``exhausted`` if datagrams were still waiting at ``now``
        (it stopped reading at its limit, or is still reading), False if it read it empty."""
        now = self._clock(now)
        if not exhausted:
            self._behind_since = None
            return
        if self._behind_since is None:
            self._behind_since = now
        elif now - self._behind_since >= self.config.standing_queue_s:
            self._hot(now, "standing_queue")

    def probe(self, now: float, *, lag_s: float, waiting: bool) -> None:
        """A periodic timer ran ``lag_s`` after it was due; ``waiting``: datagrams were waiting
        on the socket when it ran."""
        now = self._clock(now)
        self.last_lag_s = max(0.0, lag_s) if math.isfinite(lag_s) else 0.0
        lag_ms = self.last_lag_s * 1000
        if lag_ms >= self.config.lag_hot_ms and waiting:
            self._hot(now, "loop_lag")
        elif lag_ms >= self.config.lag_warm_ms:
            self._warm(now)

    def kernel(self, now: float, *, queued_bytes: int, buffer_bytes: int, drops: int) -> None:
        """The kernel's view of the socket: ``queued_bytes`` waiting of ``buffer_bytes`` it may
        hold (both as the kernel counts them), and ``drops`` in total since the socket opened.
        The first report only sets the drop count's baseline."""
        now = self._clock(now)
        previous, self._drops_seen = self._drops_seen, drops
        if previous is not None and drops > previous:
            self._hot(now, "drops")
        if buffer_bytes > 0:
            filled = queued_bytes / buffer_bytes
            if filled >= self.config.queue_hot_ratio:
                self._hot(now, "queue")
            elif filled >= self.config.queue_warm_ratio:
                self._warm(now)

    def initial(self, now: float) -> None:
        """A new client's first Initial (one per connection attempt, without a Retry token)."""
        now = self._clock(now)
        window = self.config.initials_window_s
        start = self._window_start
        if start is None or now - start >= window:
            self._initials_before = (
                self._initials if start is not None and now - start < 2 * window else 0
            )
            self._window_start = now
            self._initials = 0
        self._initials += 1
        if self._initials >= self.config.initials_warm_per_s * window:
            self._warm(now)

    def retry_advised(self, now: float) -> bool:
        """True while the gateway is overloaded and new clients arrive at
        ``initials_retry_per_s`` or more (counted over the current and the previous window, the
        larger): then a Retry for new clients spares the gateway handshakes it cannot afford."""
        if not self.active(now) or self._window_start is None:
            return False
        window = self.config.initials_window_s
        age = self._latest - self._window_start
        if age >= 2 * window:
            return False
        # Once the current window is over, it is the previous one.
        counts = (self._initials, self._initials_before if age < window else 0)
        return max(counts) >= self.config.initials_retry_per_s * window
