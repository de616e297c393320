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
    "LoadRoom",
    "Output",
    "Persist",
    "RoomChanged",
    "RoomInfo",
    "RoomReclaimed",
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


@dataclass(frozen=True, slots=True)
class RoomReclaimed:
    """(Durable hubs) The room was idle for ``room_idle_s`` and is no longer in memory: record
    ``high_water`` (shard id -> the last seq it assigned, for every retained shard) as the
    room's marks, after every earlier write of the room, so that a :class:`LoadRoom` seals its
    shards exactly there."""

    room: str
    high_water: dict[int, int]


@dataclass(frozen=True, slots=True)
class LoadRoom:
    """(Durable hubs) A Join names a room reclaimed earlier: once every write of it that was
    submitted has ended, take it up from the store as a restart does (seal its last epoch, store
    the new one, read its retry window), then call :meth:`Hub.restore_room` with it (unless the
    store has nothing of it) and :meth:`Hub.room_loaded`; if the store fails,
    :meth:`Hub.room_load_failed`. Exactly one of the two must follow."""

    room: str


Output = Send | SendDatagram | Close | Persist | RoomChanged | StoreRead | RoomReclaimed | LoadRoom


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
