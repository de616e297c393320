"""One client's session: its state machine, identity, negotiated capabilities and joined rooms.

A session is bound to its connection id, never to a network address: the server layer maps QUIC
connections (which survive address changes) to these ids. Several sessions may share one QUIC
connection (``connection``, the key the server gave the hub) and one principal: their rate limits
and violation counts are the :class:`~gateway.core.principals.Allowance` objects they share.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum

from gateway.core.auth import Principal
from gateway.core.principals import Allowance
from gateway.errors import ErrorCode, RemoteProtocolError
from gateway.wire import frames as f
from gateway.wire.framing import FrameDecoder

__all__ = ["TRANSITIONS", "Job", "Session", "State"]


class State(Enum):
    AWAITING_HELLO = "awaiting_hello"
    ACTIVE = "active"
    CLOSED = "closed"


# Which frame kinds each state accepts, and the state that follows. Anything else is an error.
TRANSITIONS: dict[State, dict[type[f.ClientFrame], State]] = {
    State.AWAITING_HELLO: {f.Hello: State.ACTIVE, f.Ping: State.AWAITING_HELLO},
    State.ACTIVE: {
        f.Join: State.ACTIVE,
        f.Leave: State.ACTIVE,
        f.Publish: State.ACTIVE,
        f.Fetch: State.ACTIVE,
        f.Ping: State.ACTIVE,
    },
    State.CLOSED: {},
}


@dataclass(slots=True)
class Job:
    """Output a session asked for and has not had yet (a join's replay): seqs ``lo..hi`` of one
    shard of a room, from its in-memory log or (``store``) from the durable store. Sent in pieces
    as the session's connection reads (:mod:`gateway.core.pacing`)."""

    room: str
    shard: int
    lo: int
    hi: int
    store: bool = False


class Session:
    """Per-connection state. The hub owns sessions and drives them."""

    __slots__ = (
        "allowances",
        "backlog",
        "conn_id",
        "connection",
        "datagrams",
        "decoder",
        "errors",
        "jobs",
        "lz4",
        "principal",
        "rooms",
        "session_id",
        "shed",
        "stalled_since",
        "state",
        "user",
        "violations",
    )

    def __init__(
        self,
        conn_id: int,
        session_id: str,
        *,
        max_frame_bytes: int,
        connection: Hashable = None,
        allowances: tuple[Allowance, ...] = (),
    ) -> None:
        self.conn_id = conn_id
        self.connection = connection  # the QUIC connection it belongs to (the server's key)
        self.session_id = session_id
        self.state = State.AWAITING_HELLO
        self.user = ""
        self.lz4 = False
        self.datagrams = False  # negotiated: live chatter may come as QUIC datagrams
        self.rooms: set[str] = set()
        self.errors = 0
        self.violations = 0  # forbidden joins and publishes (this session's own)
        self.decoder = FrameDecoder(max_frame_bytes)
        self.backlog = 0  # bytes queued or unacknowledged on the connection, as last reported
        self.shed = 0  # messages shed for it since its last Deliver
        self.jobs: deque[Job] = deque()  # replay still to send, oldest first (core/pacing.py)
        self.stalled_since: float | None = None  # jobs waiting on an unread connection since
        self.principal: Principal | None = None  # who the token says this is (after Hello)
        # What its requests are charged to: its connection's allowance, and from Hello on its
        # principal's too (acquired by the hub, released when the session ends).
        self.allowances = allowances

    def advance(self, frame: f.ClientFrame) -> None:
        """Move the state machine for ``frame``, or raise RemoteProtocolError if it is not allowed."""
        allowed = TRANSITIONS[self.state]
        following = allowed.get(type(frame))
        if following is None:
            if self.state is State.AWAITING_HELLO:
                raise RemoteProtocolError(
                    f"{type(frame).__name__} before Hello: send Hello first",
                    code=ErrorCode.HELLO_REQUIRED,
                    fatal=True,
                )
            raise RemoteProtocolError(
                f"{type(frame).__name__} is not allowed in state {self.state.value}",
                code=ErrorCode.INVALID_ARGUMENT,
            )
        self.state = following
