"""What the hub asks of the layer that drives it, and what it reports about rooms.

Outputs are pulled (``Hub.take_outputs``): the server sends, closes, persists and reads as told.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.shard import Entry
from gateway.errors import ErrorCode
from gateway.wire import frames as f

__all__ = [
    "Close",
    "Output",
    "Persist",
    "RoomChanged",
    "RoomInfo",
    "Send",
    "SendDatagram",
    "StoreRead",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` (complete, length-prefixed frames) to the stream of each connection."""

    conn_ids: tuple[int, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send ``data`` (one ServerFrame, not length-prefixed) to each connection's session as an
    HTTP/3 datagram. Where it cannot go as one (the connection has no datagrams, or it does not
    fit), write it on the stream instead, length-prefixed, like a :class:`Send`."""

    conn_ids: tuple[int, ...]
    data: bytes


@dataclass(frozen=True, slots=True)
class Persist:
    """Store these sequenced messages durably, then call :meth:`Hub.persisted` with them (or
    :meth:`Hub.persist_failed`). Their publishers are acked, and subscribers notified, only then.
    Batch them: everything persisted in one tick can be one group commit."""

    room: str
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class RoomChanged:
    """(Durable hubs) Record a room, or its new epoch, in the store: ``created`` for a new room
    (store its incarnation and mode too), else a split or merge made ``shard_map``."""

    room: str
    incarnation: int
    mode: str
    shard_map: f.ShardMap
    created: bool


@dataclass(frozen=True, slots=True)
class StoreRead:
    """(Durable hubs) Serve ``from_seq..to_seq`` of a shard from the store to one connection:
    as a Fetched answer to ``request_id``, or, with request_id 0, as a Deliver replay. Seqs the
    store never held (chatter) go as tombstones, so the client passes over them."""

    conn_id: int
    room: str
    shard: int
    from_seq: int
    to_seq: int
    request_id: int


@dataclass(frozen=True, slots=True)
class Close:
    """End this connection's session with an error code (the Error frame was already sent)."""

    conn_id: int
    code: ErrorCode
    reason: str


Output = Send | SendDatagram | Close | Persist | RoomChanged | StoreRead


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What ``skein rooms`` shows about a room."""

    name: str
    mode: str
    epoch: int
    shards: dict[int, int]  # shard id -> last seq
    velocities: dict[int, float]  # shard id -> smoothed msgs/s
    room_velocity: float
    subscribers: int
