"""The UDP listener: the engine's QuicServer, with handshake admission in front of it.

Every datagram that would start a new connection (a QUIC Initial of at least 1200 bytes for a
destination connection id no connection holds) is put to :class:`~gateway.core.limits.
HandshakeGuard` first: ACCEPT starts the handshake as usual, RETRY answers with a stateless QUIC
Retry (the client must echo its token from the address it claims, so spoofed floods never create
state), DROP ignores it (over the handshake rate; a real client retransmits). Packets of existing
connections never pass through the guard.

The engine answers with a Retry when its retry handler is set; the listener sets it per Initial.
Both engines (aioquic and qh3) keep it in ``QuicServer._retry`` and the connection table in
``QuicServer._protocols``: this module is the one place that relies on that.

Sending: both engines' QuicServer keep the socket's transport in ``QuicServer._transport`` and
hand that to every connection they create (``protocol.connection_made(self._transport)``), and
send their own Retry and Version Negotiation packets through it. The listener puts a
:class:`~gateway.server.sendmany.BatchingTransport` there, so everything the connections send in
one event-loop turn (a tick's fan-out: hundreds of connections' ``transmit()``) leaves in one
``sendmmsg`` per up to 1,024 datagrams instead of one ``sendto`` each. What a received datagram
makes them send is flushed when its callback returns (``hold``/``release``), not a turn later.
The environment variable ``SKEIN_SENDMMSG=0`` turns batching off (asyncio's transport is used as
before: for A/B measurements); it is off as well where the C extension was not built.

Load: the listener reports what it sees of its own load to the guard's
:class:`~gateway.core.overload.OverloadPolicy`, which switches ``retry = "auto"`` on: after each
read of the socket whether it was left with datagrams waiting, every ``PROBE_INTERVAL_S`` how
late that timer ran (event-loop lag) and whether datagrams were waiting, and every
``KERNEL_EVERY`` probes the kernel's receive queue and drop count for the socket.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from gateway.core.limits import Admission, HandshakeGuard
from gateway.engine import NetworkAddress, QuicConfiguration, QuicServer
from gateway.server.sendmany import BatchingTransport, batching_enabled
from gateway.server.udp import BufferSizes, kernel_counts, size_buffers

__all__ = ["ADMISSION_OUTCOMES", "Listener", "listen", "parse_initial"]

log = logging.getLogger("skein.server")

ADMISSION_OUTCOMES = ("accepted", "retried", "dropped")
# A ClientHello may span several Initial datagrams (post-quantum key shares do), all for one
# destination id before any connection exists: one decision covers them, counted once.
_DECISION_REUSE_S = 0.25
_DECISIONS_KEPT = 4096
_DRAIN_MAX = 64  # datagrams read in one callback besides the one asyncio hands over
_REPORT_EVERY = 16  # datagrams read between reports to the overload policy within a callback
PROBE_INTERVAL_S = 0.1  # the load probe's period (event-loop lag, datagrams waiting)
KERNEL_EVERY = 5  # probes between reads of the kernel's counters (/proc/net/udp)
_MAX_DATAGRAM = 65535
_MIN_INITIAL_BYTES = 1200  # RFC 9000 14.1: a client's first Initial is padded to at least this
_QUIC_V1 = 0x00000001
_QUIC_V2 = 0x6B3343CF
_INITIAL_TYPE = {_QUIC_V1: 0, _QUIC_V2: 1}  # long header packet type bits of Initial (RFC 9369)


def parse_initial(data: bytes) -> tuple[bytes, bool] | None:
    """``(destination connection id, carries a token)`` if ``data`` starts with a QUIC v1/v2
    Initial packet, else None (short headers, other long packets, other versions, truncation)."""
    if len(data) < 7 or not data[0] & 0x80:
        return None
    version = int.from_bytes(data[1:5], "big")
    if _INITIAL_TYPE.get(version) != (data[0] & 0x30) >> 4:
        return None
    dcid_end = 6 + data[5]
    if dcid_end >= len(data):
        return None
    dcid = data[6:dcid_end]
    at = dcid_end + 1 + data[dcid_end]  # past the source connection id
    if at >= len(data):
        return None
    size = 1 << (data[at] >> 6)  # the token length is a QUIC varint of 1, 2, 4 or 8 bytes
    if at + size > len(data):
        return None
    token_length = int.from_bytes(bytes([data[at] & 0x3F]) + data[at + 1 : at + size], "big")
    return dcid, token_length > 0


class Listener(QuicServer):
    """The engine's QuicServer with a :class:`HandshakeGuard` deciding on new connections."""

    def __init__(self, *, guard: HandshakeGuard, **kwargs: Any) -> None:
        super().__init__(retry=True, **kwargs)
        self.guard = guard
        self.admissions: collections.Counter[str] = collections.Counter()
        self._retry_handler = self._retry  # the engine's Retry token minter and checker
        self._decided: OrderedDict[tuple[bytes, bool], tuple[Admission, float]] = OrderedDict()
        self.buffers = BufferSizes(0, 0, 0)  # set by listen() once the socket exists
        self.batching: BatchingTransport | None = None  # None: one sendto per datagram
        self.datagrams_received = 0
        self._reader: socket.socket | None = None
        self._drain_enabled = False
        self._probe: asyncio.TimerHandle | None = None
        self._probe_due = 0.0
        self._probes = 0
        self._overloaded = False  # as last logged

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the socket's transport, wrapped in a BatchingTransport unless batching is off:
        every connection the engine creates from now on is handed ``self._transport``."""
        super().connection_made(transport)
        if batching_enabled():
            self.batching = BatchingTransport(cast(asyncio.DatagramTransport, transport))
            self._transport = self.batching
        # A second handle on the same socket (same open file, non-blocking) to read what waits
        # without a loop turn per datagram, and to see whether anything waits; closed with the
        # transport.
        fd = transport.get_extra_info("socket").fileno()
        self._reader = socket.socket(fileno=os.dup(fd))
        self._drain_enabled = os.environ.get("SKEIN_RECV_DRAIN", "1") != "0"
        self._arm_probe()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        super().connection_lost(exc)

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        self.datagrams_received += 1
        batching = self.batching
        # What these datagrams make the connections send leaves when they are handled: no
        # call_soon per received datagram, and a fan-out they trigger still goes out batched.
        if batching is not None:
            batching.hold()
        try:
            self._receive(data, addr)
            if self._drain_enabled:
                exhausted = self._drain()
                self.guard.overload.drained(self._loop.time(), exhausted=exhausted)
        finally:
            if batching is not None:
                batching.release()

    def _drain(self) -> bool:
        """Handle up to ``_DRAIN_MAX`` more datagrams already waiting on the socket in this
        callback: asyncio reads one datagram per event-loop turn, and a fan-out's ACKs arrive
        by the hundred. Bounded, so timers and other work still get their turn. True if it
        stopped at the bound (more may wait), False if it read the socket empty. Every
        ``_REPORT_EVERY`` datagrams it tells the overload policy that datagrams were waiting:
        handshakes make a callback long (65 of them take about 0.2 s on aioquic), and a flood
        must switch Retry on within the callback that shows it, not after."""
        reader = self._reader
        if reader is None:
            return False
        for read in range(_DRAIN_MAX):
            if read and read % _REPORT_EVERY == 0:
                self.guard.overload.drained(self._loop.time(), exhausted=True)
            try:
                data, addr = reader.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:  # an ICMP error: reported as asyncio would
                self.error_received(exc)
                return False
            self.datagrams_received += 1
            self._receive(data, addr)
        return True

    def _arm_probe(self) -> None:
        self._probe_due = self._loop.time() + PROBE_INTERVAL_S
        self._probe = self._loop.call_at(self._probe_due, self._run_probe)

    def _run_probe(self) -> None:
        """Report the event loop's lag, whether datagrams wait, and now and then the kernel's
        counters, to the overload policy; then run again in ``PROBE_INTERVAL_S``."""
        now = self._loop.time()
        overload = self.guard.overload
        overload.probe(now, lag_s=now - self._probe_due, waiting=self._waiting())
        self._probes += 1
        reader = self._reader
        if self._probes % KERNEL_EVERY == 0 and reader is not None:
            queued, drops = kernel_counts({reader.getsockname()[1]})
            buffer = reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # as /proc counts
            overload.kernel(now, queued_bytes=queued, buffer_bytes=buffer, drops=drops)
        self._log_overload(overload.active(now))
        self._arm_probe()

    def _log_overload(self, active: bool) -> None:
        """One line when the gateway becomes overloaded and one when it is no longer."""
        if active == self._overloaded:
            return
        self._overloaded = active
        if not active:
            log.info("load back to normal", extra={"event": "overload_over"})
            return
        reason = self.guard.overload.reason
        retrying = (
            " (new clients arriving fast are asked to Retry)" if self.guard.retry == "auto" else ""
        )
        log.warning(
            "overloaded: %s%s",
            reason,
            retrying,
            extra={"event": "overload", "reason": reason, "retry": self.guard.retry},
        )

    def _waiting(self) -> bool:
        """True if a datagram waits on the socket (peeked at, not read)."""
        if self._reader is None:
            return False
        try:
            self._reader.recv(1, socket.MSG_PEEK)
        except OSError:  # BlockingIOError: nothing waits (or an ICMP error: reported later)
            return False
        return True

    def _receive(self, data: bytes | str, addr: NetworkAddress) -> None:
        initial = parse_initial(data) if len(data) >= _MIN_INITIAL_BYTES else None  # type: ignore[arg-type]
        if initial is None or initial[0] in self._protocols:
            super().datagram_received(data, addr)
            return
        dcid, has_token = initial
        # A token is a Retry token only while Retry may be used; with Retry off, the engine
        # treats an Initial with a token as it always did (it ignores the token).
        retry_token = has_token and self.guard.retry != "off"
        decision = self._decide(dcid, retry_token)
        if decision is Admission.DROP:
            return
        # The engine sends a Retry for a token-less Initial, and checks a token, only while its
        # retry handler is set.
        use_retry = decision is Admission.RETRY or retry_token
        self._retry = self._retry_handler if use_retry else cast(Any, None)
        try:
            super().datagram_received(data, addr)
        finally:
            self._retry = self._retry_handler

    def _decide(self, dcid: bytes, retry_token: bool) -> Admission:
        """The guard's decision for a new connection's Initial, counted once per connection
        attempt: datagrams of the same attempt within ``_DECISION_REUSE_S`` reuse it."""
        now = self._loop.time()
        key = (dcid, retry_token)
        earlier = self._decided.get(key)
        if earlier is not None and now - earlier[1] < _DECISION_REUSE_S:
            return earlier[0]
        decision = self.guard.admit(now, validated=retry_token)
        self._decided[key] = (decision, now)
        self._decided.move_to_end(key)
        if len(self._decided) > _DECISIONS_KEPT:
            self._decided.popitem(last=False)
        self.admissions[_OUTCOME[decision]] += 1
        return decision


_OUTCOME = {Admission.ACCEPT: "accepted", Admission.RETRY: "retried", Admission.DROP: "dropped"}


async def listen(
    host: str,
    port: int,
    *,
    guard: HandshakeGuard,
    configuration: QuicConfiguration,
    create_protocol: Callable[..., Any],
    session_ticket_fetcher: Callable[[bytes], Any],
    session_ticket_handler: Callable[[Any], None],
    buffer_bytes: int = 0,
) -> Listener:
    """Bind ``host:port`` and serve QUIC there behind ``guard`` (as the engine's ``serve()``),
    with ``buffer_bytes`` of socket buffers asked of the kernel (what it granted is
    ``listener.buffers``)."""
    loop = asyncio.get_running_loop()
    _, listener = await loop.create_datagram_endpoint(
        lambda: Listener(
            guard=guard,
            configuration=configuration,
            create_protocol=create_protocol,
            session_ticket_fetcher=session_ticket_fetcher,
            session_ticket_handler=session_ticket_handler,
        ),
        local_addr=(host, port),
    )
    assert isinstance(listener, Listener)
    transport = listener._transport
    assert transport is not None
    listener.buffers = size_buffers(transport.get_extra_info("socket"), buffer_bytes)
    return listener
