"""Rate and admission limits, sans-IO: token buckets on the caller's clock, and what they guard.

- :class:`TokenBucket`: ``rate_per_s`` tokens per second, at most ``burst`` saved up; no timer
  needed, and :meth:`TokenBucket.retry_after_s` is exact.
- :class:`KeyedBuckets`: one bucket per key (a source address, a room), at most ``max_keys`` of them.
- :class:`ConnectionCounter`: connections in total and per source address.
- :class:`HandshakeGuard`: the handshake rate, and whether to answer a new client with a QUIC Retry.
- :class:`LimitsConfig`: every limit, with units in the names and safe defaults.

Nothing here reads a clock: every call takes ``now`` in seconds (any monotonic clock, the same one
for every call on an object). A ``now`` that goes backwards never grants more than a constant one
would.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from gateway.core.overload import OverloadPolicy

__all__ = [
    "RETRY_MODES",
    "Admission",
    "ConnectionCounter",
    "HandshakeGuard",
    "KeyedBuckets",
    "LimitsConfig",
    "TokenBucket",
]

K = TypeVar("K", bound=Hashable)
RETRY_MODES = ("off", "always", "auto")
_EVICTION_SCAN = 16  # how far from the least recently used end KeyedBuckets looks for an idle key


class TokenBucket:
    """``rate_per_s`` tokens per second, at most ``burst`` in reserve; starts full.

    Over any interval of length ``T`` it grants at most ``burst + rate_per_s * T`` tokens (up to
    float rounding: a few ulps). A :meth:`take` that is refused takes nothing. The bucket keeps
    its debt (tokens taken and not yet refilled) as of the last time it saw, so no timer is needed.
    """

    __slots__ = ("_debt", "_last", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError("rate_per_s must be a positive number")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError("burst must be a number >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._debt = 0.0  # tokens owed as of _last, 0..burst
        self._last: float | None = None

    def _debt_at(self, now: float) -> float:
        if self._last is None or now <= self._last:
            return self._debt  # no refill for time that did not pass (or went backwards)
        return max(0.0, self._debt - (now - self._last) * self.rate_per_s)

    def _slack(self, now: float) -> float:
        """Tokens of rounding allowance, so that a take at ``now + retry_after_s(now)`` succeeds."""
        return 1e-9 * self.burst + 4 * math.ulp(now) * self.rate_per_s

    def take(self, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens at ``now`` if there are that many; True if taken."""
        if not n >= 0:
            raise ValueError("n must be >= 0")
        debt = self._debt_at(now) + n
        if debt > self.burst + self._slack(now):
            return False
        self._debt = min(debt, self.burst)
        if self._last is None or now > self._last:
            self._last = now
        return True

    def retry_after_s(self, now: float, n: float = 1) -> float:
        """Seconds from ``now`` until :meth:`take` of ``n`` would succeed: 0 if it would now,
        ``inf`` if never (``n > burst``). Exact: a take at ``now + retry_after_s(now)`` succeeds.
        """
        if n > self.burst:
            return math.inf
        debt = self._debt_at(now)
        if debt + n <= self.burst:
            return 0.0
        base = now if self._last is None else max(now, self._last)  # refill starts at _last
        return base - now + (debt + n - self.burst) / self.rate_per_s

    def available(self, now: float) -> float:
        """Tokens that could be taken at ``now`` (for metrics; not necessarily whole)."""
        return self.burst - self._debt_at(now)

    def is_full(self, now: float) -> bool:
        """True when the bucket has refilled completely: forgetting it would change nothing."""
        return self._debt_at(now) <= self._slack(now)


class KeyedBuckets(Generic[K]):
    """One :class:`TokenBucket` per key, at most ``max_keys`` of them (memory is bounded).

    When a new key arrives and the table is full, a key is forgotten: the least recently used one
    whose bucket is full (idle, so forgetting it loses nothing) among the :data:`_EVICTION_SCAN`
    least recently used, else the least recently used of all. A forgotten key that comes back
    starts with a full bucket, so a key can get one extra ``burst`` per eviction: make
    ``max_keys`` larger than the number of keys active at once.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, max_keys: int) -> None:
        TokenBucket(rate_per_s, burst)  # validates the parameters
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def _bucket(self, key: K, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._buckets.move_to_end(key)
            return bucket
        if len(self._buckets) >= self.max_keys:
            self._evict(now)
        bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst)
        return bucket

    def _evict(self, now: float) -> None:
        for i, (key, bucket) in enumerate(self._buckets.items()):
            if i >= _EVICTION_SCAN:
                break
            if bucket.is_full(now):
                del self._buckets[key]
                return
        self._buckets.popitem(last=False)

    def take(self, key: K, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens from ``key``'s bucket (made full if new); True if taken."""
        return self._bucket(key, now).take(now, n)

    def retry_after_s(self, key: K, now: float, n: float = 1) -> float:
        """As :meth:`TokenBucket.retry_after_s` for ``key`` (0 for a key not held)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after_s(now, n)

    def forget(self, key: K) -> None:
        """Drop ``key``'s bucket (e.g. when a room is deleted). Unknown keys are ignored."""
        self._buckets.pop(key, None)

    def prune(self, now: float) -> int:
        """Forget every idle (full) bucket; returns how many. O(keys): call it from a slow timer."""
        idle = [key for key, bucket in self._buckets.items() if bucket.is_full(now)]
        for key in idle:
            del self._buckets[key]
        return len(idle)


class ConnectionCounter(Generic[K]):
    """Open connections in total and per source address, with their caps.

    Memory is bounded by ``max_total``: only addresses with an open connection are held.
    """

    __slots__ = ("_by_address", "max_per_address", "max_total", "total")

    def __init__(self, max_total: int, max_per_address: int) -> None:
        if max_total < 1 or max_per_address < 1:
            raise ValueError("connection limits must be >= 1")
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.total = 0
        self._by_address: dict[K, int] = {}

    def try_open(self, address: K) -> bool:
        """Count a new connection from ``address`` if both caps allow it; True if counted.

        The caller must call :meth:`close` with the same address exactly once for each True.
        """
        held = self._by_address.get(address, 0)
        if self.total >= self.max_total or held >= self.max_per_address:
            return False
        self._by_address[address] = held + 1
        self.total += 1
        return True

    def close(self, address: K) -> None:
        """A connection counted by :meth:`try_open` ended. Raises ValueError if none is open."""
        held = self._by_address.get(address, 0)
        if held < 1:
            raise ValueError("close() without a matching try_open()")
        if held == 1:
            del self._by_address[address]
        else:
            self._by_address[address] = held - 1
        self.total -= 1

    def count(self, address: K) -> int:
        return self._by_address.get(address, 0)


class Admission(Enum):
    """What to do with a client's first Initial packet."""

    ACCEPT = "accept"  # start the handshake
    RETRY = "retry"  # answer with a QUIC Retry (stateless; the client must prove its address)
    DROP = "drop"  # over the handshake rate: ignore it (the client will retransmit)


class HandshakeGuard:
    """Handshake admission: a global handshake rate, and when to validate addresses with Retry.

    ``retry`` is ``"off"`` (never), ``"always"`` (every client not yet validated) or ``"auto"``
    (only under a handshake flood: while fewer than half of the handshake bucket's ``burst``
    tokens are left, that is while handshakes arrive faster than ``rate_per_s``, or while the
    gateway is overloaded by its own measure with new clients arriving,
    ``overload.retry_advised``: a flood the gateway cannot even read fast enough never drains
    the bucket; the server reports its load there). A Retry costs
    the gateway one small stateless packet, sent only in answer to an Initial that is at least
    1200 bytes, so it cannot amplify; handshakes from addresses that answered it (``validated``)
    are still rate limited. Spoofed source addresses never get past a Retry.
    """

    __slots__ = ("_bucket", "overload", "retry")

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        retry: str = "auto",
        overload: OverloadPolicy | None = None,
    ) -> None:
        if retry not in RETRY_MODES:
            raise ValueError(f"retry must be one of {', '.join(RETRY_MODES)}, got {retry!r}")
        self._bucket = TokenBucket(rate_per_s, burst)
        self.retry = retry
        self.overload = overload or OverloadPolicy()

    def under_flood(self, now: float) -> bool:
        """True while fewer than half of the handshake burst is left."""
        return self._bucket.available(now) < self._bucket.burst / 2

    def retrying(self, now: float) -> bool:
        """True while a new client without a Retry token would be asked to Retry."""
        if self.retry == "auto":
            return self.overload.retry_advised(now) or self.under_flood(now)
        return self.retry == "always"

    def admit(self, now: float, *, validated: bool) -> Admission:
        """Decide for a new connection's first Initial. ``validated``: it carried a valid Retry
        token. Only ACCEPT takes from the handshake rate; an unvalidated Initial is reported to
        ``overload`` (new clients arriving fast keep an overload on)."""
        if not validated:
            self.overload.initial(now)
            if self.retrying(now):
                return Admission.RETRY
        return Admission.ACCEPT if self._bucket.take(now) else Admission.DROP


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    """Limits that protect the gateway and its well-behaved clients. The ``[limits]`` table.

    Frame and body sizes, rooms per session and in total are in ``CoreConfig``; these are the rest.

    - ``max_connections``: sessions open at once; more are refused at the handshake.
    - ``max_connections_per_address``: sessions at once from one source IP address (NATs put
      many phones behind one address, hence well above 1).
    - ``publish_rate_per_connection_per_s`` / ``publish_burst_per_connection``: a token bucket per
      session for Publish; over it, RATE_LIMITED (with the retry-after in the message).
    - ``publish_rate_per_room_per_s`` / ``publish_burst_per_room``: the same per room, so that no
      group of senders can make one room's fan-out swamp the gateway.
    - ``join_rate_per_connection_per_s`` / ``join_burst_per_connection``: Join per session: a
      flood of joins costs only its sender.
    - ``fetch_rate_per_connection_per_s`` / ``fetch_burst_per_connection``: Fetch per session
      (each may read up to ``max_fetch_messages``, perhaps from the store). The burst covers a
      resume that fetches every shard of a few rooms at once; a refused fetch is asked again by
      the SDK a second later.
    - ``handshake_rate_per_s`` / ``handshake_burst``: new QUIC handshakes per second for the
      whole gateway (they cost public-key operations); over it, Initials are dropped.
    - ``retry``: QUIC Retry (address validation before any handshake state): ``"off"``,
      ``"always"``, or ``"auto"`` (only while handshakes exceed their rate or the gateway is
      overloaded; see :class:`HandshakeGuard` and :mod:`gateway.core.overload`).
    - ``violations_before_close``: permission refusals (FORBIDDEN, UNAUTHENTICATED) a session
      may collect before it is closed; the last one is sent fatal. Rate refusals (RATE_LIMITED)
      don't count: they cost the sender only its wait.
    - ``max_sessions_per_connection``: WebTransport sessions open at once on one QUIC
      connection; a CONNECT beyond it is answered HTTP 429. (The ``*_per_connection`` buckets
      and the violation count are shared by all sessions of a QUIC connection, and again by all
      sessions of one principal: see :mod:`gateway.core.principals`.)
    - ``history_rate_per_connection_per_s`` / ``history_burst_per_connection``: history pages
      (``GET /v1/rooms/{room}/messages``) per QUIC connection; over it, HTTP 429 with
      ``retry-after``. A page is also refused (429) while another is being read for the same
      connection, or while the connection has ``send_budget_bytes`` or more unread.
    - ``max_request_header_bytes``: the most an HTTP/3 request stream may send before its
      request is whole (a HEADERS frame declared larger, or that many bytes with no request
      yet), and the most the HTTP/3 layer may hold of any one stream's unfinished frame; over
      it the stream is reset with H3_EXCESSIVE_LOAD (the connection closed, for a control
      stream).
    - ``request_deadline_s``: how long a request stream may take, from its first byte, to
      deliver a whole request; then it is reset with H3_REQUEST_REJECTED.
    - ``room_create_rate_per_principal_per_s`` / ``room_create_burst_per_principal``: rooms a
      principal may bring into being (a Join of a room the gateway does not hold in memory: a
      new room, or one reclaimed while idle and taken up again from the store), charged like
      the join bucket to the session's principal and to its QUIC connection; over it,
      RATE_LIMITED with the wait. With ``CoreConfig.room_idle_s`` it bounds the idle rooms one
      principal can keep in memory to about ``burst + rate * room_idle_s``, so no one token can
      use up ``max_rooms``.
    - ``unread_grace_s``: how long a session the gateway ended keeps what it had queued and
      the client has not acknowledged (its last frames, the Error, the FIN); after that the
      stream is reset and the bytes dropped, and a connection with no session left is closed.
    """

    max_connections: int = 10_000
    max_connections_per_address: int = 64
    publish_rate_per_connection_per_s: float = 50.0
    publish_burst_per_connection: float = 100.0
    publish_rate_per_room_per_s: float = 20_000.0
    publish_burst_per_room: float = 40_000.0
    join_rate_per_connection_per_s: float = 10.0
    join_burst_per_connection: float = 50.0
    fetch_rate_per_connection_per_s: float = 20.0
    fetch_burst_per_connection: float = 200.0
    room_create_rate_per_principal_per_s: float = 1.0
    room_create_burst_per_principal: float = 64.0
    handshake_rate_per_s: float = 500.0
    handshake_burst: float = 1000.0
    retry: str = "auto"
    violations_before_close: int = 10
    max_sessions_per_connection: int = 8
    history_rate_per_connection_per_s: float = 5.0
    history_burst_per_connection: float = 20.0
    max_request_header_bytes: int = 16 * 1024
    request_deadline_s: float = 10.0
    unread_grace_s: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_connections_per_address",
            "violations_before_close",
            "max_sessions_per_connection",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        value = self.max_request_header_bytes
        if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 1 << 20:
            raise ValueError(
                f"max_request_header_bytes must be an integer 1024..1048576, got {value!r}"
            )
        for name in ("request_deadline_s", "unread_grace_s"):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for rate, burst in (
            ("publish_rate_per_connection_per_s", "publish_burst_per_connection"),
            ("publish_rate_per_room_per_s", "publish_burst_per_room"),
            ("join_rate_per_connection_per_s", "join_burst_per_connection"),
            ("fetch_rate_per_connection_per_s", "fetch_burst_per_connection"),
            ("room_create_rate_per_principal_per_s", "room_create_burst_per_principal"),
            ("history_rate_per_connection_per_s", "history_burst_per_connection"),
            ("handshake_rate_per_s", "handshake_burst"),
        ):
            for name, least in ((rate, 0.0), (burst, 1.0)):  # what a TokenBucket accepts
                value = getattr(self, name)
                number = isinstance(value, int | float) and not isinstance(value, bool)
                if not (number and math.isfinite(value) and (value > 0 and value >= least)):
                    span = "> 0" if least == 0 else ">= 1"
                    raise ValueError(f"{name} must be a finite number {span}, got {value!r}")
        if self.retry not in RETRY_MODES:
            raise ValueError(f"retry must be one of {', '.join(RETRY_MODES)}, got {self.retry!r}")

    def connection_publish_bucket(self) -> TokenBucket:
        """A new session's publish bucket."""
        return TokenBucket(
            self.publish_rate_per_connection_per_s, self.publish_burst_per_connection
        )

    def connection_join_bucket(self) -> TokenBucket:
        """A new session's join/fetch bucket."""
        return TokenBucket(self.join_rate_per_connection_per_s, self.join_burst_per_connection)

    def connection_fetch_bucket(self) -> TokenBucket:
        """A new session's fetch bucket."""
        return TokenBucket(self.fetch_rate_per_connection_per_s, self.fetch_burst_per_connection)

    def room_create_bucket(self) -> TokenBucket:
        """A new principal's (and connection's) room-creation bucket."""
        return TokenBucket(
            self.room_create_rate_per_principal_per_s, self.room_create_burst_per_principal
        )

    def room_publish_buckets(self, max_rooms: int) -> KeyedBuckets[str]:
        """Publish buckets by room name, for at most ``max_rooms`` rooms (CoreConfig.max_rooms)."""
        return KeyedBuckets(
            self.publish_rate_per_room_per_s, self.publish_burst_per_room, max_rooms
        )

    def handshake_guard(self) -> HandshakeGuard:
        return HandshakeGuard(self.handshake_rate_per_s, self.handshake_burst, self.retry)

    def connection_counter(self) -> ConnectionCounter[str]:
        return ConnectionCounter(self.max_connections, self.max_connections_per_address)
