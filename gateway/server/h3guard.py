"""Bounds on a client's HTTP/3 request streams: how much of a request the gateway will hold before
it is whole, and how long it may take to arrive.

The HTTP/3 layer (aioquic's or qh3's ``H3Connection``) parses a HEADERS frame only once all of it
has arrived, and keeps the partial frame in a per-stream buffer meanwhile; re-parsing that buffer
on every packet costs time that grows with its size. A client that declares a huge HEADERS frame
and feeds it slowly could make it grow without bound (aioquic) or close the whole connection
(qh3 refuses one over 1 MiB). So the gateway watches each client-initiated bidirectional stream
*before* the HTTP/3 layer sees it, from its first byte until it is classified (its request's
headers arrived, or it is a WebTransport stream):

- a first frame that is a HEADERS frame declared larger than ``max_bytes``, or more than
  ``max_bytes`` on the stream with no request yet: the stream is refused with H3_EXCESSIVE_LOAD;
- no request within ``deadline_s`` of the stream's first byte (or of a later stream's, for one
  the client skipped): refused with H3_REQUEST_REJECTED.

A refused stream is stopped and reset by the caller, the HTTP/3 layer forgets it, and whatever
else arrives on it is dropped here until the client ends it. Sans-IO: the caller passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DROP", "H3_EXCESSIVE_LOAD", "H3_REQUEST_REJECTED", "PASS", "RequestGuard"]

H3_EXCESSIVE_LOAD = 0x107
H3_REQUEST_REJECTED = 0x10B
PASS = 0  # hand the data to the HTTP/3 layer
DROP = -1  # data of a refused stream: drop it
_HEADERS = 0x01
_WEBTRANSPORT_STREAM = 0x41
_HEAD_BYTES = 16  # a frame's type and length: two QUIC varints of at most 8 bytes each


def _varint(data: bytes, at: int) -> tuple[int, int] | None:
    """The QUIC variable-length integer at ``data[at:]`` and the offset after it, or None if
    ``data`` ends first."""
    if at >= len(data):
        return None
    size = 1 << (data[at] >> 6)
    if at + size > len(data):
        return None
    value = data[at] & 0x3F
    for byte in data[at + 1 : at + size]:
        value = (value << 8) | byte
    return value, at + size


def frame_head(data: bytes) -> tuple[int, int] | None:
    """The (type, length) of the HTTP/3 frame ``data`` starts with, or None if it is shorter
    than the two varints."""
    kind = _varint(data, 0)
    if kind is None:
        return None
    length = _varint(data, kind[1])
    return None if length is None else (kind[0], length[0])


@dataclass(slots=True)
class _Arrival:
    """A request stream whose request is not whole yet."""

    since: float
    received: int = 0
    head: bytes | None = b""  # its first bytes until the first frame's head is read, then None


class RequestGuard:
    """Watches one connection's request streams until their requests are whole."""

    def __init__(self, max_bytes: int, deadline_s: float) -> None:
        self.max_bytes = max_bytes
        self.deadline_s = deadline_s
        self._arriving: dict[int, _Arrival] = {}
        self._refused: set[int] = set()  # until the client ends them
        self._next = 0  # the lowest client-initiated bidirectional stream id not seen yet

    @property
    def refused_streams(self) -> int:
        return len(self._refused)

    def receive(self, stream_id: int, data: bytes, ended: bool, now: float) -> int:
        """Stream data, before the HTTP/3 layer sees it: PASS, DROP, or an HTTP/3 error code to
        refuse the stream with (its data is not passed on)."""
        if stream_id in self._refused:
            if ended:
                self._refused.discard(stream_id)
            return DROP
        if stream_id & 3:  # only client-initiated bidirectional streams carry requests
            return PASS
        arrival = self._arriving.get(stream_id)
        if arrival is None:
            if stream_id < self._next:
                return PASS  # classified already, or over
            # Streams below it are open too (QUIC opens them in order), data or not. QUIC's
            # stream limit bounds how far ahead a client may open.
            for skipped in range(self._next, stream_id, 4):
                self._arriving[skipped] = _Arrival(now)
            arrival = self._arriving[stream_id] = _Arrival(now)
            self._next = stream_id + 4
        arrival.received += len(data)
        if arrival.head is not None:
            arrival.head += data[: _HEAD_BYTES - len(arrival.head)]
            head = frame_head(arrival.head)
            if head is not None:
                arrival.head = None
                kind, length = head
                if kind == _WEBTRANSPORT_STREAM:  # not a request: the session's frames
                    del self._arriving[stream_id]
                    return PASS
                if kind == _HEADERS and length > self.max_bytes:
                    return self.refuse(stream_id, H3_EXCESSIVE_LOAD)
        if arrival.received > self.max_bytes:
            return self.refuse(stream_id, H3_EXCESSIVE_LOAD)
        if ended:  # whole or not, the HTTP/3 layer has the last word on it now
            del self._arriving[stream_id]
        return PASS

    def classified(self, stream_id: int) -> None:
        """The stream's request headers arrived (or it turned out to be a WebTransport stream)."""
        self._arriving.pop(stream_id, None)

    def reset(self, stream_id: int) -> bool:
        """The client reset the stream: forget it. True if the gateway had refused it (then the
        HTTP/3 layer, which has forgotten it, must not see the reset either)."""
        self._arriving.pop(stream_id, None)
        if stream_id in self._refused:
            self._refused.discard(stream_id)
            return True
        return False

    def refuse(self, stream_id: int, code: int) -> int:
        """Stop watching the stream and drop what else arrives on it; returns ``code``."""
        self._arriving.pop(stream_id, None)
        self._refused.add(stream_id)
        return code

    def is_refused(self, stream_id: int) -> bool:
        return stream_id in self._refused

    def expired(self, now: float) -> list[int]:
        """Streams whose request has not arrived within ``deadline_s``: refused now (the caller
        resets them with H3_REQUEST_REJECTED)."""
        late = [s for s, a in self._arriving.items() if now - a.since >= self.deadline_s]
        for stream_id in late:
            self.refuse(stream_id, H3_REQUEST_REJECTED)
        return late

    def next_deadline(self) -> float | None:
        """When the earliest watched stream runs out of time (None if none is watched)."""
        if not self._arriving:
            return None
        return min(a.since for a in self._arriving.values()) + self.deadline_s
