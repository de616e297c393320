"""When the SDK decides its gateway is gone, and how it paces reconnects: sans-IO policy.

A gateway that crashes says nothing, and one restarted on the same port drops the packets of
connections it no longer knows, so the QUIC connection would only die at its idle timeout (30 s).
:class:`Liveness` decides much sooner: the client tells it when it sent something that draws an
answer (a request, a probe) and when anything came back from the gateway; it says when to probe a
quiet connection and when the connection is dead. Every packet from the gateway counts as an
answer (a QUIC ACK is enough), so a gateway that is slow to answer a request, but alive, is not
taken for dead.

**The bound.** A connection is declared dead ``dead_after_s`` after the first thing sent since the
gateway was last heard, if nothing has been heard since. A quiet connection is probed once nothing
has been heard for ``probe_after_s``. So a dead gateway is noticed at most ``probe_after_s +
dead_after_s`` (plus one poll interval) after its last packet, and ``dead_after_s`` after the
first request the application sends to it. Only time the caller was running counts: a poll that
comes more than ``max_poll_gap_s`` after the previous one means the caller was not (a blocked
event loop, a suspended process), and what arrived meanwhile is still unread, so that gap is not
counted as the gateway's silence.

:class:`Backoff` paces the reconnect attempts that follow, with jitter, and says when to give up.

Neither reads a clock or draws random numbers: ``now`` and the jitter draw are passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

__all__ = ["Backoff", "BackoffConfig", "Liveness", "LivenessConfig", "Verdict"]


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessConfig:
    """``probe_after_s``: probe a connection nothing has come from for this long.
    ``dead_after_s``: declare it dead when what was sent has had no answer for this long; it must
    cover a round trip and a loss or two on the worst path the client expects (a QUIC PTO on a
    300 ms mobile path is about a second). ``max_poll_gap_s``: polls further apart than this
    mean the caller was not running; the gap is not held against the gateway."""

    probe_after_s: float = 2.0
    dead_after_s: float = 3.0
    max_poll_gap_s: float = 1.0

    def __post_init__(self) -> None:
        _positive("probe_after_s", self.probe_after_s)
        _positive("dead_after_s", self.dead_after_s)
        _positive("max_poll_gap_s", self.max_poll_gap_s)

    @property
    def bound_s(self) -> float:
        """The longest a dead gateway goes unnoticed after its last packet (before polling)."""
        return self.probe_after_s + self.dead_after_s


class Verdict(Enum):
    """What :meth:`Liveness.poll` asks the caller to do now."""

    WAIT = "wait"  # nothing to do
    PROBE = "probe"  # send something that draws an answer (a QUIC PING), then call sent()
    DEAD = "dead"  # nothing answered for dead_after_s: drop the connection and reconnect


class Liveness:
    """One connection's liveness, on the caller's clock.

    Drive it: :meth:`start` when a connection begins to carry the session; :meth:`heard` for each
    datagram that arrives from the gateway; :meth:`sent` when something that draws an answer was
    sent; :meth:`poll` every so often (:meth:`get_timer` says when it next matters), doing what it
    returns. After ``DEAD`` it stays dead until the next :meth:`start`.
    """

    def __init__(self, config: LivenessConfig | None = None) -> None:
        self.config = config or LivenessConfig()
        self._heard_at = 0.0
        self._waiting_since: float | None = None  # first send not answered yet
        self._dead = False
        self._polled_at: float | None = None

    def start(self, now: float) -> None:
        """A new connection carries the session (it has just answered its handshake)."""
        self._heard_at = now
        self._waiting_since = None
        self._dead = False
        self._polled_at = now

    def heard(self, now: float) -> None:
        """Something arrived from the gateway: everything sent so far counts as answered."""
        self._heard_at = max(self._heard_at, now)
        self._waiting_since = None

    def sent(self, now: float) -> None:
        """Something that draws an answer left (a request, a probe)."""
        if self._waiting_since is None:
            self._waiting_since = now

    @property
    def waiting_since(self) -> float | None:
        """When the oldest unanswered send left (None when everything sent was answered)."""
        return self._waiting_since

    def poll(self, now: float) -> Verdict:
        """What to do now: declare the connection dead, probe it, or nothing."""
        if self._dead:
            return Verdict.WAIT
        self._forgive_stall(now)
        waiting = self._waiting_since
        if waiting is not None and now - waiting >= self.config.dead_after_s:
            self._dead = True
            return Verdict.DEAD
        if waiting is None and now - self._heard_at >= self.config.probe_after_s:
            return Verdict.PROBE
        return Verdict.WAIT

    def _forgive_stall(self, now: float) -> None:
        """The caller did not poll for longer than ``max_poll_gap_s``: it was not running, and
        answers may be waiting unread. Move the clocks forward by the gap."""
        polled_at, self._polled_at = self._polled_at, now
        if polled_at is None or now - polled_at <= self.config.max_poll_gap_s:
            return
        gap = now - polled_at
        self._heard_at += gap
        if self._waiting_since is not None:
            self._waiting_since = min(self._waiting_since + gap, now)

    def get_timer(self) -> float | None:
        """When :meth:`poll` may next return something other than WAIT (None: never, dead)."""
        if self._dead:
            return None
        if self._waiting_since is not None:
            return self._waiting_since + self.config.dead_after_s
        return self._heard_at + self.config.probe_after_s


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffConfig:
    """Reconnect pacing: the first attempt after ``first_delay_s``, each later one after twice
    the last delay up to ``max_delay_s``, every delay scaled by a jitter factor in
    [1 - jitter, 1 + jitter]; give up once ``give_up_s`` have passed since the connection was
    lost."""

    first_delay_s: float = 0.05
    max_delay_s: float = 2.0
    jitter: float = 0.5
    give_up_s: float = 120.0

    def __post_init__(self) -> None:
        _positive("first_delay_s", self.first_delay_s)
        _positive("max_delay_s", self.max_delay_s)
        _positive("give_up_s", self.give_up_s)
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.max_delay_s < self.first_delay_s:
            raise ValueError("max_delay_s must be >= first_delay_s")


class Backoff:
    """The delays between reconnect attempts after one loss of the connection.

    :meth:`next_delay_s` before each attempt (``draw`` is a uniform number in [0, 1), the
    caller's randomness); :meth:`gave_up` after each failed one.
    """

    def __init__(self, config: BackoffConfig, now: float) -> None:
        self.config = config
        self._lost_at = now
        self._delay_s = config.first_delay_s

    def next_delay_s(self, draw: float) -> float:
        """How long to wait before the next attempt."""
        jitter = self.config.jitter
        delay = self._delay_s * (1 - jitter + 2 * jitter * draw)
        self._delay_s = min(self._delay_s * 2, self.config.max_delay_s)
        return delay

    def gave_up(self, now: float) -> bool:
        """True once ``give_up_s`` have passed since the loss: stop trying."""
        return now - self._lost_at > self.config.give_up_s
