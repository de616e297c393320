"""Fuzz the frame decoder and the client-frame codec with hostile bytes in arbitrary chunks.

Properties: only RemoteProtocolError ever escapes; the decoder never buffers more than one frame
(``max_frame_bytes`` + 5); how the bytes are chunked changes nothing; a framing error is sticky;
every payload that decodes is a valid frame that survives re-encoding.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ErrorCode, RemoteProtocolError
from gateway.wire import frames as f
from gateway.wire.codec import decode_client_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder
from tests.fuzz.conftest import FUZZ_SETTINGS
from tests.fuzz.strategies import chunked, hostile_streams

MAX_FRAME_BYTES = 2048

Outcome = tuple[list[bytes], ErrorCode | None]


def feed_all(chunks: list[bytes]) -> Outcome:
    """Feed ``chunks`` as a stream would; return the payloads and the framing error, if any."""
    decoder = FrameDecoder(MAX_FRAME_BYTES)
    payloads: list[bytes] = []
    error: RemoteProtocolError | None = None
    for chunk in chunks:
        try:
            payloads += decoder.feed(chunk)
            decoder.check()
        except RemoteProtocolError as exc:
            error = exc
            break
        assert decoder.buffered <= MAX_FRAME_BYTES + 5
    if error is not None:
        assert error.fatal and error.code in (ErrorCode.FRAME_TOO_LARGE, ErrorCode.MALFORMED_FRAME)
        for later in (b"", b"\x00"):  # sticky: the stream is unusable from here on
            try:
                decoder.feed(later)
            except RemoteProtocolError as again:
                assert again is error
            else:
                raise AssertionError("feed after a framing error did not raise")
    return payloads, None if error is None else error.code


@FUZZ_SETTINGS
@given(data=st.data(), stream=hostile_streams | st.binary(max_size=3000))
def test_decoder_is_bounded_and_chunking_changes_nothing(
    data: st.DataObject, stream: bytes
) -> None:
    whole = feed_all([stream])
    assert feed_all(data.draw(chunked(stream))) == whole
    if len(stream) <= 300:  # one byte at a time, as h11 tests its parsers
        assert feed_all([stream[i : i + 1] for i in range(len(stream))]) == whole


@FUZZ_SETTINGS
@given(stream=hostile_streams)
def test_payloads_decode_to_valid_frames_or_typed_errors(stream: bytes) -> None:
    payloads, _ = feed_all([stream])
    for payload in payloads:
        try:
            frame = decode_client_frame(payload)
        except RemoteProtocolError as exc:
            assert isinstance(exc.code, ErrorCode) and exc.code != ErrorCode.INTERNAL
            continue
        assert isinstance(frame, f.Hello | f.Join | f.Leave | f.Publish | f.Fetch | f.Ping)
        assert decode_client_frame(encode_client_frame(frame)) == frame


@FUZZ_SETTINGS
@given(payload=st.binary(max_size=512))
def test_arbitrary_payloads_raise_only_remote_protocol_errors(payload: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_client_frame(payload)
