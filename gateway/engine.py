"""The QUIC engine seam: every QUIC and HTTP/3 name Skein uses comes from here.

Two engines share one API: aioquic (the default, pure Python) and qh3 (an aioquic fork with a
native packet core). The engine is chosen once per process, before any of Skein's network modules
is imported, by the ``SKEIN_QUIC_ENGINE`` environment variable (``aioquic`` or ``qh3``);
``skein serve --quic-engine qh3`` sets it. Gateway and clients may run different engines: they
speak the same QUIC.

Where the two engines differ, the difference is a function here (:func:`peer_address`,
:func:`unacked_bytes`), so no other module reads an engine's private state.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__all__ = [
    "ENGINE",
    "ENGINES",
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
    "StreamDataReceived",
    "StreamReset",
    "WebTransportStreamDataReceived",
    "engine_version",
    "peer_address",
    "quic_connect",
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
    from aioquic.h3.events import (
        DatagramReceived,
        DataReceived,
        H3Event,
        HeadersReceived,
        WebTransportStreamDataReceived,
    )
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import NetworkAddress, QuicConnection
    from aioquic.quic.events import (
        ConnectionTerminated,
        HandshakeCompleted,
        ProtocolNegotiated,
        QuicEvent,
        StreamDataReceived,
        StreamReset,
    )
    from aioquic.tls import SessionTicket
else:  # pragma: no cover - exercised with SKEIN_QUIC_ENGINE=qh3
    from qh3.asyncio.client import connect as quic_connect
    from qh3.asyncio.protocol import QuicConnectionProtocol as _Qh3Protocol
    from qh3.asyncio.server import QuicServer, serve
    from qh3.h3.connection import H3_ALPN, H3Connection
    from qh3.h3.events import (
        DatagramReceived,
        DataReceived,
        H3Event,
        HeadersReceived,
        WebTransportStreamDataReceived,
    )
    from qh3.quic.configuration import QuicConfiguration
    from qh3.quic.connection import NetworkAddress, QuicConnection
    from qh3.quic.events import (
        ConnectionTerminated,
        HandshakeCompleted,
        ProtocolNegotiated,
        QuicEvent,
        StreamDataReceived,
        StreamReset,
    )
    from qh3.tls import SessionTicket


if not TYPE_CHECKING and ENGINE == "qh3":  # pragma: no cover - exercised with SKEIN_QUIC_ENGINE=qh3

    class QuicConnectionProtocol(_Qh3Protocol):
        """qh3's protocol with aioquic's ``close(error_code, reason_phrase)``: qh3's own
        ``close()`` takes no arguments and always closes with NO_ERROR."""

        def close(self, error_code: int = 0, reason_phrase: str = "") -> None:
            self._quic.close(error_code=error_code, reason_phrase=reason_phrase)
            self.transmit()


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
        return quic._remote_addr  # type: ignore[no-any-return]
    return core.active_path[2]  # type: ignore[no-any-return]


def unacked_bytes(quic: Any, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged by the peer (queued or in flight): the
    connection's backlog, which send budgets are measured against.

    Exact on aioquic (the stream sender's buffer holds exactly the unacknowledged range). qh3's
    native core does not expose per-stream acknowledgement, so there it is an estimate: the
    stream's never-sent bytes plus the whole connection's bytes in flight. The estimate counts
    packet overhead and other streams' in-flight data (a gateway connection's H3 control and
    QPACK streams: a few hundred bytes), and misses stream bytes declared lost and not yet
    retransmitted (at most a congestion window; qh3 re-sends them on the next transmit the
    congestion window allows).
    """
    if ENGINE == "aioquic":
        stream = quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)
    core = quic._core
    if core is None:
        return int(quic.get_send_buffer_size(stream_id))
    return int(quic.get_send_buffer_size(stream_id)) + int(core.bytes_in_flight)
