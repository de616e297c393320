"""A swarm of light chat sessions in one process, for the fan-out benchmarks.

Each session is one QUIC connection carrying one WebTransport session, built by hand from the
engine seam (an H3Connection with WebTransport, the CONNECT, then a Hello and a Join from the wire
codec): no SDK, no reconciliation, no object per message. A subscriber only counts what it is
delivered, walking the Deliver bytes just far enough to count messages and tombstones; every
``SAMPLE_EVERY``-th session decodes in full and records each message's latency from the time its
publisher *meant* to send it (loadgen's payload), so stalls show instead of hiding (no
coordinated omission). The point is to take as little CPU as possible from the gateway that
shares the machine; run the process with SKEIN_QUIC_ENGINE=qh3 for the cheaper packet core.

:mod:`bench.load` drives the process over stdin, one command a line, and reads one JSON line per
command from stdout:

- ``open URL CA ROOM COUNT SAMPLE_EVERY [ROOMS FIRST]``: open sessions until COUNT are live and
  joined (so it also tops up after the gateway dropped some) -> ``{"live": n, "failed": n}``.
  With ROOMS (default 1) the process's subscribers are the fleet's FIRST .. FIRST+COUNT-1 (default
  0), and subscriber ``i`` joins room ``i % ROOMS`` of :func:`bench.clientproc.room_names`; with
  one room that is ROOM itself
- ``reset``: zero the counters and the latency histogram -> ``{}``
- ``snap``: the counters since the last reset, the histogram HDR-encoded -> ``{...}``
- ``publish URL CA ROOM RATE_HZ BODY_BYTES [ROOMS]``: a fresh session joins every room and starts
  publishing CHATTER at RATE_HZ into each (message ``i`` to room ``i % ROOMS``, RATE_HZ x ROOMS
  in all) -> ``{"started": true}`` once it has joined them all
- ``stop``: stop publishing and close that session (dropping what it could not send, so the
  next run starts clean) -> what it sent, what was acked, how late it fell behind its schedule
- ``close``: close every session -> ``{"closed": n}``

End of input ends the process. The tally, the schedule and the command loop are shared with
the NATS clients (:mod:`bench.clientproc`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import urlsplit

import lz4.block

from bench.clientproc import (
    Paced,
    Tally,
    body,
    open_missing,
    record_latency,
    room_names,
    serve_process,
)
from bench.common import udp_drops
from gateway.engine import (
    H3_ALPN,
    ConnectionTerminated,
    H3Connection,
    QuicConfiguration,
    QuicConnection,
    QuicConnectionProtocol,
    QuicEvent,
    StreamDataReceived,
)
from gateway.errors import GatewayError
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit

__all__ = ["Publisher", "RawSession", "Swarm", "Tally", "count_deliver", "main"]

MAX_FRAME_BYTES = 16 << 20
OPEN_PARALLEL = 32  # handshakes in flight at once while opening sessions
OPEN_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 300.0  # sessions sit idle between runs (the bench gateway waits as long)
STREAM_WINDOW_BYTES = 8 << 20  # as the SDK: flow control never holds the gateway back

# The ServerFrame keys of a plain and an lz4 Deliver, and Deliver's own field keys.
_DELIVER, _DELIVER_LZ4 = (5 << 3) | 2, (6 << 3) | 2
_ROOM, _MESSAGE, _SKIPPED = (1 << 3) | 2, (2 << 3) | 2, (3 << 3) | 0


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def count_deliver(payload: bytes) -> tuple[int, int]:
    """(messages, tombstones) in a ServerFrame payload holding a Deliver or an lz4 Deliver.

    Walks the protobuf fields without decoding a message: the cheapest count there is. The
    gateway puts the number of tombstones of a batch in its ``skipped`` field.
    """
    length, pos = _varint(payload, 1)
    body = payload[pos : pos + length]
    if payload[0] == _DELIVER_LZ4:
        body = lz4.block.decompress(body)
    messages = skipped = 0
    pos, end = 0, len(body)
    while pos < end:
        key = body[pos]
        pos += 1
        value, pos = _varint(body, pos)
        if key == _SKIPPED:
            skipped += value
        elif key & 7 == 2:  # a length-delimited field: room or message
            pos += value
            messages += key == _MESSAGE
    return messages - skipped, skipped


class RawSession(QuicConnectionProtocol):
    """One WebTransport session on its own QUIC connection, counting what it is delivered."""

    def __init__(self, quic: QuicConnection, tally: Tally, full: bool) -> None:
        super().__init__(quic)
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.tally = tally
        self.full = full  # decode every message and record its latency
        self.frame_stream = -1
        self.decoder = FrameDecoder(MAX_FRAME_BYTES)
        self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.rooms_joined = 0  # Joined frames received
        self.room = 0  # the index of the room it was opened for
        self.ended = False
        self.transport_: asyncio.DatagramTransport | None = None
        self.port = 0  # the local UDP port

    def begin(self, authority: str, path: str, room: str, name: str) -> None:
        """CONNECT, open the session's stream, say Hello and Join ``room``, all in one flight."""
        connect_stream = self._quic.get_next_available_stream_id()
        self.h3.send_headers(
            connect_stream,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"webtransport"),
                (b":scheme", b"https"),
                (b":authority", authority.encode()),
                (b":path", path.encode()),
            ],
        )
        self.frame_stream = self.h3.create_webtransport_stream(connect_stream)
        hello = f.Hello(f.PROTOCOL_VERSION, ("lz4",), "", name)
        self.send(
            delimit(encode_client_frame(hello)) + delimit(encode_client_frame(f.Join(1, room)))
        )

    def send(self, data: bytes) -> None:
        self._quic.send_stream_data(self.frame_stream, data)
        self.transmit()

    def end(self) -> None:
        """Close the connection and its socket (the CONNECTION_CLOSE goes out first)."""
        self.ended = True
        self.close()
        if self.transport_ is not None:
            self.transport_.close()

    def quic_event_received(self, event: QuicEvent) -> None:
        # The client's H3 does not know the stream it opened is WebTransport (as in the SDK):
        # take the session's bytes before H3 would parse them as HTTP/3 frames.
        if isinstance(event, StreamDataReceived) and event.stream_id == self.frame_stream:
            try:
                for payload in self.decoder.feed(event.data):
                    self._payload(payload)
            except GatewayError:
                self.tally.errors += 1
                self._lost("undecodable frame")
                self.end()
            if event.end_stream:
                self._lost("the gateway ended the session")
            return
        if isinstance(event, ConnectionTerminated):
            self._lost(event.reason_phrase)
            return
        self.h3.handle_event(event)  # settings and the CONNECT's answer: nothing to act on

    def _lost(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        if self.joined.done():
            self.tally.lost += 1
        else:
            self.joined.set_exception(ConnectionError(f"session ended before Joined: {reason}"))
            self.joined.exception()  # retrieved: the opener may have given up already

    def _payload(self, payload: bytes) -> None:
        if payload[0] in (_DELIVER, _DELIVER_LZ4):
            self.tally.batches += 1
            if self.full:
                self._decode(payload)
            else:
                messages, tombstones = count_deliver(payload)
                self.tally.messages += messages
                self.tally.tombstones += tombstones
            return
        frame = decode_server_frame(payload)
        if isinstance(frame, f.Joined):
            self.rooms_joined += 1
            if not self.joined.done():
                self.joined.set_result(None)
        elif isinstance(frame, f.Ack):
            self.tally.acks += 1
        elif isinstance(frame, f.Error):
            self.tally.errors += 1
            if not self.joined.done():
                self.joined.set_exception(ConnectionError(f"refused: {frame.message}"))
                self.joined.exception()

    def _decode(self, payload: bytes) -> None:
        frame = decode_server_frame(payload)
        assert isinstance(frame, f.Deliver)
        now_ns = time.monotonic_ns()
        tally = self.tally
        for message in frame.messages:
            if message.shed:
                tally.tombstones += 1
                continue
            tally.messages += 1
            record_latency(tally, message.body, now_ns)


async def open_session(url: str, ca_file: str, room: str, tally: Tally, full: bool) -> RawSession:
    """A joined session to the gateway at ``url``. Raises on refusal or timeout."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=H3_ALPN,
        server_name=host,
        max_datagram_frame_size=65536,
        idle_timeout=IDLE_TIMEOUT_S,
        max_stream_data=STREAM_WINDOW_BYTES,
        max_data=STREAM_WINDOW_BYTES * 2,
    )
    config.load_verify_locations(ca_file)
    quic = QuicConnection(configuration=config)
    loop = asyncio.get_running_loop()
    transport, session = await loop.create_datagram_endpoint(
        lambda: RawSession(quic, tally, full), local_addr=("127.0.0.1", 0)
    )
    session.transport_ = transport
    session.port = transport.get_extra_info("sockname")[1]
    try:
        session.connect((host, port))
        await asyncio.wait_for(session.wait_connected(), OPEN_TIMEOUT_S)
        session.begin(f"{host}:{port}", parts.path or "/v1/chat", room, f"swarm-{os.getpid()}")
        await asyncio.wait_for(asyncio.shield(session.joined), OPEN_TIMEOUT_S)
    except BaseException:
        session.end()
        raise
    return session


class Swarm:
    """The process's sessions and their one shared tally."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.sessions: list[RawSession] = []
        self.opened = 0  # sessions ever opened: picks which ones decode in full
        self.drops = 0  # our sockets' UDP drops at the last reset
        self.publisher: Publisher | None = None

    async def open(
        self,
        url: str,
        ca: str,
        room: str,
        count: str,
        every: str,
        rooms: str = "1",
        first: str = "0",
    ) -> dict[str, Any]:
        """Open sessions until ``count`` are live, each in its room (see the module docstring);
        a handshake that fails is tried again (a few rounds), since one lost Initial should not
        sink a benchmark of a thousand."""
        for gone in [s for s in self.sessions if s.ended]:
            gone.end()
        self.sessions = [s for s in self.sessions if not s.ended]
        names = room_names(room, int(rooms))
        gate = asyncio.Semaphore(OPEN_PARALLEL)

        async def one(index: int, room_index: int) -> RawSession:
            async with gate:
                full = index % int(every) == 0
                session = await open_session(url, ca, names[room_index], self.tally, full)
                session.room = room_index
                return session

        self.opened, reply = await open_missing(
            self.sessions, _room_of, self.opened, int(first), int(count), len(names), one
        )
        return reply

    async def reset(self) -> dict[str, Any]:
        self.tally = Tally()
        for session in self.sessions:
            session.tally = self.tally
        self.drops = udp_drops(self._ports())
        return {}

    async def snap(self) -> dict[str, Any]:
        """The tally, and the datagrams this process's sockets dropped since the reset (the
        clients, not the gateway, fell behind)."""
        return {**self.tally.as_json(), "udp_drops": udp_drops(self._ports()) - self.drops}

    def _ports(self) -> set[int]:
        return {s.port for s in self.sessions}

    async def close(self) -> dict[str, Any]:
        for session in self.sessions:
            session.end()
        closed, self.sessions = len(self.sessions), []
        return {"closed": closed}

    async def publish(
        self, url: str, ca: str, room: str, rate_per_s: str, body_bytes: str, rooms: str = "1"
    ) -> dict[str, Any]:
        """Open a publisher session, join every room and start publishing; returns once its
        schedule began."""
        if self.publisher is not None:
            raise RuntimeError("already publishing: stop first")
        names = room_names(room, int(rooms))
        tally = Tally()
        session = await open_session(url, ca, names[0], tally, False)
        try:
            if len(names) > 1:
                joins = [f.Join(2 + k, name) for k, name in enumerate(names[1:])]
                session.send(b"".join(delimit(encode_client_frame(join)) for join in joins))
                for _ in range(round(OPEN_TIMEOUT_S / 0.01)):
                    if session.rooms_joined >= len(names) or session.ended:
                        break
                    await asyncio.sleep(0.01)
                if session.rooms_joined < len(names):
                    raise RuntimeError(f"the publisher joined {session.rooms_joined} of {rooms}")
        except BaseException:
            session.end()
            raise
        self.publisher = Publisher(session, tally, names, float(rate_per_s), int(body_bytes))
        return {"started": True}

    async def stop(self) -> dict[str, Any]:
        """Stop publishing, wait a moment for the last acks, close the publisher's session
        (whatever it still held unsent is dropped: the next run starts clean)."""
        publisher, self.publisher = self.publisher, None
        if publisher is None:
            raise RuntimeError("not publishing")
        await publisher.schedule.stop()
        await asyncio.sleep(0.2)
        publisher.session.end()
        return {
            "sent": publisher.schedule.sent,
            "acked": publisher.tally.acks,
            "errors": publisher.tally.errors,
            "lag_ms_max": publisher.schedule.worst_lag_ns / 1e6,
        }


class Publisher:
    """Publishes CHATTER into ``rooms`` in turn, ``rate_per_s`` into each, on a :class:`Paced`
    schedule until stopped; messages that came due together go out in one write."""

    def __init__(
        self,
        session: RawSession,
        tally: Tally,
        rooms: list[str],
        rate_per_s: float,
        body_bytes: int,
    ) -> None:
        self.session, self.tally = session, tally

        async def emit(due: list[tuple[int, int]]) -> None:
            prefix = self.schedule.prefix
            frames = [
                delimit(
                    encode_client_frame(
                        f.Publish(
                            index + 2 + len(rooms),
                            rooms[index % len(rooms)],
                            f"{prefix}-{index}",
                            body(index, intended_ns, body_bytes),
                            f.Priority.CHATTER,
                        )
                    )
                )
                for index, intended_ns in due
            ]
            self.session.send(b"".join(frames))

        self.schedule = Paced(rate_per_s * len(rooms), emit)


def _room_of(session: RawSession) -> int:
    return session.room


async def main() -> None:
    await serve_process(Swarm())


if __name__ == "__main__":
    asyncio.run(main())
