"""Rate limits and violation counts that outlive a session: per QUIC connection, per principal.

One QUIC connection carries any number of WebTransport sessions one after another (and up to
``max_sessions_per_connection`` at once), and one principal (a token's subject) may open any
number of connections. Buckets made per session would give each new session a fresh burst and a
fresh violation count, so the hub charges every Join, Publish and Fetch, every room it brings into
memory for a Join (``create``), and every violation, to
two :class:`Allowance` objects instead: its connection's and its principal's. A request goes
through only if both have a token for it (:func:`take_all`), and a violation counts against both.

An :class:`Allowances` table holds them by key. An allowance is *held* while a session uses it and
lives at least as long; once released by its last session it is forgotten at once if it is
pristine (every bucket full, no violation: a new one would be the same), else kept among at most
``max_idle`` idle ones, so that ending a session and opening another never starts afresh. When
the table of idle ones is full, the least recently released pristine one goes (among the
:data:`_EVICTION_SCAN` oldest), else the oldest of all. Memory is bounded by the sessions open
plus ``max_idle``.

Sans-IO like the rest of the core: every call takes ``now`` (seconds, the caller's clock).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Generic, Literal, TypeVar

from gateway.core.limits import LimitsConfig, TokenBucket
from gateway.errors import ErrorCode, Rejected

__all__ = ["Allowance", "Allowances", "charge", "take_all"]

K = TypeVar("K", bound=Hashable)
_EVICTION_SCAN = 16


class Allowance:
    """The publish, join, fetch and room-creation buckets and the violation count one connection
    or one principal shares among its sessions. ``holders``: sessions holding it right now."""

    __slots__ = ("create", "fetch", "holders", "join", "publish", "violations")

    def __init__(self, limits: LimitsConfig) -> None:
        self.publish = limits.connection_publish_bucket()
        self.join = limits.connection_join_bucket()
        self.fetch = limits.connection_fetch_bucket()
        self.create = limits.room_create_bucket()
        self.violations = 0
        self.holders = 0

    def pristine(self, now: float) -> bool:
        """True when forgetting it changes nothing: no violation and every bucket full."""
        return self.violations == 0 and all(
            bucket.is_full(now) for bucket in (self.publish, self.join, self.fetch, self.create)
        )


class Allowances(Generic[K]):
    """:class:`Allowance` objects by key (a connection, a principal). See the module docstring."""

    __slots__ = ("_held", "_idle", "limits", "max_idle")

    def __init__(self, limits: LimitsConfig, max_idle: int) -> None:
        if max_idle < 0:
            raise ValueError("max_idle must be >= 0")
        self.limits = limits
        self.max_idle = max_idle
        self._held: dict[K, Allowance] = {}
        self._idle: OrderedDict[K, Allowance] = OrderedDict()  # least recently released first

    def __len__(self) -> int:
        return len(self._held) + len(self._idle)

    def __contains__(self, key: object) -> bool:
        return key in self._held or key in self._idle

    def acquire(self, key: K) -> Allowance:
        """The allowance for ``key`` (the one kept for it, else a new one), held once more.
        Every acquire must be matched by one :meth:`release`."""
        allowance = self._held.get(key)
        if allowance is None:
            allowance = self._idle.pop(key, None) or Allowance(self.limits)
            self._held[key] = allowance
        allowance.holders += 1
        return allowance

    def release(self, key: K, now: float) -> None:
        """A session that acquired ``key`` no longer uses it. Unknown keys are ignored."""
        allowance = self._held.get(key)
        if allowance is None:
            return
        allowance.holders -= 1
        if allowance.holders > 0:
            return
        del self._held[key]
        if allowance.pristine(now) or self.max_idle == 0:
            return
        self._idle[key] = allowance
        if len(self._idle) > self.max_idle:
            self._evict(now)

    def forget(self, key: K) -> None:
        """Drop ``key``'s idle allowance (its connection is gone for good). A held one stays:
        the sessions holding it release it as they end."""
        self._idle.pop(key, None)

    def _evict(self, now: float) -> None:
        for i, (key, allowance) in enumerate(self._idle.items()):
            if i >= _EVICTION_SCAN:
                break
            if allowance.pristine(now):
                del self._idle[key]
                return
        self._idle.popitem(last=False)


def take_all(buckets: Sequence[TokenBucket], now: float) -> float:
    """Take one token from every bucket, or from none: 0.0 if taken, else the seconds until
    all of them would have one (what to tell the client to wait)."""
    wait = max((bucket.retry_after_s(now) for bucket in buckets), default=0.0)
    if wait > 0:
        return wait
    for bucket in buckets:
        bucket.take(now)
    return 0.0


_DOING = {
    "publish": "publishing",
    "join": "joining",
    "fetch": "fetching",
    "create": "creating rooms",
}


def charge(
    allowances: Sequence[Allowance],
    kind: Literal["publish", "join", "fetch", "create"],
    now: float,
    request_id: int,
) -> None:
    """Charge one request of ``kind`` to every allowance (a session's connection's and its
    principal's), or to none: raises a non-fatal RATE_LIMITED :class:`Rejected` for
    ``request_id`` that says how long to wait."""
    wait = take_all([getattr(a, kind) for a in allowances], now)
    if wait:
        raise Rejected(
            f"{_DOING[kind]} too fast; retry in {wait:.2f} s",
            code=ErrorCode.RATE_LIMITED,
            request_id=request_id,
        )
