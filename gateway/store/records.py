"""What the durable store keeps: messages, rooms and epochs, and their msgpack encoding.

Records are frozen, slotted dataclasses that validate themselves when built, so an invalid record
cannot exist. They are built by our own code (the hub, or the decoder below), so a bad field is a
bug on this side: :class:`~gateway.errors.LocalProtocolError`. Bytes that fail to decode come from
disk and raise :class:`StoreError` instead: the store is corrupt, not the caller.

Encoding: one version byte (:data:`RECORD_VERSION`), then a msgpack array whose first element is
the record kind (1 message, 2 room, 3 epoch) and whose other elements are the fields in declaration
order. Arrays, not maps: field names are not repeated in every record. Clocks (``deps``,
``sealed``) are msgpack maps of int to int. A decoder refuses any other version byte; a future
version adds a new byte and keeps reading this one.

Integers are bounded so they fit SQLite's signed 64-bit INTEGER: seqs, epochs and incarnations
are below 2**63, shard ids below 2**32 (as on the wire).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from gateway.errors import ErrorCode, GatewayError, LocalProtocolError
from gateway.wire.frames import MAX_CLIENT_MSG_ID_CHARS, MAX_ROOM_CHARS, Message, Priority, ShardMap

__all__ = [
    "RECORD_VERSION",
    "ROOM_MODES",
    "EpochRecord",
    "RoomRecord",
    "StoreError",
    "StoredMessage",
    "check_mark",
    "decode_epoch",
    "decode_message",
    "decode_room",
    "encode_epoch",
    "encode_message",
    "encode_room",
]

RECORD_VERSION = 1
ROOM_MODES = ("live", "group")  # the values of gateway.core.room.RoomMode (store sits below core)
MAX_SENDER_CHARS = 256
_MAX_I63 = (1 << 63) - 1
_MAX_SHARD = (1 << 32) - 1
_ROOM_RE = re.compile(r"[A-Za-z0-9_.:@-]+")
_KIND_MESSAGE, _KIND_ROOM, _KIND_EPOCH = 1, 2, 3


class StoreError(GatewayError):
    """The store failed or holds something it cannot read: I/O error, full disk, corrupt record.

    Code ``INTERNAL``: a publisher waiting for durability is told its message was not stored (it may
    retry). Raised by every :class:`~gateway.store.base.Store` method for failures that are not the
    caller's fault; the caller's mistakes raise :class:`~gateway.errors.LocalProtocolError`.
    """

    default_code = ErrorCode.INTERNAL


def _bad(message: str) -> LocalProtocolError:
    return LocalProtocolError(message)


def _check_room(room: str) -> None:
    if not isinstance(room, str) or not 0 < len(room) <= MAX_ROOM_CHARS:
        raise _bad(f"invalid room name {room!r}")
    if not _ROOM_RE.fullmatch(room):
        raise _bad(f"invalid room name {room[:40]!r}")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{name} must be an int in {low}..{high}, got {value!r}")


def _check_clock(name: str, clock: Mapping[int, int]) -> None:
    for shard, seq in clock.items():
        _check_int(f"{name} shard", shard, 0, _MAX_SHARD)
        _check_int(f"{name} seq", seq, 1, _MAX_I63)


def check_mark(room: str, shard: int, seq: int) -> None:
    """Raise LocalProtocolError unless ``(room, shard) -> seq`` is a valid high-water mark."""
    _check_room(room)
    _check_int("shard", shard, 0, _MAX_SHARD)
    _check_int("high-water seq", seq, 0, _MAX_I63)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of the reliable path, exactly as sequenced: ``seq`` is never renumbered.

    ``deps`` is the message's vector clock (other shards only, as in
    :class:`~gateway.wire.frames.Message`); ``priority`` a :class:`~gateway.wire.frames.Priority`
    value; ``stored_at_ms`` the wall-clock time (ms since the Unix epoch) the caller stamps it with,
    which age-based retention compares against.
    """

    room: str
    shard: int
    seq: int
    deps: Mapping[int, int]
    sender: str
    client_msg_id: str
    priority: int
    body: bytes
    stored_at_ms: int

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_int("shard", self.shard, 0, _MAX_SHARD)
        _check_int("seq", self.seq, 1, _MAX_I63)
        _check_clock("deps", self.deps)
        if not isinstance(self.sender, str) or len(self.sender) > MAX_SENDER_CHARS:
            raise _bad(f"sender must be a str of at most {MAX_SENDER_CHARS} characters")
        if not isinstance(self.client_msg_id, str):
            raise _bad("client_msg_id must be a str")
        if len(self.client_msg_id) > MAX_CLIENT_MSG_ID_CHARS:
            raise _bad(f"client_msg_id longer than {MAX_CLIENT_MSG_ID_CHARS} characters")
        _check_int("priority", self.priority, min(Priority), max(Priority))
        if not isinstance(self.body, bytes):
            raise _bad("body must be bytes")
        _check_int("stored_at_ms", self.stored_at_ms, 0, _MAX_I63)

    @classmethod
    def from_message(cls, room: str, message: Message, stored_at_ms: int) -> StoredMessage:
        """The record of a sequenced wire message."""
        return cls(
            room,
            message.shard,
            message.seq,
            dict(message.deps),
            message.sender,
            message.client_msg_id,
            int(message.priority),
            message.body,
            stored_at_ms,
        )

    def to_message(self) -> Message:
        """The wire message this record stores (for history, fetches and resumes)."""
        return Message(
            self.shard,
            self.seq,
            dict(self.deps),
            self.sender,
            self.client_msg_id,
            Priority(self.priority),
            self.body,
        )


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """A room that exists durably. ``incarnation`` (1..2**63-1) is drawn at random when the room is
    created and never changes while the room lives: a client holding a cursor of another
    incarnation knows the room was lost and re-created. ``mode`` is ``live`` or ``group``."""

    room: str
    incarnation: int
    mode: str

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_int("incarnation", self.incarnation, 1, _MAX_I63)
        if self.mode not in ROOM_MODES:
            raise _bad(f"room mode must be one of {', '.join(ROOM_MODES)}, got {self.mode!r}")


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """A room's shard map in one epoch (:class:`~gateway.wire.frames.ShardMap`, stored).

    ``shards`` are the epoch's shard ids (distinct, ascending as the room allocates them);
    ``sealed`` the last seq of each shard of the previous epoch; ``base_sum`` the sum of the sealed
    seqs of all earlier epochs.
    """

    room: str
    epoch: int
    shards: tuple[int, ...]
    sealed: Mapping[int, int]
    base_sum: int

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_int("epoch", self.epoch, 1, _MAX_I63)
        if not isinstance(self.shards, tuple) or not self.shards:
            raise _bad("an epoch needs a non-empty tuple of shards")
        for shard in self.shards:
            _check_int("shard", shard, 0, _MAX_SHARD)
        if len(set(self.shards)) != len(self.shards):
            raise _bad(f"an epoch's shards must be distinct, got {self.shards}")
        _check_clock("sealed", self.sealed)
        _check_int("base_sum", self.base_sum, 0, _MAX_I63)

    @classmethod
    def from_map(cls, shard_map: ShardMap) -> EpochRecord:
        return cls(
            shard_map.room,
            shard_map.epoch,
            shard_map.shards,
            dict(shard_map.sealed),
            shard_map.base_sum,
        )

    def to_map(self) -> ShardMap:
        return ShardMap(self.room, self.epoch, self.shards, dict(self.sealed), self.base_sum)


# ---- encoding ------------------------------------------------------------------------------------


def _pack(kind: int, fields: list[Any]) -> bytes:
    packed: bytes = msgpack.packb([kind, *fields], use_bin_type=True)
    return bytes((RECORD_VERSION,)) + packed


def _unpack(data: bytes, kind: int, arity: int) -> list[Any]:
    """The fields of a record of ``kind``, or StoreError if ``data`` is not one."""
    if not data or data[0] != RECORD_VERSION:
        raise StoreError(f"unknown record version {data[:1].hex() or 'empty'}")
    try:
        items = msgpack.unpackb(data[1:], raw=False, strict_map_key=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StoreError(f"undecodable record: {exc}") from None
    if not isinstance(items, list) or len(items) != arity + 1 or items[0] != kind:
        raise StoreError(f"not a kind-{kind} record of {arity} fields")
    return items[1:]


def _build(cls: type[Any], fields: list[Any]) -> Any:
    try:
        return cls(*fields)
    except (LocalProtocolError, TypeError) as exc:
        raise StoreError(f"corrupt {cls.__name__}: {exc}") from None


def _clock(value: Any) -> dict[int, int]:
    if not isinstance(value, dict):
        raise StoreError("corrupt record: a clock is not a map")
    return value


def encode_message(m: StoredMessage) -> bytes:
    return _pack(
        _KIND_MESSAGE,
        [
            m.room,
            m.shard,
            m.seq,
            dict(m.deps),
            m.sender,
            m.client_msg_id,
            m.priority,
            m.body,
            m.stored_at_ms,
        ],
    )


def decode_message(data: bytes) -> StoredMessage:
    """Raises StoreError if ``data`` is not an encoded StoredMessage."""
    fields = _unpack(data, _KIND_MESSAGE, 9)
    fields[3] = _clock(fields[3])
    message: StoredMessage = _build(StoredMessage, fields)
    return message


def encode_room(r: RoomRecord) -> bytes:
    return _pack(_KIND_ROOM, [r.room, r.incarnation, r.mode])


def decode_room(data: bytes) -> RoomRecord:
    """Raises StoreError if ``data`` is not an encoded RoomRecord."""
    room: RoomRecord = _build(RoomRecord, _unpack(data, _KIND_ROOM, 3))
    return room


def encode_epoch(e: EpochRecord) -> bytes:
    return _pack(_KIND_EPOCH, [e.room, e.epoch, list(e.shards), dict(e.sealed), e.base_sum])


def decode_epoch(data: bytes) -> EpochRecord:
    """Raises StoreError if ``data`` is not an encoded EpochRecord."""
    fields = _unpack(data, _KIND_EPOCH, 5)
    if not isinstance(fields[2], list):
        raise StoreError("corrupt EpochRecord: shards is not an array")
    fields[2] = tuple(fields[2])
    fields[3] = _clock(fields[3])
    epoch: EpochRecord = _build(EpochRecord, fields)
    return epoch
