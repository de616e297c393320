"""The QUIC/HTTP/3 adapter for one connection: translates H3 and WebTransport events for the hub.

Each WebTransport session on ``chat_path`` is one hub session; the first bidirectional stream the
client opens in it carries the session's frames both ways. Other HTTP/3 requests are answered by
:mod:`gateway.server.http`. This class only moves bytes: every decision is the hub's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.engine import (
    H3_ALPN,
    ConnectionTerminated,
    DatagramReceived,
    DataReceived,
    H3Connection,
    H3Event,
    HandshakeCompleted,
    HeadersReceived,
    NetworkAddress,
    ProtocolNegotiated,
    QuicConnectionProtocol,
    QuicEvent,
    StreamReset,
    WebTransportStreamDataReceived,
    closing,
    peer_address,
    send_stream_data,
    unacked_bytes,
)
from gateway.server import http

if TYPE_CHECKING:
    from gateway.server.app import GatewayServer

__all__ = ["GatewayProtocol"]

log = logging.getLogger("skein.server")

# WebTransport over HTTP/3 error code for a session the gateway ends (draft-ietf-webtrans-http3):
# streams are reset with this, and the QUIC connection closes with H3_NO_ERROR (0x100).
_H3_NO_ERROR = 0x100
_MAX_EARLY_SESSIONS = 4
_MAX_EARLY_BYTES = 64 * 1024
_MAX_FINISHED_STREAMS = 16  # frame streams the gateway ended, remembered per connection


@dataclass(slots=True)
class _WtSession:
    connect_stream_id: int
    frame_stream_id: int | None = None
    conn_id: int | None = None
    extra_streams: set[int] = field(default_factory=set)


class GatewayProtocol(QuicConnectionProtocol):
    """One QUIC connection to the gateway (a connection survives address changes; so do sessions)."""

    def __init__(self, *args: Any, gateway: GatewayServer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gateway = gateway
        self._h3: H3Connection | None = None
        self._sessions: dict[int, _WtSession] = {}  # by CONNECT stream id
        self._by_stream: dict[int, _WtSession] = {}  # frame stream id -> session
        self._peer: NetworkAddress | None = None
        self._early: dict[int, list[WebTransportStreamDataReceived]] = {}
        self._answered: set[int] = set()  # CONNECT streams already answered (kept or refused)
        # Frame streams whose sending side the gateway finished (oldest forgotten first: by
        # then their FIN has long been delivered).
        self._finished: dict[int, None] = {}
        self.cid = ""

    # ---- asyncio / aioquic hooks ----------------------------------------------------------------

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        before = peer_address(self._quic)
        super().datagram_received(data, addr)
        after = peer_address(self._quic)
        if before is not None and after is not None and after != before:
            self.gateway.path_changed(self, before, after)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self._h3 = H3Connection(self._quic, enable_webtransport=True)
                self.cid = self._quic.host_cid.hex()
        elif isinstance(event, HandshakeCompleted):
            self.gateway.handshake_completed(self)
        elif isinstance(event, StreamReset):
            session = self._by_stream.get(event.stream_id)
            if session is not None and session.conn_id is not None:
                self.gateway.session_ended(session.conn_id, mid_stream=True)
                self._forget(session)
        elif isinstance(event, ConnectionTerminated):
            for session in list(self._sessions.values()):
                if session.conn_id is not None:
                    self.gateway.session_ended(session.conn_id, mid_stream=False)
            self._sessions.clear()
            self._by_stream.clear()
            self.gateway.connection_closed(self)
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._h3_event_received(h3_event)

    # ---- HTTP/3 ---------------------------------------------------------------------------------

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            self._on_headers(event)
        elif isinstance(event, WebTransportStreamDataReceived):
            self._on_wt_data(event)
        elif isinstance(event, DataReceived):
            session = self._sessions.get(event.stream_id)
            if session is not None and event.stream_ended:  # the client closed the session
                self._end_session(session)
        elif isinstance(event, DatagramReceived):
            pass  # clients send nothing on datagrams (yet); ignoring them is harmless

    def _on_headers(self, event: HeadersReceived) -> None:
        headers = {k: v for k, v in event.headers}
        method = headers.get(b":method", b"")
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        if method == b"CONNECT" and headers.get(b":protocol") == b"webtransport":
            self._answered.add(event.stream_id)
            if path.split("?", 1)[0] == self.gateway.config.chat_path:
                self._sessions[event.stream_id] = _WtSession(event.stream_id)
                self._send_headers(
                    event.stream_id,
                    200,
                    end_stream=False,
                    extra=[(b"sec-webtransport-http3-draft", b"draft02")],
                )
            else:
                self._send_headers(event.stream_id, 404, end_stream=True)
            for early in self._early.pop(event.stream_id, ()):
                self._on_wt_data(early)  # stream data that overtook its CONNECT
            return
        if event.stream_id in self._sessions and event.stream_ended:
            self._end_session(self._sessions[event.stream_id])
            return
        accept = headers.get(b"accept", b"").decode("ascii", "replace")
        authorization = headers.get(b"authorization", b"").decode("ascii", "replace")
        answer = http.handle_request(
            self.gateway, method.decode("ascii", "replace"), path, accept, authorization
        )
        if isinstance(answer, http.Response):
            self._respond(event.stream_id, answer)
        else:
            task = asyncio.ensure_future(answer)
            task.add_done_callback(functools.partial(self._respond_later, event.stream_id))

    def _respond_later(self, stream_id: int, task: asyncio.Future[http.Response]) -> None:
        if task.cancelled() or task.exception() is not None:
            log.error("request failed: %r", None if task.cancelled() else task.exception())
            response = http.Response(500, "application/json", b'{"error": "internal error"}')
        else:
            response = task.result()
        if self._h3 is not None:
            self._respond(stream_id, response)

    def _respond(self, stream_id: int, response: http.Response) -> None:
        if closing(self._quic):  # the client left before its answer was ready
            return
        extra = [(b"content-type", response.content_type.encode())]
        extra += [(k.encode(), v.encode()) for k, v in response.headers]
        self._send_headers(stream_id, response.status, end_stream=False, extra=extra)
        assert self._h3 is not None
        self._h3.send_data(stream_id, response.body, end_stream=True)
        self.transmit()

    def _send_headers(
        self,
        stream_id: int,
        status: int,
        *,
        end_stream: bool,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        assert self._h3 is not None
        if closing(self._quic):  # events can follow the peer's CONNECTION_CLOSE in one datagram
            return
        headers = [(b":status", str(status).encode()), (b"server", b"skein")] + (extra or [])
        self._h3.send_headers(stream_id, headers, end_stream=end_stream)
        self.transmit()

    def _refuse_stream(self, stream_id: int) -> None:
        """Stop a stream the gateway has no use for (reset our side too if it is bidirectional,
        unless the gateway finished it: a reset would discard its last frames, such as the
        Error that says why the session ended, and the FIN)."""
        if closing(self._quic):  # qh3 refuses stream operations once the connection closes
            return
        self._quic.stop_stream(stream_id, _H3_NO_ERROR)
        if not stream_id & 2 and stream_id not in self._finished:
            self._quic.reset_stream(stream_id, _H3_NO_ERROR)

    def _hold_early(self, event: WebTransportStreamDataReceived) -> bool:
        """Keep stream data whose CONNECT has not arrived yet (packets reorder; clients open
        their stream right after the CONNECT). Bounded: a few sessions, a little data each;
        beyond that the stream is refused."""
        held = self._early.get(event.session_id)
        if held is None:
            if len(self._early) >= _MAX_EARLY_SESSIONS or event.session_id & 3:
                return False  # only client-initiated bidirectional streams carry a CONNECT
            held = self._early[event.session_id] = []
        if sum(len(e.data) for e in held) + len(event.data) > _MAX_EARLY_BYTES:
            return False
        held.append(event)
        return True

    def _on_wt_data(self, event: WebTransportStreamDataReceived) -> None:
        session = self._sessions.get(event.session_id)
        if session is None and event.session_id not in self._answered and self._hold_early(event):
            return
        unidirectional = bool(event.stream_id & 2)
        if session is None or (unidirectional and event.stream_id != session.frame_stream_id):
            if session is None or event.stream_id not in session.extra_streams:
                if session is not None:
                    session.extra_streams.add(event.stream_id)
                self._refuse_stream(event.stream_id)
            return
        if session.frame_stream_id is None:
            session.frame_stream_id = event.stream_id
            session.conn_id = self.gateway.session_opened(self, event.stream_id)
            self._by_stream[event.stream_id] = session
        elif event.stream_id != session.frame_stream_id:
            if event.stream_id not in session.extra_streams:
                session.extra_streams.add(event.stream_id)
                self._refuse_stream(event.stream_id)
            return
        assert session.conn_id is not None
        if event.data:
            self.gateway.session_data(session.conn_id, event.data)
        if event.stream_ended:
            self.gateway.session_ended(session.conn_id, mid_stream=True)
            self._forget(session)

    # ---- called by the server -------------------------------------------------------------------

    def send_frames(self, stream_id: int, data: bytes) -> None:
        """Queue ``data`` on a session's frame stream (the server transmits after a batch).
        Dropped if the stream or connection is over: the hub hears of it from their events."""
        send_stream_data(self._quic, stream_id, data)

    def queued_bytes(self, stream_id: int) -> int:
        """Bytes written to a stream and not yet acknowledged by the client (queued or in
        flight): the connection's backlog. The engine's sender is the one place that knows."""
        return unacked_bytes(self._quic, stream_id)

    def finish_session(self, stream_id: int) -> None:
        """End a session the gateway closed: FIN its frame stream and its CONNECT stream."""
        session = self._by_stream.get(stream_id)
        if session is None:
            return
        if send_stream_data(self._quic, stream_id, b"", end_stream=True):
            self._finished[stream_id] = None
            if len(self._finished) > _MAX_FINISHED_STREAMS:
                del self._finished[next(iter(self._finished))]
        self._end_session(session)

    def _end_session(self, session: _WtSession) -> None:
        if session.conn_id is not None:
            self.gateway.session_ended(session.conn_id, mid_stream=False)
        if self._h3 is not None:
            try:
                self._h3.send_data(session.connect_stream_id, b"", end_stream=True)
            except Exception:  # the stream may already be finished; nothing else to do
                log.debug("CONNECT stream %d already closed", session.connect_stream_id)
        self._forget(session)
        self.transmit()

    def _forget(self, session: _WtSession) -> None:
        self._sessions.pop(session.connect_stream_id, None)
        if session.frame_stream_id is not None:
            self._by_stream.pop(session.frame_stream_id, None)
        session.conn_id = None
