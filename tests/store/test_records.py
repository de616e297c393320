"""Records validate themselves and survive their msgpack encoding exactly."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError
from gateway.store.records import (
    RECORD_VERSION,
    EpochRecord,
    RoomRecord,
    StoredMessage,
    StoreError,
    decode_epoch,
    decode_message,
    decode_room,
    encode_epoch,
    encode_message,
    encode_room,
)
from gateway.wire.frames import Message, Priority, ShardMap
from tests.store.factories import epoch_records, msg, room_records, stored_messages

PROPS = settings(derandomize=True, max_examples=200, deadline=None)


@PROPS
@given(stored_messages)
def test_message_round_trip(message: StoredMessage) -> None:
    data = encode_message(message)
    assert data[0] == RECORD_VERSION
    assert decode_message(data) == message


@PROPS
@given(room_records)
def test_room_round_trip(record: RoomRecord) -> None:
    assert decode_room(encode_room(record)) == record


@PROPS
@given(epoch_records)
def test_epoch_round_trip(record: EpochRecord) -> None:
    assert decode_epoch(encode_epoch(record)) == record


@PROPS
@given(st.binary(max_size=64))
def test_any_bytes_decode_to_a_record_or_store_error(data: bytes) -> None:
    for decode in (decode_message, decode_room, decode_epoch):
        with contextlib.suppress(StoreError):  # anything else escaping is the failure
            decode(data)


def test_encoding_is_a_versioned_array_not_a_map() -> None:
    data = encode_message(msg(7, body=b"x"))
    fields = msgpack.unpackb(data[1:], strict_map_key=False)
    assert data[0] == 1 and isinstance(fields, list) and fields[0] == 1  # version, kind
    assert len(data) < 60


def test_decoders_refuse_other_versions_kinds_and_fields() -> None:
    good = encode_room(RoomRecord("lobby", 5, "live"))
    with pytest.raises(StoreError, match="version"):
        decode_room(bytes([2]) + good[1:])
    with pytest.raises(StoreError):
        decode_message(good)  # a room record is not a message
    with pytest.raises(StoreError, match="corrupt"):
        decode_room(bytes([1]) + msgpack.packb([2, "lobby", 0, "live"]))  # incarnation 0


def test_message_converts_to_and_from_the_wire_type() -> None:
    wire = Message(3, 9, {1: 4}, "bob", "m-1", Priority.HIGH, b"hi")
    stored = StoredMessage.from_message("lobby", wire, 123)
    assert stored.to_message() == wire
    assert (stored.room, stored.shard, stored.seq, stored.stored_at_ms) == ("lobby", 3, 9, 123)


def test_epoch_converts_to_and_from_a_shard_map() -> None:
    shard_map = ShardMap("lobby", 3, (5, 6), {3: 10, 4: 2}, 40)
    assert EpochRecord.from_map(shard_map).to_map() == shard_map


@pytest.mark.parametrize(
    "change",
    [
        {"room": "no spaces"},
        {"room": ""},
        {"seq": 0},
        {"seq": 1 << 63},
        {"shard": -1},
        {"deps": {1: 0}},
        {"priority": 4},
        {"body": "text"},
        {"client_msg_id": "x" * 65},
        {"stored_at_ms": -1},
    ],
)
def test_invalid_messages_cannot_be_built(change: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "room": "lobby",
        "shard": 1,
        "seq": 1,
        "deps": {},
        "sender": "a",
        "client_msg_id": "",
        "priority": 2,
        "body": b"",
        "stored_at_ms": 0,
    }
    fields.update(change)
    with pytest.raises(LocalProtocolError):
        StoredMessage(**fields)  # type: ignore[arg-type]


def test_invalid_rooms_and_epochs_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError):
        RoomRecord("lobby", 0, "live")
    with pytest.raises(LocalProtocolError):
        RoomRecord("lobby", 1, "broadcast")
    with pytest.raises(LocalProtocolError):
        EpochRecord("lobby", 1, (), {}, 0)
    with pytest.raises(LocalProtocolError):
        EpochRecord("lobby", 1, (2, 2), {}, 0)
    with pytest.raises(LocalProtocolError):
        EpochRecord("lobby", 0, (1,), {}, 0)
