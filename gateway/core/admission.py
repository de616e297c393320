"""Who may do what, and how often: a session's Hello, and the permission and rate checks of its
Joins, Publishes and Fetches.

Hello checks the protocol version and ``client_name``, turns the token into a
:class:`~gateway.core.auth.Principal` (or, with no authenticator, lets the name stand for one)
and settles the capabilities. Rates are token buckets shared per QUIC connection and per principal
(:mod:`gateway.core.principals`); a room's own publish bucket sheds by priority. Every refusal is a
:class:`~gateway.errors.Rejected` carrying the request's id. Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Hashable

from gateway.core.auth import Authenticator, Principal, check_client_name
from gateway.core.config import CoreConfig
from gateway.core.principals import Allowance, Allowances, charge
from gateway.core.room import Room
from gateway.core.session import Session
from gateway.core.stats import HubStats
from gateway.errors import ErrorCode, Rejected
from gateway.wire import frames as f

__all__ = ["CAPABILITIES", "Admission"]

CAPABILITIES = ("lz4", "datagrams")  # what the gateway offers, in the order Welcome lists them
_PRIORITY_NAMES = {p: p.name.lower() for p in f.Priority}


class Admission:
    """The checks a hub makes before it acts on a frame, and the shared allowances behind them."""

    __slots__ = ("_authenticator", "_by_connection", "_by_principal", "_config", "_room_floor")

    def __init__(self, config: CoreConfig, authenticator: Authenticator | None) -> None:
        self._config = config
        self._authenticator = authenticator
        limits = config.limits
        # Rates and violations shared per QUIC connection and per principal (idle ones kept).
        self._by_connection: Allowances[Hashable] = Allowances(limits, limits.max_connections)
        self._by_principal: Allowances[str] = Allowances(limits, limits.max_connections)
        # How full a room's publish bucket must be to take each priority: chatter goes first.
        self._room_floor = {
            f.Priority.CHATTER: limits.publish_burst_per_room / 2,
            f.Priority.NORMAL: 1.0,
            f.Priority.HIGH: float("-inf"),
        }

    # ---- allowances' lifetimes --------------------------------------------------------------------

    def connection(self, key: Hashable) -> Allowance:
        """The shared allowance of the QUIC connection ``key``, for a new session on it."""
        return self._by_connection.acquire(key)

    def release(self, session: Session, now: float) -> None:
        """The session ended: its connection and principal need one allowance user fewer."""
        self._by_connection.release(session.connection, now)
        if len(session.allowances) > 1 and session.principal is not None:
            self._by_principal.release(session.principal.sub, now)
        session.allowances = ()

    def forget_connection(self, key: Hashable) -> None:
        """The QUIC connection ``key`` is gone for good."""
        self._by_connection.forget(key)

    # ---- frames -----------------------------------------------------------------------------------

    def hello(self, session: Session, frame: f.Hello, wall_now: float) -> f.Welcome:
        """Admit a Hello (``wall_now``: the wall clock, for the token's times): the session gets
        its principal, identity, principal's allowance and capabilities. Returns the Welcome."""
        if frame.protocol_version != f.PROTOCOL_VERSION:
            raise Rejected(
                f"protocol version {frame.protocol_version} is not supported; this gateway speaks "
                f"version {f.PROTOCOL_VERSION}",
                code=ErrorCode.UNSUPPORTED_VERSION,
                fatal=True,
            )
        check_client_name(frame.client_name)
        fallback = frame.client_name or f"anon-{session.session_id}"
        if self._authenticator is None:
            principal = Principal(sub=fallback, join=("*",), publish=("*",))
        else:
            principal = self._authenticator.authenticate(
                frame.token, wall_now, client_name=fallback
            )
        session.principal = principal
        session.user = principal.sub  # the sender identity is the token's subject
        session.allowances = (*session.allowances, self._by_principal.acquire(principal.sub))
        common = tuple(c for c in CAPABILITIES if c in frame.capabilities)
        session.lz4 = "lz4" in common
        session.datagrams = "datagrams" in common
        config = self._config
        return f.Welcome(
            f.PROTOCOL_VERSION,
            common,
            session.session_id,
            config.max_frame_bytes,
            config.max_body_bytes,
        )

    def join(self, session: Session, frame: f.Join, now: float) -> None:
        """Rooms per session, the token's join patterns, the join buckets."""
        self.room_count(session, frame)
        assert session.principal is not None
        if not session.principal.may_join(frame.room):
            raise Rejected(
                f"your token does not allow joining {frame.room!r}",
                code=ErrorCode.FORBIDDEN,
                request_id=frame.request_id,
            )
        charge(session.allowances, "join", now, frame.request_id)

    def room_count(self, session: Session, frame: f.Join) -> None:
        """A session joins at most ``max_rooms_per_session`` rooms (re-joining one is fine)."""
        limit = self._config.max_rooms_per_session
        if frame.room not in session.rooms and len(session.rooms) >= limit:
            raise Rejected(
                f"a session may join at most {limit} rooms",
                code=ErrorCode.TOO_MANY_ROOMS,
                request_id=frame.request_id,
            )

    def create(self, session: Session, request_id: int, now: float) -> None:
        """Bringing a room into memory spends a room-creation token."""
        charge(session.allowances, "create", now, request_id)

    def publish(
        self, session: Session, room: Room, frame: f.Publish, now: float, stats: HubStats
    ) -> None:
        """Permission and rates. A room over its rate sheds lowest priority first: chatter once
        its bucket is below half, normal once it is empty; high is never refused for the room's
        rate (it still spends tokens)."""
        assert session.principal is not None
        if not session.principal.may_publish(frame.room):
            raise Rejected(
                f"your token does not allow publishing to {frame.room!r}",
                code=ErrorCode.FORBIDDEN,
                request_id=frame.request_id,
            )
        charge(session.allowances, "publish", now, frame.request_id)
        assert room.bucket is not None
        if room.bucket.available(now) < self._room_floor[frame.priority]:
            name = _PRIORITY_NAMES[frame.priority]
            stats.room_rate_refused[name] += 1
            raise Rejected(
                f"room {room.name!r} is over its publish rate: {name} "
                "messages are shed first; retry later",
                code=ErrorCode.RATE_LIMITED,
                request_id=frame.request_id,
            )
        room.bucket.take(now)

    def fetch(self, session: Session, frame: f.Fetch, now: float) -> None:
        charge(session.allowances, "fetch", now, frame.request_id)
