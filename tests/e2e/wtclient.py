"""A bare WebTransport client for tests that need what the SDK never does: many sessions on one
QUIC connection, each started and ended by hand (FIN or RESET_STREAM on each of its streams).

It speaks exactly docs/protocol.md §1: a CONNECT (``:protocol webtransport``) per session, one
client-initiated bidirectional stream per session for Skein frames. Frames the gateway sends are
decoded per frame stream (or, for a ``raw`` session, kept as the payload bytes the gateway sent,
for a test to parse with the schema), and the session's HTTP/3 datagrams are kept as they came;
nothing is answered automatically. It can also send plain HTTP/3
requests (:meth:`WtClient.get`) or raw bytes on a stream of its own (:meth:`WtClient.raw`), records
the streams the gateway resets, and can stop reading at the transport (``frozen``: every datagram
from the gateway is dropped, so nothing it sends is ever acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.engine import (
    H3_ALPN,
    DatagramReceived,
    H3Connection,
    HeadersReceived,
    NetworkAddress,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
    datagram_session_id,
    quic_connect,
    send_stream_data,
)
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit

__all__ = ["WtClient", "WtSession", "wt_connect"]


@dataclass(slots=True)
class WtSession:
    """One WebTransport session: its CONNECT stream, its frame stream and what arrived.

    ``frames`` holds the gateway's frames decoded by ``gateway.wire.codec``; a ``raw`` session
    puts each frame's payload (the serialised ``ServerFrame``, length prefix removed) in
    ``payloads`` instead. ``datagrams`` holds the payloads of the session's HTTP/3 datagrams."""

    connect_stream: int
    frame_stream: int
    status: asyncio.Future[int]
    raw: bool = False
    frames: asyncio.Queue[f.ServerFrame] = field(default_factory=asyncio.Queue)
    payloads: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    datagrams: asyncio.Queue[bytes] = field(default_factory=asyncio.Queue)
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(16 << 20))
    ended_by_gateway: asyncio.Event = field(default_factory=asyncio.Event)


class WtClient(QuicConnectionProtocol):
    """A QUIC connection that opens WebTransport sessions on demand."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.sessions: dict[int, WtSession] = {}  # by frame stream
        self._by_connect: dict[int, WtSession] = {}
        self.resets: dict[int, int] = {}  # streams the gateway reset -> error code
        self.reset_seen = asyncio.Event()
        self.frozen = False  # drop every datagram from the gateway (stop reading at the transport)
        self._requests: dict[int, asyncio.Future[int]] = {}

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        if not self.frozen:
            super().datagram_received(data, addr)

    def datagrams_received(self, data: list[bytes], addr: NetworkAddress) -> None:
        """qh3's transport hands a protocol that has this method its datagrams in batches."""
        if not self.frozen:
            getattr(super(), "datagrams_received")(data, addr)  # noqa: B009 (qh3 only)

    def get(
        self, path: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> asyncio.Future[int]:
        """Send ``GET path`` on a new request stream; the future is the answer's status."""
        stream_id = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
                *(headers or []),
            ],
            end_stream=True,
        )
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._requests[stream_id] = future
        self.transmit()
        return future

    def raw(self, stream_id: int, data: bytes) -> None:
        """Raw bytes on a stream, bypassing HTTP/3 (a hand-made frame, say)."""
        send_stream_data(self._quic, stream_id, data)
        self.transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code
            self.reset_seen.set()
        if isinstance(event, StreamDataReceived) and event.stream_id in self.sessions:
            # Our own WebTransport stream: the client-side H3 would parse it as HTTP/3 frames.
            session = self.sessions[event.stream_id]
            for payload in session.decoder.feed(event.data):
                if session.raw:
                    session.payloads.put_nowait(bytes(payload))
                else:
                    session.frames.put_nowait(decode_server_frame(payload))
            if event.end_stream:
                session.ended_by_gateway.set()
            return
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, DatagramReceived):
                owner = self._by_connect.get(datagram_session_id(h3_event))
                if owner is not None:
                    owner.datagrams.put_nowait(bytes(h3_event.data))
            if isinstance(h3_event, HeadersReceived):
                status = int(dict(h3_event.headers).get(b":status", b"0"))
                answered = self._by_connect.get(h3_event.stream_id)
                if answered is not None and not answered.status.done():
                    answered.status.set_result(status)
                request = self._requests.pop(h3_event.stream_id, None)
                if request is not None and not request.done():
                    request.set_result(status)

    def open_session(
        self, hello: f.Hello | bytes | None = None, path: str = "/v1/chat", *, raw: bool = False
    ) -> WtSession:
        """Send a CONNECT, open the session's frame stream and (by default) say Hello on it.

        ``hello`` as bytes is written to the frame stream as it is (frames the caller encoded,
        length prefixes included; ``b""`` sends nothing). ``raw``: keep the gateway's frames as
        payload bytes (:attr:`WtSession.payloads`) instead of decoding them."""
        connect_stream = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            connect_stream,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"webtransport"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ],
        )
        frame_stream = self.h3.create_webtransport_stream(connect_stream)
        status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        session = WtSession(connect_stream, frame_stream, status, raw)
        self.sessions[frame_stream] = session
        self._by_connect[connect_stream] = session
        if isinstance(hello, bytes):
            self.raw(frame_stream, hello)  # transmits the CONNECT even when there is no data
        else:
            self.send(session, hello if hello is not None else f.Hello(client_name="wt"))
        return session

    def send(self, session: WtSession, *frames: f.ClientFrame) -> None:
        data = b"".join(delimit(encode_client_frame(frame)) for frame in frames)
        send_stream_data(self._quic, session.frame_stream, data)
        self.transmit()

    async def next_frame(self, session: WtSession, timeout_s: float = 10.0) -> f.ServerFrame:
        return await asyncio.wait_for(session.frames.get(), timeout_s)

    async def next_payload(self, session: WtSession, timeout_s: float = 10.0) -> bytes:
        """The next frame of a ``raw`` session: a serialised ``ServerFrame``."""
        return await asyncio.wait_for(session.payloads.get(), timeout_s)

    async def next_datagram(self, session: WtSession, timeout_s: float = 10.0) -> bytes:
        """The payload of the session's next HTTP/3 datagram."""
        return await asyncio.wait_for(session.datagrams.get(), timeout_s)

    def fin_frame_stream(self, session: WtSession) -> None:
        """FIN the session's frame stream (the documented end of a session, with the next)."""
        send_stream_data(self._quic, session.frame_stream, b"", end_stream=True)
        self.transmit()

    def fin_connect_stream(self, session: WtSession) -> None:
        """FIN the session's CONNECT stream."""
        self.h3.send_data(session.connect_stream, b"", end_stream=True)
        self.transmit()

    def end_by_reset(self, session: WtSession) -> None:
        """End the session abruptly: RESET_STREAM on the frame stream, FIN on the CONNECT."""
        self._quic.reset_stream(session.frame_stream, 0x10C)
        self.h3.send_data(session.connect_stream, b"", end_stream=True)
        self.transmit()


@contextlib.asynccontextmanager
async def wt_connect(
    address: tuple[str, int], ca_file: Path, *, idle_timeout_s: float = 60.0
) -> AsyncIterator[WtClient]:
    """A connected :class:`WtClient` to a gateway at ``address``."""
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name="localhost",
        max_datagram_frame_size=65536,
        idle_timeout=idle_timeout_s,
    )
    configuration.verify_mode = ssl.CERT_REQUIRED
    configuration.load_verify_locations(str(ca_file))
    host, port = address
    async with quic_connect(
        host, port, configuration=configuration, create_protocol=WtClient
    ) as client:
        assert isinstance(client, WtClient)
        yield client
