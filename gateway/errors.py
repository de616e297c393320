"""The one error tree of Skein.

Every error the gateway or the SDK raises on purpose is a :class:`GatewayError`. Errors a peer can
see carry an :class:`ErrorCode`, the same numbers as ``ErrorCode`` in ``schemas/skein/v1/frames.proto``
(a test keeps the two equal). They are caught at exactly one boundary: the gateway's session turns them
into an ``Error`` frame (and closes the session when ``fatal``); the SDK turns a received ``Error``
frame back into a :class:`ServerError`.

Who broke it is kept apart, as h11 does:

- :class:`RemoteProtocolError`: the peer sent something invalid (bad bytes, bad frame, bad clock).
- :class:`Rejected`: a valid request the gateway refuses (not joined, forbidden, rate limited).
- :class:`LocalProtocolError`: our own caller misused an API (a bug on this side, never sent).
- :class:`ServerError`: in the SDK, the gateway answered with an ``Error`` frame.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ConnectionLost",
    "ErrorCode",
    "GatewayError",
    "LocalProtocolError",
    "Rejected",
    "RemoteProtocolError",
    "ServerError",
]


class ErrorCode(IntEnum):
    """Stable numeric error codes. 1xxx protocol, 2xxx permission, 3xxx limits, 5xxx gateway."""

    UNSPECIFIED = 0
    MALFORMED_FRAME = 1000
    FRAME_TOO_LARGE = 1001
    UNKNOWN_FRAME = 1002
    UNSUPPORTED_VERSION = 1003
    HELLO_REQUIRED = 1004
    INVALID_ARGUMENT = 1005
    NOT_JOINED = 1006
    BAD_VECTOR_CLOCK = 1007
    OUT_OF_RANGE = 1008
    UNAUTHENTICATED = 2000
    FORBIDDEN = 2001
    BODY_TOO_LARGE = 3000
    RATE_LIMITED = 3001
    TOO_MANY_ROOMS = 3002
    SLOW_CONSUMER = 3003
    INTERNAL = 5000
    SHUTTING_DOWN = 5001


class GatewayError(Exception):
    """Root of every error Skein raises on purpose.

    ``code`` is what a peer would be told, ``request_id`` the request it answers (0 for none), and
    ``fatal`` says the session cannot go on after it.
    """

    default_code = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        request_id: int = 0,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.request_id = request_id
        self.fatal = fatal

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


class RemoteProtocolError(GatewayError):
    """The peer broke the protocol: undecodable bytes, an invalid frame, an impossible clock."""

    default_code = ErrorCode.MALFORMED_FRAME


class Rejected(GatewayError):
    """A well-formed request that is refused: not joined, forbidden, over a limit."""

    default_code = ErrorCode.INVALID_ARGUMENT


class LocalProtocolError(GatewayError):
    """Our caller used an API wrongly. Never sent to a peer: it is a bug on this side."""

    default_code = ErrorCode.INTERNAL


class ServerError(GatewayError):
    """(SDK) The gateway answered a request with an ``Error`` frame."""


class ConnectionLost(GatewayError, ConnectionError):
    """(SDK) There is no connection to the gateway: it could not be made, was refused without an
    ``Error`` frame, or ended while a request was waiting for its answer.

    It is also a builtin :class:`ConnectionError`, so ``except ConnectionError`` catches it; the
    SDK raises it in place of any QUIC engine's own exceptions (see ``gateway.engine.ENGINE_ERRORS``).
    """

    default_code = ErrorCode.SHUTTING_DOWN
