"""Codec properties: round-trips, strict decoding, and the hand-assembled Deliver batch."""

from __future__ import annotations

import lz4.block
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ErrorCode, RemoteProtocolError
from gateway.wire import codec
from gateway.wire import frames as f
from gateway.wire._pb.skein.v1 import frames_pb2 as pb

rooms = st.from_regex(r"[A-Za-z0-9_.:@-]{1,40}", fullmatch=True)
u64 = st.integers(0, (1 << 64) - 1)
seqs = st.integers(1, (1 << 63) - 1)
clocks = st.dictionaries(st.integers(1, (1 << 32) - 1), seqs, max_size=8)
text = st.text(max_size=40)
msg_ids = st.text(max_size=64)
priorities = st.sampled_from(list(f.Priority))

client_frames = st.one_of(
    st.builds(
        f.Hello, st.integers(0, 2**32 - 1), st.lists(text, max_size=4).map(tuple), text, text
    ),
    st.builds(f.Join, u64, rooms, st.none() | st.builds(f.Cursor, u64, clocks)),
    st.builds(f.Leave, u64, rooms),
    st.builds(f.Publish, u64, rooms, msg_ids, st.binary(max_size=200), priorities, clocks),
    st.builds(
        lambda rid, room, shard, a, b: f.Fetch(rid, room, shard, min(a, b), max(a, b)),
        u64,
        rooms,
        st.integers(0, 2**32 - 1),
        seqs,
        seqs,
    ),
    st.builds(f.Ping, u64),
)

messages = st.builds(
    f.Message,
    st.integers(0, 2**32 - 1),
    seqs,
    clocks,
    text,
    msg_ids,
    priorities,
    st.binary(max_size=300),
)
shard_maps = st.builds(
    f.ShardMap,
    rooms,
    st.integers(1, 2**40),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8).map(tuple),
    clocks,
    u64,
)
server_frames = st.one_of(
    st.builds(
        f.Welcome,
        st.integers(0, 2**32 - 1),
        st.lists(text, max_size=3).map(tuple),
        text,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
    ),
    st.builds(f.Joined, u64, rooms, st.lists(shard_maps, max_size=3).map(tuple), u64, clocks),
    st.builds(f.Left, u64, rooms),
    st.builds(f.Ack, u64, msg_ids, st.integers(0, 2**32 - 1), u64),
    st.builds(f.Deliver, rooms, st.lists(messages, max_size=5).map(tuple), u64),
    shard_maps,
    st.builds(
        f.Fetched,
        u64,
        rooms,
        st.integers(0, 2**32 - 1),
        st.lists(messages, max_size=3).map(tuple),
        u64,
    ),
    st.builds(f.Pong, u64),
    st.builds(f.Error, st.sampled_from(list(ErrorCode)), text, u64, st.booleans()),
)


@given(client_frames)
def test_client_frames_round_trip(frame: f.ClientFrame) -> None:
    assert codec.decode_client_frame(codec.encode_client_frame(frame)) == frame


@given(server_frames)
def test_server_frames_round_trip(frame: f.ServerFrame) -> None:
    assert codec.decode_server_frame(codec.encode_server_frame(frame)) == frame


@given(rooms, st.lists(messages, max_size=20), st.integers(0, 2**40))
def test_assembled_deliver_is_what_protobuf_would_write(
    room: str, msgs: list[f.Message], skipped: int
) -> None:
    assembled = codec.deliver_frame(
        codec.encode_deliver(room, [codec.encode_message(m) for m in msgs], skipped)
    )
    reference = pb.ServerFrame()
    reference.deliver.room = room
    reference.deliver.skipped = skipped
    for m in msgs:
        reference.deliver.messages.add().ParseFromString(codec.encode_message(m))
    assert assembled == reference.SerializeToString(deterministic=True)


@given(rooms, st.lists(messages, min_size=1, max_size=20))
def test_lz4_batches_decode_to_the_same_deliver(room: str, msgs: list[f.Message]) -> None:
    body = codec.encode_deliver(room, [codec.encode_message(m) for m in msgs])
    plain = codec.decode_server_frame(codec.deliver_frame(body))
    compressed = codec.decode_server_frame(codec.deliver_lz4_frame(body))
    assert compressed == plain == f.Deliver(room, tuple(msgs))


def test_lz4_bomb_is_refused() -> None:
    huge = lz4.block.compress(b"\0" * (codec.MAX_DECOMPRESSED_BYTES + 1), store_size=True)
    frame = pb.ServerFrame(deliver_lz4=huge).SerializeToString()
    with pytest.raises(RemoteProtocolError):
        codec.decode_server_frame(frame)


@given(st.binary(max_size=200))
def test_garbage_is_a_typed_error_or_a_valid_frame(data: bytes) -> None:
    try:
        frame = codec.decode_client_frame(data)
    except RemoteProtocolError as exc:
        assert exc.code in {
            ErrorCode.MALFORMED_FRAME,
            ErrorCode.UNKNOWN_FRAME,
            ErrorCode.INVALID_ARGUMENT,
            ErrorCode.BAD_VECTOR_CLOCK,
            ErrorCode.OUT_OF_RANGE,
        }
    else:
        assert isinstance(frame, f.Hello | f.Join | f.Leave | f.Publish | f.Fetch | f.Ping)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff\xff", ErrorCode.MALFORMED_FRAME),  # truncated varint tag
        (b"", ErrorCode.UNKNOWN_FRAME),  # no kind
        (
            pb.ClientFrame(publish=pb.Publish(room="bad room!")).SerializeToString(),
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            pb.ClientFrame(publish=pb.Publish(room="r", priority=9)).SerializeToString(),
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            pb.ClientFrame(
                publish=pb.Publish(room="r", deps=pb.VectorClock(shards=[1, 2], seqs=[3]))
            ).SerializeToString(),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        (
            pb.ClientFrame(
                fetch=pb.Fetch(room="r", shard=1, from_seq=5, to_seq=2)
            ).SerializeToString(),
            ErrorCode.OUT_OF_RANGE,
        ),
        (b"\x3a\x00", ErrorCode.UNKNOWN_FRAME),  # field 7: a kind this gateway doesn't know
    ],
)
def test_bad_frames_get_stable_codes(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode_client_frame(payload)
    assert info.value.code == code


def test_invalid_utf8_is_malformed() -> None:
    # A Publish whose room is the bytes ff fe: protobuf refuses invalid UTF-8 in string fields.
    payload = b"\x22\x04\x12\x02\xff\xfe"
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode_client_frame(payload)
    assert info.value.code == ErrorCode.MALFORMED_FRAME


def test_error_codes_match_the_schema() -> None:
    schema = {name.removeprefix("ERROR_CODE_"): number for name, number in pb.ErrorCode.items()}
    ours = {code.name: int(code) for code in ErrorCode}
    assert ours == schema


def test_priorities_match_the_schema() -> None:
    schema = {name.removeprefix("PRIORITY_"): number for name, number in pb.Priority.items()}
    schema.pop("UNSPECIFIED")
    assert {p.name: int(p) for p in f.Priority} == schema
