"""Skein's frames as frozen, slotted dataclasses that validate themselves when built.

These are the types the rest of the code sees; the generated protobuf classes stay inside
``gateway.wire``. A frame that exists is structurally valid: building one with a bad field raises
:class:`~gateway.errors.RemoteProtocolError` (the codec builds frames from peer bytes, so a failure
there is the peer's). Limits that depend on configuration (body size, rate) are the session's job.

Vector clocks are plain ``Mapping[int, int]`` (shard id -> seq, no zero entries).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType

from gateway.errors import ErrorCode, RemoteProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "ClientFrame",
    "Cursor",
    "Deliver",
    "Error",
    "Fetch",
    "Fetched",
    "Hello",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "Message",
    "Ping",
    "Pong",
    "Priority",
    "Publish",
    "ServerFrame",
    "ShardMap",
    "Welcome",
    "validate_room",
]

PROTOCOL_VERSION = 1
MAX_ROOM_CHARS = 128
MAX_CLIENT_MSG_ID_CHARS = 64
MAX_CLOCK_ENTRIES = 1024
MAX_CAPABILITIES = 32
_ROOM_RE = re.compile(r"[A-Za-z0-9_.:@-]+")
_EMPTY: Mapping[int, int] = MappingProxyType({})


class Priority(IntEnum):
    """Chatter < normal < high. High is never shed and always takes the reliable path."""

    CHATTER = 1
    NORMAL = 2
    HIGH = 3


def _bad(message: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT) -> RemoteProtocolError:
    return RemoteProtocolError(message, code=code)


def validate_room(room: str) -> str:
    """Return ``room`` if it is a valid room name, else raise RemoteProtocolError."""
    if not room or len(room) > MAX_ROOM_CHARS or not _ROOM_RE.fullmatch(room):
        raise _bad(
            f"invalid room name {room[:40]!r}: 1-{MAX_ROOM_CHARS} characters of A-Z a-z 0-9 _ . : @ -"
        )
    return room


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value < 1 << 64:
        raise _bad(f"{name} out of range: {value}")


def _check_clock(name: str, clock: Mapping[int, int]) -> None:
    if len(clock) > MAX_CLOCK_ENTRIES:
        raise _bad(
            f"{name} has {len(clock)} entries (max {MAX_CLOCK_ENTRIES})", ErrorCode.BAD_VECTOR_CLOCK
        )
    # No shard has id 0 (ids start at 1), so an entry naming it is as wrong as a zero seq.
    for shard, seq in clock.items():
        if not 0 < shard < 1 << 32 or not 0 < seq < 1 << 63:
            raise _bad(f"{name} has an invalid entry {shard}:{seq}", ErrorCode.BAD_VECTOR_CLOCK)


def _check_msg_id(client_msg_id: str) -> None:
    if len(client_msg_id) > MAX_CLIENT_MSG_ID_CHARS:
        raise _bad(f"client_msg_id longer than {MAX_CLIENT_MSG_ID_CHARS} characters")


# ---- client -> gateway ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    protocol_version: int = PROTOCOL_VERSION
    capabilities: tuple[str, ...] = ()
    token: str = ""
    client_name: str = ""

    def __post_init__(self) -> None:
        # The token and client_name are the hub's to judge, each with one answer: an oversized
        # token is UNAUTHENTICATED (``AuthConfig.max_token_bytes``), a bad name a fatal
        # INVALID_ARGUMENT (``check_client_name``). The frame itself is bounded by max_frame_bytes.
        if len(self.capabilities) > MAX_CAPABILITIES:
            raise _bad(f"hello has more than {MAX_CAPABILITIES} capabilities")


@dataclass(frozen=True, slots=True)
class Cursor:
    """A resume point: the last epoch seen and the last seq delivered per shard."""

    epoch: int = 0
    delivered: Mapping[int, int] = field(default_factory=lambda: _EMPTY)
    incarnation: int = 0

    def __post_init__(self) -> None:
        _check_u64("cursor epoch", self.epoch)
        _check_u64("cursor incarnation", self.incarnation)
        _check_clock("cursor", self.delivered)


@dataclass(frozen=True, slots=True)
class Join:
    request_id: int
    room: str
    cursor: Cursor | None = None

    def __post_init__(self) -> None:
        _check_u64("request_id", self.request_id)
        validate_room(self.room)


@dataclass(frozen=True, slots=True)
class Leave:
    request_id: int
    room: str

    def __post_init__(self) -> None:
        _check_u64("request_id", self.request_id)
        validate_room(self.room)


@dataclass(frozen=True, slots=True)
class Publish:
    request_id: int
    room: str
    client_msg_id: str
    body: bytes
    priority: Priority = Priority.NORMAL
    deps: Mapping[int, int] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        _check_u64("request_id", self.request_id)
        validate_room(self.room)
        _check_msg_id(self.client_msg_id)
        _check_clock("deps", self.deps)


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask for ``from_seq..to_seq`` (inclusive) of one shard's log."""

    request_id: int
    room: str
    shard: int
    from_seq: int
    to_seq: int

    def __post_init__(self) -> None:
        _check_u64("request_id", self.request_id)
        validate_room(self.room)
        if not 1 <= self.from_seq <= self.to_seq < 1 << 63:
            raise _bad(f"bad fetch range {self.from_seq}..{self.to_seq}", ErrorCode.OUT_OF_RANGE)


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int = 0

    def __post_init__(self) -> None:
        _check_u64("nonce", self.nonce)


ClientFrame = Hello | Join | Leave | Publish | Fetch | Ping


# ---- gateway -> client ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    protocol_version: int
    capabilities: tuple[str, ...]
    session_id: str
    max_frame_bytes: int
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class ShardMap:
    """The shards of a room in one epoch.

    ``sealed`` holds the last seq of every shard of the previous epoch; ``base_sum`` the sum of the
    sealed seqs of all earlier epochs (see docs/protocol.md, "Ordering").
    """

    room: str
    epoch: int
    shards: tuple[int, ...]
    sealed: Mapping[int, int] = field(default_factory=lambda: _EMPTY)
    base_sum: int = 0

    def __post_init__(self) -> None:
        validate_room(self.room)
        if self.epoch < 1 or not self.shards:
            raise _bad("a shard map needs an epoch >= 1 and at least one shard")
        _check_clock("sealed", self.sealed)


@dataclass(frozen=True, slots=True)
class Joined:
    request_id: int
    room: str
    shard_maps: tuple[ShardMap, ...]
    missed: int = 0
    frontier: Mapping[int, int] = field(default_factory=lambda: _EMPTY)
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class Left:
    request_id: int
    room: str


@dataclass(frozen=True, slots=True)
class Ack:
    request_id: int
    client_msg_id: str
    shard: int
    seq: int


@dataclass(frozen=True, slots=True)
class Message:
    """One sequenced message: ``seq`` is dense within ``shard``; ``deps`` excludes its own shard."""

    shard: int
    seq: int
    deps: Mapping[int, int]
    sender: str
    client_msg_id: str
    priority: Priority
    body: bytes
    shed: bool = False  # a tombstone: shed for this client (only shard and seq mean anything)
    # Live rooms: seqs seq - chatter_before .. seq - 1 of this shard are chatter, which a client
    # may pass over when it lacks them (they may have been lost as QUIC datagrams).
    chatter_before: int = 0

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise _bad(f"message seq must be >= 1, got {self.seq}")
        if not 0 <= self.chatter_before < self.seq:
            raise _bad(f"message {self.shard}:{self.seq} has chatter_before {self.chatter_before}")
        _check_clock("deps", self.deps)


@dataclass(frozen=True, slots=True)
class Deliver:
    room: str
    messages: tuple[Message, ...]
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class Fetched:
    request_id: int
    room: str
    shard: int
    messages: tuple[Message, ...]
    first_available_seq: int = 0


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int = 0


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    message: str
    request_id: int = 0
    fatal: bool = False


ServerFrame = Welcome | Joined | Left | Ack | Deliver | ShardMap | Fetched | Pong | Error
