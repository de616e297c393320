"""Length-delimited framing, fed whole and one byte at a time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ErrorCode, RemoteProtocolError
from gateway.wire.framing import FrameDecoder, delimit, encode_varint

payload_lists = st.lists(st.binary(max_size=600), max_size=20)


@given(payload_lists)
def test_whole_stream_round_trips(payloads: list[bytes]) -> None:
    decoder = FrameDecoder(1000)
    assert decoder.feed(b"".join(delimit(p) for p in payloads)) == payloads
    assert decoder.at_frame_boundary()


@given(payload_lists)
def test_one_byte_at_a_time(payloads: list[bytes]) -> None:
    decoder = FrameDecoder(1000)
    stream = b"".join(delimit(p) for p in payloads)
    out: list[bytes] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
        assert decoder.buffered <= 1000 + 5
    assert out == payloads


@given(payload_lists, st.data())
def test_arbitrary_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    decoder = FrameDecoder(1000)
    stream = b"".join(delimit(p) for p in payloads)
    out: list[bytes] = []
    pos = 0
    while pos < len(stream):
        step = data.draw(st.integers(1, 64))
        out += decoder.feed(stream[pos : pos + step])
        pos += step
    assert out == payloads


@given(st.integers(0, 2**35))
def test_varint_matches_protobuf(value: int) -> None:
    from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]

    assert encode_varint(value) == _VarintBytes(value)


def test_oversized_frame_is_refused_before_buffering() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(encode_varint(101))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    assert info.value.fatal


def test_endless_varint_is_malformed() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        FrameDecoder(100).feed(b"\xff" * 6)
    assert info.value.code == ErrorCode.MALFORMED_FRAME


def test_partial_frame_is_not_a_boundary() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(delimit(b"hello")[:3]) == []
    assert not decoder.at_frame_boundary()
