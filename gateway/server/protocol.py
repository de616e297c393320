"""The QUIC/HTTP/3 adapter for one connection: translates H3 and WebTransport events for the hub.

Each WebTransport session on ``chat_path`` is one hub session; the first bidirectional stream the
client opens in it carries the session's frames both ways. Other HTTP/3 requests are answered by
:mod:`gateway.server.http`. This class only moves bytes: every decision about frames is the hub's.

Stream bookkeeping: QUIC forgets a stream, and gives the client credit (MAX_STREAMS) for a new
one, only once *both* sides of it have ended. So whenever a session ends, however it ends (the
client's FIN or RESET_STREAM on either of its streams, or the hub closing it), the gateway ends its
own side of the frame stream (FIN) and of the CONNECT stream (FIN). A session's record is kept
until the client has ended its side of both streams too, so that what still arrives on them is
recognised (a late FIN is nothing; late data is stopped with STOP_SENDING), never mistaken for a
stream of an unknown session. Records are bounded by QUIC's stream limit: each one holds an open
stream of the client's.

At most ``max_sessions_per_connection`` sessions (``[core.limits]``) are open at once on one
connection: a CONNECT beyond that is answered ``429`` and ends there.

One budget per connection: :meth:`GatewayProtocol.queued_bytes` is what every stream the gateway
writes on (frame streams, HTTP/3 responses) holds unacknowledged. A session the gateway ended keeps
its unread bytes (its last frames, the Error, the FIN) for ``unread_grace_s``; then, or at once if
the connection is over ``max_backlog_bytes``, its frame stream is reset and the engine drops them,
and a connection left with no session is closed (a client that did not read them in that time is
not reading). Request streams are watched until their requests are whole
(:mod:`gateway.server.h3guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
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
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
    WebTransportStreamDataReceived,
    closing,
    connection_unacked_bytes,
    h3_buffered_bytes,
    h3_discard_stream,
    peer_address,
    peer_max_datagram_bytes,
    pending_datagram_bytes,
    reset_stream,
    send_h3_datagram,
    send_stream_data,
    unacked_bytes,
)
from gateway.server import http
from gateway.server.h3guard import DROP, H3_EXCESSIVE_LOAD, H3_REQUEST_REJECTED, PASS, RequestGuard
from gateway.wire.framing import delimit

if TYPE_CHECKING:
    from gateway.server.app import GatewayServer

__all__ = ["GatewayProtocol"]

log = logging.getLogger("skein.server")

# WebTransport over HTTP/3 error code for a session the gateway ends (draft-ietf-webtrans-http3):
# streams are reset with this, and the QUIC connection closes with H3_NO_ERROR (0x100).
_H3_NO_ERROR = 0x100
_MAX_EARLY_SESSIONS = 4
_MAX_EARLY_BYTES = 64 * 1024
# What a write may add to the engine's count of a connection's backlog beyond its bytes (a packet's
# headers and AEAD tag, when the write is a packet of its own; qh3 counts bytes in flight).
_WRITE_OVERHEAD = 64
# The backlog is measured exactly at least once per this many writes, whatever the bound says
# (the engine's count can also grow without our writes: probes, keepalives).
_MEASURE_EVERY_WRITES = 32
# Bytes of DATAGRAM frames a connection may have waiting for congestion window (aioquic's queue
# has no bound of its own); past it new ones are dropped: they carry only chatter.
_MAX_PENDING_DATAGRAM_BYTES = 64 * 1024
_connection_keys = itertools.count(1)


@dataclass(slots=True)
class _WtSession:
    """A WebTransport session, from its CONNECT until both sides have ended both its streams."""

    connect_stream_id: int
    frame_stream_id: int | None = None
    conn_id: int | None = None  # the hub session, while it is open
    extra_streams: set[int] = field(default_factory=set)
    ended: bool = False  # the gateway has ended the session and its sides of both streams
    stopped: bool = False  # STOP_SENDING sent for late data on the frame stream
    client_ended: set[int] = field(default_factory=set)  # streams the client has FINned or reset


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
        self.cid = ""
        # Names this QUIC connection to the hub, which shares rate limits among its sessions.
        # Unique for the process's lifetime (an id() could be reused by a later connection).
        self.connection_key = next(_connection_keys)
        core = gateway.config.core
        self._limits = core.limits
        self._max_backlog = core.max_backlog_bytes
        self._send_budget = core.send_budget_bytes
        # An upper bound on queued_bytes(): its last measure plus what was written since, so a
        # write need not ask the engine while the bound is under the budget (see backlog()).
        self._backlog_bound = 0
        self._writes_unmeasured = 0
        self._guard = RequestGuard(
            core.limits.max_request_header_bytes, core.limits.request_deadline_s
        )
        self.history = http.ConnectionBudget(core.limits, core.send_budget_bytes, self.unread_bytes)
        self._sending: set[int] = set()  # streams the gateway writes on: the connection's backlog
        self._releasing: dict[int, float] = {}  # ended sessions' frame streams -> when to reset
        self._guard_timer: asyncio.TimerHandle | None = None
        self._guard_at: float | None = None

    # ---- asyncio / aioquic hooks ----------------------------------------------------------------

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        before = peer_address(self._quic)
        super().datagram_received(data, addr)
        after = peer_address(self._quic)
        if before is not None and after is not None and after != before:
            self.gateway.path_changed(self, before, after)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            if not self._admit(event):
                return
        elif isinstance(event, StopSendingReceived):
            if event.stream_id in self._sending:  # the client wants no more: drop what waits
                reset_stream(self._quic, event.stream_id, _H3_NO_ERROR)
        elif isinstance(event, ProtocolNegotiated):
            if event.alpn_protocol in H3_ALPN:
                self._h3 = H3Connection(self._quic, enable_webtransport=True)
                self.cid = self._quic.host_cid.hex()
        elif isinstance(event, HandshakeCompleted):
            self.gateway.handshake_completed(self)
        elif isinstance(event, StreamReset):
            if self._guard.reset(event.stream_id):
                return  # a request stream the gateway refused: the HTTP/3 layer forgot it
            session = self._by_stream.get(event.stream_id) or self._sessions.get(event.stream_id)
            if session is not None:
                self._client_ended(session, event.stream_id)
        elif isinstance(event, ConnectionTerminated):
            for session in list(self._sessions.values()):
                if session.conn_id is not None:
                    self.gateway.session_ended(session.conn_id, mid_stream=False)
                session.conn_id = None
            self._sessions.clear()
            self._by_stream.clear()
            self._releasing.clear()
            if self._guard_timer is not None:
                self._guard_timer.cancel()
            self.gateway.connection_closed(self)
        if self._h3 is not None:
            for h3_event in self._h3.handle_event(event):
                self._h3_event_received(h3_event)
            if isinstance(event, StreamDataReceived):
                self._check_buffered(event.stream_id)

    # ---- request streams: size and time bounds (gateway/server/h3guard.py) ---------------------

    def _admit(self, event: StreamDataReceived) -> bool:
        """Whether the HTTP/3 layer may see this stream data (else it is dropped)."""
        verdict = self._guard.receive(
            event.stream_id, event.data, event.end_stream, self.gateway.now()
        )
        if verdict == PASS:
            if self._guard.next_deadline() is not None:
                self._arm_guard_timer()
            return True
        if verdict != DROP:
            self._refuse_request(event.stream_id, verdict)
        return False

    def _check_buffered(self, stream_id: int) -> None:
        """The HTTP/3 layer must not hold more than the limit of any stream's unfinished frame
        (trailers, a control stream's frame): a request stream is refused, the connection closed
        for a control stream (HTTP/3 does not allow resetting one)."""
        assert self._h3 is not None
        if h3_buffered_bytes(self._h3, stream_id) <= self._limits.max_request_header_bytes:
            return
        if stream_id & 2:
            self.close(error_code=H3_EXCESSIVE_LOAD, reason_phrase="HTTP/3 frame too large")
            return
        self._guard.refuse(stream_id, H3_EXCESSIVE_LOAD)
        self._refuse_request(stream_id, H3_EXCESSIVE_LOAD)

    def _refuse_request(self, stream_id: int, code: int) -> None:
        """Stop and reset a request stream over its size or time bound; the HTTP/3 layer forgets
        it (a WebTransport session on it ends)."""
        self.gateway.counters["requests_refused"] += 1
        log.debug("request stream %d refused: 0x%x", stream_id, code, extra={"cid": self.cid})
        if not closing(self._quic):
            with contextlib.suppress(ValueError, RuntimeError):  # an unknown or ended stream
                self._quic.stop_stream(stream_id, code)
            reset_stream(self._quic, stream_id, code)
        if self._h3 is not None:
            h3_discard_stream(self._h3, stream_id)
        session = self._sessions.get(stream_id)
        if session is not None:
            self._client_ended(session, stream_id)
        self.transmit()

    # ---- timers: request deadlines, unread bytes of ended sessions -----------------------------

    def _arm_guard_timer(self) -> None:
        times = [t for t in (self._guard.next_deadline(), *self._releasing.values()) if t]
        at = min(times) if times else None
        if at == self._guard_at:
            return
        if self._guard_timer is not None:
            self._guard_timer.cancel()
            self._guard_timer = None
        self._guard_at = at
        if at is not None:
            self._guard_timer = asyncio.get_running_loop().call_at(at, self._on_guard_timer)

    def _on_guard_timer(self) -> None:
        self._guard_timer = self._guard_at = None
        now = self.gateway.now()
        for stream_id in self._guard.expired(now):
            self._refuse_request(stream_id, H3_REQUEST_REJECTED)
        for stream_id, at in list(self._releasing.items()):
            if at <= now:
                self._release(stream_id)
        self._arm_guard_timer()

    def _release(self, stream_id: int) -> None:
        """An ended session's frame stream: if the client has still not read all of it, reset it
        (the engine drops the bytes), and close a connection left with no session."""
        self._releasing.pop(stream_id, None)
        if closing(self._quic) or not unacked_bytes(self._quic, stream_id, in_flight=False):
            return
        self.gateway.counters["unread_released"] += 1
        reset_stream(self._quic, stream_id, _H3_NO_ERROR)
        if not self.open_sessions:
            log.info(
                "connection closed: an ended session's data went unread",
                extra={"event": "unread_closed", "cid": self.cid},
            )
            self.close(error_code=_H3_NO_ERROR, reason_phrase="unread data: session over")
        else:
            self.transmit()

    # ---- HTTP/3 ---------------------------------------------------------------------------------

    def _h3_event_received(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            self._on_headers(event)
        elif isinstance(event, WebTransportStreamDataReceived):
            self._on_wt_data(event)
        elif isinstance(event, DataReceived):
            session = self._sessions.get(event.stream_id)
            if session is not None and event.stream_ended:  # the client closed the session
                self._client_ended(session, event.stream_id)
        elif isinstance(event, DatagramReceived):
            pass  # clients have nothing to send as datagrams (docs/protocol.md §1.7): ignored

    def _on_headers(self, event: HeadersReceived) -> None:
        if self._guard.is_refused(event.stream_id):
            return  # its headers were waiting for QPACK when the stream was refused
        self._guard.classified(event.stream_id)
        headers = {k: v for k, v in event.headers}
        method = headers.get(b":method", b"")
        path = headers.get(b":path", b"").decode("utf-8", "replace")
        if method == b"CONNECT" and headers.get(b":protocol") == b"webtransport":
            self._answered.add(event.stream_id)
            if path.split("?", 1)[0] != self.gateway.config.chat_path:
                self._send_headers(event.stream_id, 404, end_stream=True)
            elif self.open_sessions >= self.gateway.config.core.limits.max_sessions_per_connection:
                self._refuse_session(event.stream_id)
            else:
                self._sessions[event.stream_id] = _WtSession(event.stream_id)
                self._send_headers(
                    event.stream_id,
                    200,
                    end_stream=False,
                    extra=[(b"sec-webtransport-http3-draft", b"draft02")],
                )
            for early in self._early.pop(event.stream_id, ()):
                self._on_wt_data(early)  # stream data that overtook its CONNECT
            return
        if event.stream_id in self._sessions:
            if event.stream_ended:  # trailing HEADERS with FIN: the client closed the session
                self._client_ended(self._sessions[event.stream_id], event.stream_id)
            return
        accept = headers.get(b"accept", b"").decode("ascii", "replace")
        authorization = headers.get(b"authorization", b"").decode("ascii", "replace")
        answer = http.handle_request(
            self.gateway,
            method.decode("ascii", "replace"),
            path,
            accept,
            authorization,
            budget=self.history,
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
        self._wrote(len(response.body))
        self._sending.add(stream_id)  # counted against the connection's budget until acked
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

    @property
    def open_sessions(self) -> int:
        """WebTransport sessions accepted on this connection and not yet ended."""
        return sum(1 for session in self._sessions.values() if not session.ended)

    def _refuse_session(self, stream_id: int) -> None:
        """Answer a CONNECT over ``max_sessions_per_connection`` with 429 (and end the stream)."""
        limit = self.gateway.config.core.limits.max_sessions_per_connection
        self.gateway.counters["sessions_refused"] += 1  # skein_sessions_refused_total
        log.debug(  # debug: a client could ask again and again; the counter is the signal
            "session refused: too many sessions on one connection",
            extra={"event": "session_refused", "cid": self.cid, "limit": limit},
        )
        self._send_headers(
            stream_id,
            429,
            end_stream=True,
            extra=[(b"content-type", b"text/plain")],
        )

    def _refuse_stream(self, stream_id: int) -> None:
        """Stop a stream the gateway has no use for (reset our side too if it is bidirectional:
        the gateway never writes on such a stream, so nothing of its own is lost)."""
        if closing(self._quic):  # qh3 refuses stream operations once the connection closes
            return
        self._quic.stop_stream(stream_id, _H3_NO_ERROR)
        if not stream_id & 2:
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
        if session is not None and event.stream_id == session.frame_stream_id:
            self._on_frame_stream(session, event)
            return
        if (
            session is None
            or unidirectional
            or session.frame_stream_id is not None
            or session.ended
        ):
            if session is None or event.stream_id not in session.extra_streams:
                if session is not None:
                    session.extra_streams.add(event.stream_id)
                self._refuse_stream(event.stream_id)
            return
        session.frame_stream_id = event.stream_id
        self._by_stream[event.stream_id] = session
        self._sending.add(event.stream_id)
        session.conn_id = self.gateway.session_opened(self, event.stream_id)
        self._on_frame_stream(session, event)

    def _on_frame_stream(self, session: _WtSession, event: WebTransportStreamDataReceived) -> None:
        """Bytes (and perhaps the FIN) on a session's frame stream."""
        if session.conn_id is not None and event.data:
            self.gateway.session_data(session.conn_id, event.data)
        elif session.ended and event.data and not session.stopped and not event.stream_ended:
            session.stopped = True  # the session is over: tell the client to stop writing
            if not closing(self._quic):
                self._quic.stop_stream(event.stream_id, _H3_NO_ERROR)
                self.transmit()
        if event.stream_ended:
            self._client_ended(session, event.stream_id)

    # ---- called by the server -------------------------------------------------------------------

    def send_frames(self, stream_id: int, data: bytes) -> None:
        """Queue ``data`` on a session's frame stream (the server transmits after a batch).
        Dropped if the stream or connection is over: the hub hears of it from their events."""
        send_stream_data(self._quic, stream_id, data)
        self._wrote(len(data))

    def send_datagram(self, stream_id: int, payload: bytes) -> None:
        """Send one ServerFrame, ``payload``, to the session of frame stream ``stream_id`` as an
        HTTP/3 datagram (the server transmits after a batch); on the stream, length-prefixed,
        if the client's QUIC has no datagrams or the payload does not fit in one. Dropped, and
        counted, while the connection already has ``_MAX_PENDING_DATAGRAM_BYTES`` waiting (qh3
        does not say what waits: there, while its backlog is over the send budget). Waiting
        datagrams count in the connection's backlog (:meth:`queued_bytes`)."""
        session = self._by_stream.get(stream_id)
        if session is None or session.ended or self._h3 is None or closing(self._quic):
            return
        counters = self.gateway.counters
        if len(payload) > peer_max_datagram_bytes(self._quic):
            counters["datagrams_on_stream"] += 1
            self.send_frames(stream_id, delimit(payload))
            return
        pending = pending_datagram_bytes(self._quic)
        if (
            pending >= _MAX_PENDING_DATAGRAM_BYTES
            if pending is not None
            else self._backlog_bound >= self._send_budget
        ):
            counters["datagrams_dropped"] += 1
            return
        counters["datagrams_sent"] += 1
        send_h3_datagram(self._h3, session.connect_stream_id, payload)
        self._wrote(len(payload))

    def _wrote(self, size: int) -> None:
        self._backlog_bound += size + _WRITE_OVERHEAD
        self._writes_unmeasured += 1

    def backlog(self, stream_id: int) -> int:
        """The connection's backlog after a write, to compare with the send budget: measured
        (:meth:`queued_bytes`) once an upper bound on it reaches the budget, and at least every
        ``_MEASURE_EVERY_WRITES`` writes; else that bound, which is under the budget. Asking the
        engine walks every stream (aioquic) or crosses into native code (qh3): at 20,000
        deliveries/s that was a measurable share of the gateway's CPU."""
        if (
            self._backlog_bound < self._send_budget
            and self._writes_unmeasured < _MEASURE_EVERY_WRITES
        ):
            return self._backlog_bound
        return self.queued_bytes(stream_id)

    def queued_bytes(self, stream_id: int) -> int:
        """The connection's backlog, which its one send budget is measured against: bytes
        written to any of its streams (``stream_id``'s and every other) and not yet
        acknowledged by the client. The engine is the one place that knows. Over
        ``max_backlog_bytes``, ended sessions' unread bytes are dropped at once."""
        total = self.unread_bytes()
        if self._releasing and total > self._max_backlog:
            for ended in list(self._releasing):
                self._release(ended)
            total = self.unread_bytes()
        self._backlog_bound, self._writes_unmeasured = total, 0
        return total

    def unread_bytes(self) -> int:
        """Bytes the gateway wrote on this connection that the client has not acknowledged, and
        datagrams waiting to be sent."""
        return connection_unacked_bytes(self._quic, self._sending) + (
            pending_datagram_bytes(self._quic) or 0
        )

    def finish_session(self, stream_id: int) -> None:
        """End a session the gateway closed: FIN its frame stream and its CONNECT stream."""
        session = self._by_stream.get(stream_id)
        if session is not None:
            self._end(session)

    # ---- session endings ------------------------------------------------------------------------

    def _client_ended(self, session: _WtSession, stream_id: int) -> None:
        """The client FINned or reset one of the session's streams: the session is over (an
        end inside a frame first earns an Error, the hub's call), and the record goes once
        the client has ended both streams."""
        session.client_ended.add(stream_id)
        if session.conn_id is not None and stream_id == session.frame_stream_id:
            self.gateway.session_ended(session.conn_id, mid_stream=True)  # may finish_session
        self._end(session)
        self._drop_if_done(session)

    def _end(self, session: _WtSession) -> None:
        """End the session (once): tell the server, FIN the gateway's side of its frame stream
        and of its CONNECT stream, so that QUIC can let both go once the client ends its sides."""
        if session.ended:
            return
        session.ended = True
        conn_id, session.conn_id = session.conn_id, None
        if conn_id is not None:
            self.gateway.session_ended(conn_id, mid_stream=False)
        if closing(self._quic):
            return
        if session.frame_stream_id is not None:
            send_stream_data(self._quic, session.frame_stream_id, b"", end_stream=True)
            grace = self._limits.unread_grace_s
            self._releasing[session.frame_stream_id] = self.gateway.now() + grace
            self._arm_guard_timer()
        if self._h3 is not None:
            try:
                self._h3.send_data(session.connect_stream_id, b"", end_stream=True)
            except Exception:  # the engine refuses a write after our FIN; nothing else to do
                log.debug("CONNECT stream %d already closed", session.connect_stream_id)
        self.transmit()

    def _drop_if_done(self, session: _WtSession) -> None:
        """Forget an ended session once the client has ended each of its streams."""
        streams = {session.connect_stream_id}
        if session.frame_stream_id is not None:
            streams.add(session.frame_stream_id)
        if session.ended and streams <= session.client_ended:
            self._sessions.pop(session.connect_stream_id, None)
            if session.frame_stream_id is not None:
                self._by_stream.pop(session.frame_stream_id, None)
