"""A Skein client made of the schema and nothing else, for the conformance suite.

Frames are built and read with the generated protobuf classes of ``schemas/skein/v1`` (the
schema, ``gateway/wire/_pb``) and put on the wire by hand (``varint(length) || payload``), over
the bare WebTransport client of :mod:`tests.e2e.wtclient`; neither the SDK nor the gateway's
codec is involved. Bytes a careless client would send are built with the ``pb_*`` helpers, field
by field. Every wait is bounded in frames and in time: a test on a loaded machine waits longer,
never fails for being slow.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any

import lz4.block

from gateway.wire._pb.skein.v1 import frames_pb2 as pb
from tests.e2e.wtclient import WtClient, WtSession

__all__ = [
    "FETCH",
    "JOIN",
    "PING",
    "PUBLISH",
    "TIMEOUT_S",
    "Peer",
    "client_frame",
    "clock",
    "delimited",
    "inflate",
    "open_peer",
    "pb",
    "pb_bytes",
    "pb_int",
    "pb_packed",
    "pb_varint",
]

TIMEOUT_S = 20.0
JOIN, PUBLISH, FETCH, PING = 2, 4, 5, 6  # ClientFrame's field numbers, for frames made by hand
MAX_FRAMES = 2000  # frames a wait reads before it gives up


# ---- bytes by hand --------------------------------------------------------------------------------


def pb_varint(value: int) -> bytes:
    """A protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def pb_int(field: int, value: int) -> bytes:
    return pb_varint(field << 3) + pb_varint(value)


def pb_bytes(field: int, value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return pb_varint((field << 3) | 2) + pb_varint(len(raw)) + raw


def pb_packed(field: int, values: list[int]) -> bytes:
    return pb_bytes(field, b"".join(pb_varint(v) for v in values))


def clock(shards: list[int], seqs: list[int]) -> bytes:
    """A ``VectorClock``'s bytes, the two arrays as given (unequal lengths and all)."""
    return pb_packed(1, shards) + pb_packed(2, seqs)


def delimited(payload: bytes) -> bytes:
    """One frame as it goes on the stream: ``varint(len(payload)) || payload``."""
    return pb_varint(len(payload)) + payload


def client_frame(kind: int, body: bytes) -> bytes:
    """``varint(length) || ClientFrame{kind: body}`` from a body made by hand."""
    return delimited(pb_bytes(kind, body))


def inflate(data: bytes) -> pb.Deliver:
    """A ``deliver_lz4`` payload (protocol.md 4.11): u32 little-endian size, then an LZ4 block."""
    (size,) = struct.unpack_from("<I", data)
    assert size <= 8 << 20, f"an lz4 Deliver of {size} bytes"
    return pb.Deliver.FromString(lz4.block.decompress(data[4:], uncompressed_size=size))


# ---- a peer ---------------------------------------------------------------------------------------


@dataclass
class Peer:
    """One raw session: send frames built from the schema, read the gateway's as schema objects.

    Frames read while waiting for something else are kept in ``passed`` (in order), and the
    messages of every ``Deliver`` / ``deliver_lz4`` read in ``delivered``."""

    client: WtClient
    session: WtSession
    passed: list[pb.ServerFrame] = field(default_factory=list)
    delivered: list[pb.Message] = field(default_factory=list)
    compressed: int = 0  # deliver_lz4 frames read

    def send(self, **kind: Any) -> None:
        """``send(join=pb.Join(...))``: one ``ClientFrame`` with that kind, framed."""
        self.send_bytes(delimited(pb.ClientFrame(**kind).SerializeToString()))

    def send_bytes(self, data: bytes) -> None:
        self.client.raw(self.session.frame_stream, data)

    async def next(self, timeout_s: float = TIMEOUT_S) -> pb.ServerFrame:
        """The gateway's next frame; its messages are added to ``delivered``."""
        frame = pb.ServerFrame.FromString(await self.client.next_payload(self.session, timeout_s))
        kind = frame.WhichOneof("kind")
        if kind == "deliver":
            self.delivered.extend(frame.deliver.messages)
        elif kind == "deliver_lz4":
            self.compressed += 1
            self.delivered.extend(inflate(frame.deliver_lz4).messages)
        return frame

    async def expect(self, kind: str) -> Any:
        """Read frames until one of ``kind`` and return its message; the others go to
        ``passed``. Fails at once on an ``Error`` unless an ``Error`` is what it waits for."""
        for _ in range(MAX_FRAMES):
            frame = await self.next()
            got = frame.WhichOneof("kind")
            if got == kind:
                return getattr(frame, kind)
            assert got != "error", f"waiting for {kind}, got {frame.error}"
            self.passed.append(frame)
        raise AssertionError(f"no {kind} in {MAX_FRAMES} frames")

    async def error(self) -> pb.Error:
        error: pb.Error = await self.expect("error")
        return error

    async def messages(self, count: int) -> list[pb.Message]:
        """Read until ``delivered`` holds at least ``count`` messages; returns all of them."""
        for _ in range(MAX_FRAMES):
            if len(self.delivered) >= count:
                return self.delivered
            frame = await self.next()
            if frame.WhichOneof("kind") not in ("deliver", "deliver_lz4"):
                assert frame.WhichOneof("kind") != "error", frame.error
                self.passed.append(frame)
        raise AssertionError(f"{len(self.delivered)} messages, not {count}")

    async def ping(self, nonce: int) -> None:
        """A Ping answered by its Pong: the session is alive and has answered what came before."""
        self.send(ping=pb.Ping(nonce=nonce))
        assert (await self.expect("pong")).nonce == nonce

    async def ended(self) -> None:
        """Wait for the gateway to end the session (FIN on the frame stream)."""
        await asyncio.wait_for(self.session.ended_by_gateway.wait(), TIMEOUT_S)


async def open_peer(
    client: WtClient,
    name: str = "raw",
    *,
    capabilities: tuple[str, ...] = (),
    token: str = "",
    hello: bool = True,
) -> tuple[Peer, pb.Welcome | None]:
    """A session on ``client``: by default a Hello from the schema and the Welcome it got."""
    session = client.open_session(b"", raw=True)
    peer = Peer(client, session)
    if not hello:
        return peer, None
    peer.send(
        hello=pb.Hello(protocol_version=1, capabilities=capabilities, token=token, client_name=name)
    )
    return peer, await peer.expect("welcome")
