"""Length-delimited framing: each frame is a protobuf varint length followed by that many bytes.

:class:`FrameDecoder` is sans-IO and bounded: it never holds more than one incomplete frame, and a
declared length over ``max_frame_bytes`` is refused before a byte of it is buffered.
"""

from __future__ import annotations

from gateway.errors import ErrorCode, RemoteProtocolError

__all__ = ["FrameDecoder", "delimit", "encode_varint"]

_MAX_VARINT_BYTES = 5  # lengths are below 2**32; a longer varint is garbage


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf varint."""
    if value < 0:
        raise ValueError("varints here are unsigned")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimit(payload: bytes) -> bytes:
    """Return ``payload`` with its varint length in front, ready for a stream."""
    return encode_varint(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frame payloads.

    Feed it bytes as they arrive with :meth:`feed`; it returns the payloads that became complete.
    Raises :class:`RemoteProtocolError` (FRAME_TOO_LARGE or MALFORMED_FRAME) when the stream can't be
    framed; after that the stream is unusable and the caller must close it.
    """

    __slots__ = ("_buffer", "_error", "_max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (at most max_frame_bytes + 5)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every payload it completed, in order.

        Frames complete before a framing error are returned first; the error is raised by
        :meth:`check` (and by every later ``feed``).
        """
        self.check()
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            try:
                length, header = self._read_length(buf, pos, end)
            except RemoteProtocolError as exc:
                self._error = exc
                self._buffer = bytearray()
                if not frames:
                    raise
                return frames
            if header == 0 or pos + header + length > end:
                break
            start = pos + header
            frames.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return frames

    def _read_length(self, buf: bytearray, pos: int, end: int) -> tuple[int, int]:
        """Return (length, header bytes), or (0, 0) when the varint is still incomplete."""
        value = 0
        for i in range(_MAX_VARINT_BYTES):
            if pos + i >= end:
                return 0, 0
            byte = buf[pos + i]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value > self._max_frame_bytes:
                    raise RemoteProtocolError(
                        f"frame of {value} bytes exceeds the limit of {self._max_frame_bytes}",
                        code=ErrorCode.FRAME_TOO_LARGE,
                        fatal=True,
                    )
                return value, i + 1
        raise RemoteProtocolError(
            "frame length is not a valid varint", code=ErrorCode.MALFORMED_FRAME, fatal=True
        )

    def check(self) -> None:
        """Raise the framing error met by an earlier :meth:`feed`, if any."""
        if self._error is not None:
            raise self._error

    def at_frame_boundary(self) -> bool:
        """True when no partial frame is buffered (a stream may end cleanly here)."""
        return not self._buffer
