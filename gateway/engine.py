"""The QUIC engine seam: every QUIC and HTTP/3 name Skein uses comes from here.

Two engines share one API: aioquic (the default, pure Python) and qh3 (an aioquic fork with a
native packet core). The engine is chosen once per process, before any of Skein's network modules
is imported, by the ``SKEIN_QUIC_ENGINE`` environment variable (``aioquic`` or ``qh3``);
``skein serve --quic-engine qh3`` sets it. Gateway and clients may run different engines: they
speak the same QUIC.

Where the two engines differ, the difference is a function here (:func:`peer_address`,
:func:`unacked_bytes`, :func:`connection_unacked_bytes`, :func:`reset_stream`, :func:`closing`,
:func:`send_stream_data`, :func:`h3_buffered_bytes`, :func:`h3_discard_stream`, the HTTP/3
datagram functions) or a fix to qh3
that makes it behave as aioquic does (:class:`QuicConnectionProtocol`'s ``close()``, the
anti-amplification flight, clean closes logged as warnings, :class:`H3Connection`'s SETTINGS), so no other module reads an engine's
private state.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

__all__ = [
    "ENGINE",
    "ENGINES",
    "ENGINE_ERRORS",
    "H3_ALPN",
    "ConnectionTerminated",
    "DataReceived",
    "DatagramReceived",
    "H3Connection",
    "H3Event",
    "HandshakeCompleted",
    "HeadersReceived",
    "NetworkAddress",
    "ProtocolNegotiated",
    "QuicConfiguration",
    "QuicConnection",
    "QuicConnectionProtocol",
    "QuicEvent",
    "QuicServer",
    "SessionTicket",
    "StopSendingReceived",
    "StreamDataReceived",
    "StreamReset",
    "WebTransportStreamDataReceived",
    "acknowledge_every_second_packet",
    "close_reason",
    "closing",
    "connection_unacked_bytes",
    "datagram_session_id",
    "early_data_lost_to_retry",
    "engine_version",
    "h3_buffered_bytes",
    "h3_discard_stream",
    "peer_address",
    "peer_max_datagram_bytes",
    "pending_datagram_bytes",
    "quic_connect",
    "reset_stream",
    "send_h3_datagram",
    "send_stream_data",
    "serve",
    "unacked_bytes",
]

ENGINES = ("aioquic", "qh3")
ENGINE = os.environ.get("SKEIN_QUIC_ENGINE", "aioquic") or "aioquic"
if ENGINE not in ENGINES:
    raise ImportError(
        f"SKEIN_QUIC_ENGINE={ENGINE!r} is not a QUIC engine Skein knows: use one of "
        + ", ".join(ENGINES)
    )

if TYPE_CHECKING or ENGINE == "aioquic":
    from aioquic.asyncio.client import connect as quic_connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.asyncio.server import QuicServer, serve
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.connection import ProtocolError as _H3ProtocolError
    from aioquic.h3.events import (
        DatagramReceived,
        DataReceived,
        H3Event,
        HeadersReceived,
        WebTransportStreamDataReceived,
    )
    from aioquic.h3.exceptions import H3Error as _H3Error
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import NetworkAddress, QuicConnection
    from aioquic.quic.connection import QuicConnectionError as _QuicConnectionError
    from aioquic.quic.events import (
        ConnectionTerminated,
        HandshakeCompleted,
        ProtocolNegotiated,
        QuicEvent,
        StopSendingReceived,
        StreamDataReceived,
        StreamReset,
    )
    from aioquic.tls import SessionTicket
else:  # pragma: no cover - exercised with SKEIN_QUIC_ENGINE=qh3
    from qh3.asyncio.client import connect as quic_connect
    from qh3.asyncio.protocol import QuicConnectionProtocol as _Qh3Protocol
    from qh3.asyncio.server import QuicServer, serve
    from qh3.h3.connection import H3_ALPN, Setting
    from qh3.h3.connection import H3Connection as _Qh3H3Connection
    from qh3.h3.connection import ProtocolError as _H3ProtocolError
    from qh3.h3.events import (
        DatagramReceived,
        DataReceived,
        H3Event,
        HeadersReceived,
        WebTransportStreamDataReceived,
    )
    from qh3.h3.exceptions import H3Error as _H3Error
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import NetworkAddress, QuicConnection
    from qh3.quic.connection import QuicConnectionError as _QuicConnectionError
    from qh3.quic.events import (
        ConnectionTerminated,
        HandshakeCompleted,
        ProtocolNegotiated,
        QuicEvent,
        StopSendingReceived,
        StreamDataReceived,
        StreamReset,
    )
    from qh3.tls import SessionTicket

# What an engine's API calls raise on a connection that is closed or in the wrong state: qh3
# raises QuicConnectionError ("connection is closed") from send_headers, create_webtransport_stream
# and send_ping once the peer has closed; the H3 layers raise their ProtocolError / H3Error
# subclasses on a stream in the wrong state; aioquic's protocol fails ping() and
# wait_connected() with the builtin ConnectionError. The SDK turns every one of them into its own
# error types at its public boundary, so an application never sees an engine's class.
ENGINE_ERRORS: tuple[type[Exception], ...] = (
    _QuicConnectionError,
    _H3ProtocolError,
    _H3Error,
    ConnectionError,
)


if not TYPE_CHECKING and ENGINE == "qh3":  # pragma: no cover - exercised with SKEIN_QUIC_ENGINE=qh3
    # What qh3 2.1 does differently from aioquic, made to behave as aioquic does.

    _AMPLIFICATION_LIMITED = "packet builder capacity exhausted"
    _MISSING_KEY = "packet protection failed: missing"  # "... OneRtt packet key", say
    _log = logging.getLogger("skein.engine")

    class H3Connection(_Qh3H3Connection):
        """qh3's HTTP/3 connection, with aioquic's SETTINGS: qh3 2.1 leaves out
        SETTINGS_ENABLE_CONNECT_PROTOCOL (0x8), which RFC 9220 (and RFC 8441 before it) requires
        of a server before a client may send an extended CONNECT, so strict WebTransport clients
        refused a qh3 gateway. aioquic sends it on both sides; so does this."""

        def _get_local_settings(self) -> dict[int, int]:
            settings: dict[int, int] = super()._get_local_settings()
            settings[Setting.ENABLE_CONNECT_PROTOCOL] = 1
            return settings

    class QuicConnectionProtocol(_Qh3Protocol):
        """qh3's protocol, with aioquic's ``close(error_code, reason_phrase)`` (qh3's takes no
        arguments and always closes with NO_ERROR) and with :func:`_datagrams_to_send`."""

        def __init__(self, quic: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(quic, *args, **kwargs)
            # The server's connections are made inside qh3's QuicServer, so the fix goes on
            # the instance rather than on a subclass of QuicConnection.
            quic.datagrams_to_send = functools.partial(_datagrams_to_send, quic)

        def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
            self._quic.close(error_code=error_code, reason_phrase=reason_phrase)
            self.transmit()

    def _datagrams_to_send(quic: Any, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """qh3's ``datagrams_to_send``, except that running out of anti-amplification budget
        ends the flight instead of raising.

        Before a client's address is validated a server may send 3x what it received. qh3
        counts only the bytes of QUIC packets, not a datagram's padding after them (RFC 9000
        8.1 says all of it counts), so an aioquic client's 1,200-byte first datagram (a 518-byte
        Initial plus zeros) buys 1,554 bytes, and the gateway's first flight does not fit. The
        native core then raises mid-flight, and qh3 drops the datagrams it had already built:
        the client saw nothing until its retransmission timer, and each handshake took about
        0.7 s instead of 10 ms on loopback (and logged a traceback). Here what was built is
        sent, and the rest follows as the client's next datagrams (its ACKs, then its probe when
        its timer fires) raise the budget: still about 3 RTT slower than an aioquic gateway for
        aioquic clients (measured on a 50 ms path: 275 ms to a Welcome vs 120 ms); qh3's own
        clients pad inside their packets and are not affected.

        Likewise a flight that reaches a packet space whose keys the connection does not have
        yet ends there instead of raising. A client resuming with a ticket queues its first
        request as 0-RTT early data; if the server is slow to answer (a gateway just restarted
        after a crash) the client's probe timeout fires, and qh3's core then raised "packet
        protection failed: missing OneRtt packet key" out of every transmit, from timers and
        datagram callbacks alike, until the handshake gave it 1-RTT keys: asyncio logged a
        traceback each time. aioquic holds such data until the keys exist; so does this, and the
        data goes with a later transmit (tests/test_engine.py).
        """
        core = quic._core
        datagrams: list[tuple[bytes, NetworkAddress]] = []
        while core is not None:
            try:
                transmit = quic._call_core(core.poll_transmit, now)
            except _QuicConnectionError as exc:
                reason = str(exc.reason_phrase)
                if reason.startswith(_MISSING_KEY):
                    # Nothing can be sent in that packet space yet (no keys for it): what was
                    # built goes, the rest waits for the keys, as aioquic waits.
                    _log.debug("qh3 send postponed: %s", reason)
                elif reason != _AMPLIFICATION_LIMITED:
                    raise
                break
            if transmit is None:
                break
            quic._log_datagram("datagrams_sent", transmit[0])  # qlog, as qh3 does
            quic._log_packets("packet_sent", transmit[0])
            datagrams.append((transmit[0], transmit[1]))
        return datagrams

    class _CleanCloseFilter(logging.Filter):
        """qh3 logs every CONNECTION_CLOSE it receives at warning, even a clean one: one line
        per departing client. Drop those with NO_ERROR or H3_NO_ERROR; keep real errors."""

        def filter(self, record: logging.LogRecord) -> bool:
            native = record.args[0] if isinstance(record.args, tuple) and record.args else None
            return not (
                record.msg == "Native peer close: %r"
                and isinstance(native, tuple)
                and len(native) > 2
                and native[2] in (0, 0x100)
            )

    logging.getLogger("quic").addFilter(_CleanCloseFilter())


def engine_version() -> str:
    """``"aioquic 1.2.0"``: the engine and its version, for logs and benchmark results."""
    from importlib.metadata import version

    return f"{ENGINE} {version(ENGINE)}"


def peer_address(quic: Any) -> NetworkAddress | None:
    """The address the connection currently sends to (it changes when the peer migrates), or
    None before the connection has a peer."""
    if ENGINE == "aioquic":
        address: NetworkAddress | None = quic.get_peer_address()  # aioquic >= 1.2
        return address
    # qh3: the native core's active path is (path id, local, remote, sent, received, mtu); it
    # switches to a new address once that path is validated, as aioquic's paths[0] does.
    core = quic._core
    if core is None:
        return quic._remote_addr
    return core.active_path[2]


def closing(quic: Any) -> bool:
    """True once the connection is closing, draining or closed (by either side or by a timeout):
    nothing written from now on reaches the peer. qh3 raises on a write then, aioquic drops it."""
    return quic._close_event is not None  # both engines set it when the close begins


def acknowledge_every_second_packet(quic: Any, max_ack_delay_s: float = 0.025) -> None:
    """Make a client connection acknowledge as RFC 9000 13.2.2 recommends: at once after every
    second ack-eliciting packet, otherwise within ``max_ack_delay_s`` (at most the 25 ms both
    engines advertise as max_ack_delay). Call it on a new connection, before it is used.

    aioquic acknowledges every ack-eliciting packet within its 1 ms timer granularity, so a
    subscriber sent one packet per message sends one ACK back per message, and the gateway
    spends as much on those ACKs as on the messages. qh3's native core acknowledges every
    packet too (measured: 20 ACKs for 20 packets 7 ms apart) and takes no setting for it from
    Python; for it this does nothing."""
    if ENGINE != "aioquic":
        return
    from aioquic import tls

    quic._ack_delay = max_ack_delay_s
    receive = quic.receive_datagram

    def receive_datagram(data: bytes, addr: NetworkAddress, now: float) -> None:
        space = quic._spaces.get(tls.Epoch.ONE_RTT)
        if space is None:
            receive(data, addr, now)
            return
        waiting, largest = space.ack_at is not None, space.largest_received_packet
        receive(data, addr, now)
        # An ACK was already owed when a newer packet arrived: this is (at least) the second
        # ack-eliciting packet since the last ACK, so acknowledge with the next transmit.
        if waiting and space.ack_at is not None and space.largest_received_packet > largest:
            space.ack_at = now

    quic.receive_datagram = receive_datagram


def early_data_lost_to_retry(quic: Any) -> bool:
    """True when a client connection's 0-RTT early data never reached the server although the
    handshake may report it accepted: the server answered the first Initial with a QUIC Retry,
    and aioquic, starting over with the Retry token, re-sends the handshake but not the stream
    data it had already sent as 0-RTT (its recovery state is reset), so the server never sees
    it. qh3 re-sends it. Check it once the handshake completes; when True, the caller must
    treat the early data as rejected and start again without it."""
    return ENGINE == "aioquic" and bool(quic._retry_count)


def close_reason(quic: Any) -> str:
    """Why the connection is closing ("" while it is open): the closing side's reason phrase, or
    its error code if it gave none. Known as soon as the close begins, while the engine's
    ConnectionTerminated event waits for the draining period to end (aioquic: 3 PTOs)."""
    event = quic._close_event
    if event is None:
        return ""
    return str(event.reason_phrase) or f"QUIC error 0x{int(event.error_code):x}"


def send_stream_data(quic: Any, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
    """Queue ``data`` on a stream (the caller transmits). Returns False, queueing nothing, when
    the bytes can never arrive: the connection is closing, we finished the stream, or the peer
    stopped it (STOP_SENDING); the caller treats the stream as over. The engines disagree on
    those cases (aioquic raises RuntimeError on a finished stream and drops writes on a closing
    connection; qh3 raises ValueError and QuicConnectionError), so callers never see either."""
    if closing(quic):
        return False
    try:
        quic.send_stream_data(stream_id, data, end_stream)
    except (ValueError, RuntimeError):  # finished or reset: "cannot write after FIN/RESET"
        return False
    return True


def unacked_bytes(quic: Any, stream_id: int, *, in_flight: bool = True) -> int:
    """Bytes written to a stream and not yet acknowledged by the peer (queued or in flight): the
    connection's backlog, which send budgets are measured against.

    Exact on aioquic (the stream sender's buffer holds exactly the unacknowledged range). qh3's
    native core does not expose per-stream acknowledgement, so there it is an estimate: the
    stream's never-sent bytes plus the whole connection's bytes in flight. The estimate counts
    packet overhead and other streams' in-flight data (a gateway connection's H3 control and
    QPACK streams: a few hundred bytes), and misses stream bytes declared lost and not yet
    retransmitted (at most a congestion window; qh3 re-sends them on the next transmit the
    congestion window allows). With ``in_flight=False`` qh3 counts only the stream's never-sent
    bytes: a lower bound, but one that is 0 once the peer has everything.
    """
    if ENGINE == "aioquic":
        stream = quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)
    core = quic._core
    if core is None or not in_flight:
        return int(quic.get_send_buffer_size(stream_id))
    return int(quic.get_send_buffer_size(stream_id)) + int(core.bytes_in_flight)


def connection_unacked_bytes(quic: Any, stream_ids: set[int]) -> int:
    """Bytes written to the connection's streams and not yet acknowledged by the peer (queued or
    in flight): the whole connection's backlog, which one per-connection budget is measured
    against. ``stream_ids`` names the streams the caller writes to; on aioquic those are summed
    (exactly, as :func:`unacked_bytes`) and the ones the engine has discarded (every byte and
    the end acknowledged) are removed from the set. qh3 counts every stream itself: its
    never-sent bytes of all streams plus the connection's bytes in flight (an estimate, as in
    :func:`unacked_bytes`); there the set is left alone."""
    if ENGINE == "aioquic":
        total = 0
        gone: list[int] = []
        streams = quic._streams
        for stream_id in stream_ids:
            stream = streams.get(stream_id)
            if stream is None:
                gone.append(stream_id)
                continue
            sender = stream.sender
            if sender._reset_error_code is None:  # a reset stream sends nothing more
                total += sender._buffer_stop - sender._buffer_start
        if gone:
            stream_ids.difference_update(gone)
        return int(total)
    if closing(quic):
        return 0
    core = quic._core
    if core is None:
        return int(quic.get_send_buffer_size())
    return int(quic.get_send_buffer_size()) + int(core.bytes_in_flight)


def reset_stream(quic: Any, stream_id: int, error_code: int) -> None:
    """Reset our sending side of a stream (RESET_STREAM) and drop whatever it still buffers, so a
    peer that does not read stops costing memory at once. Does nothing on a closing connection or
    a stream the engine has already let go.

    qh3 drops a reset stream's buffer itself. aioquic keeps the sender's buffer until the peer
    has acknowledged the reset and ended its own side (never, for a peer that reads nothing), and
    counts it as unacknowledged; here it is emptied: after a reset aioquic neither sends nor
    re-sends stream data, only the RESET_STREAM frame, whose final size it keeps apart."""
    if closing(quic):
        return
    try:
        quic.reset_stream(stream_id, error_code)
    except (ValueError, RuntimeError, _QuicConnectionError):  # discarded, or not ours to reset
        return
    if ENGINE == "aioquic":
        stream = quic._streams.get(stream_id)
        if stream is not None and stream.sender._reset_error_code is not None:
            sender = stream.sender
            sender._buffer = bytearray()
            sender._buffer_start = sender._buffer_stop
            sender._pending = type(sender._pending)()
            sender._acked = type(sender._acked)()


def h3_buffered_bytes(h3: Any, stream_id: int) -> int:
    """Bytes the HTTP/3 layer holds for a stream, waiting for the rest of a frame (a HEADERS or
    SETTINGS frame is parsed only once whole). The same attribute in both engines."""
    stream = h3._stream.get(stream_id)
    return 0 if stream is None else len(stream.buffer)


def h3_discard_stream(h3: Any, stream_id: int) -> None:
    """Make the HTTP/3 layer forget a request stream the gateway has refused (reset and stopped):
    its partial frame goes, and nothing of it is ever reported. The caller must not hand the
    layer more events of that stream. A stream whose headers wait for the QPACK encoder stream is
    kept (the decoder names it), with its buffer emptied."""
    stream = h3._stream.get(stream_id)
    if stream is None:
        return
    if stream.blocked:
        stream.buffer = type(stream.buffer)()
        return
    del h3._stream[stream_id]
    blocked = getattr(h3, "_blocked_stream_map", None)  # qh3 only
    if blocked is not None:
        blocked.pop(stream_id, None)


# ---- HTTP/3 datagrams (RFC 9297): aioquic names a session by its stream id, qh3 by stream id / 4


def send_h3_datagram(h3: Any, session_id: int, payload: bytes) -> None:
    """Queue an HTTP/3 datagram for the session opened by request stream ``session_id`` (the
    caller transmits). The caller has checked :func:`peer_max_datagram_bytes`."""
    if ENGINE == "aioquic":
        h3.send_datagram(session_id, payload)
    else:
        h3.send_datagram(session_id // 4, payload)


def datagram_session_id(event: Any) -> int:
    """The request stream id of the session an HTTP/3 ``DatagramReceived`` belongs to."""
    if ENGINE == "aioquic":
        return int(event.stream_id)
    return int(event.flow_id) * 4


def peer_max_datagram_bytes(quic: Any) -> int:
    """The largest HTTP/3 datagram payload the peer takes (its ``max_datagram_frame_size``
    transport parameter, less the largest quarter-stream-id prefix, 8 bytes), capped by what
    fits in one packet of the smallest size QUIC allows (1200 bytes, less 60 for headers); 0 if
    the peer did not enable QUIC datagrams. The same attribute in both engines."""
    size = quic._remote_max_datagram_frame_size
    return 0 if not size else max(0, min(int(size), 1140) - 8)


def pending_datagram_bytes(quic: Any) -> int | None:
    """Bytes of DATAGRAM frames queued and not yet sent (waiting for congestion window), or None
    where the engine does not say (qh3's native core keeps its queue to itself)."""
    if ENGINE == "aioquic":
        return sum(map(len, quic._datagrams_pending))
    return None
