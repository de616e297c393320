"""One client's session: its state machine, identity, negotiated capabilities and joined rooms.

A session is bound to its connection id, never to a network address: the server layer maps QUIC
connections (which survive address changes) to these ids.
"""

from __future__ import annotations

from enum import Enum

from gateway.core.auth import Principal
from gateway.core.limits import TokenBucket
from gateway.errors import ErrorCode, RemoteProtocolError
from gateway.wire import frames as f
from gateway.wire.framing import FrameDecoder

__all__ = ["TRANSITIONS", "Session", "State"]


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


class Session:
    """Per-connection state. The hub owns sessions and drives them."""

    __slots__ = (
        "backlog",
        "conn_id",
        "decoder",
        "errors",
        "fetch_bucket",
        "join_bucket",
        "lz4",
        "principal",
        "publish_bucket",
        "rooms",
        "session_id",
        "shed",
        "state",
        "user",
        "violations",
    )

    def __init__(self, conn_id: int, session_id: str, *, max_frame_bytes: int) -> None:
        self.conn_id = conn_id
        self.session_id = session_id
        self.state = State.AWAITING_HELLO
        self.user = ""
        self.lz4 = False
        self.rooms: set[str] = set()
        self.errors = 0
        self.violations = 0  # forbidden joins and publishes
        self.decoder = FrameDecoder(max_frame_bytes)
        self.backlog = 0  # bytes queued or unacknowledged on the connection, as last reported
        self.shed = 0  # messages shed for it since its last Deliver
        self.principal: Principal | None = None  # who the token says this is (after Hello)
        self.publish_bucket: TokenBucket | None = None
        self.join_bucket: TokenBucket | None = None
        self.fetch_bucket: TokenBucket | None = None

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
