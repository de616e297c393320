"""The asyncio SDK client: a QUIC/HTTP/3 WebTransport session to the gateway.

::

    async with connect("https://127.0.0.1:4433/v1/chat", name="alice", ca_file="certs/ca.pem") as c:
        await c.join("lobby")
        ack = await c.publish("lobby", b"hello")
        async for event in c.messages():
            print(event.message.sender, event.message.body)

The session survives network changes: :meth:`Client.migrate` moves the connection to a new local
address (QUIC connection migration), and if the connection dies the client reconnects with jittered
backoff, re-joins every room from its cursor and re-sends unacknowledged publishes (with the same
client message ids, so nothing is sequenced twice). All protocol logic is in
:class:`~gateway.sdk.session.ClientSession`; this module only moves bytes and keeps timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.engine import (
    ENGINE_ERRORS,
    H3_ALPN,
    ConnectionTerminated,
    DatagramReceived,
    H3Connection,
    HandshakeCompleted,
    HeadersReceived,
    QuicConfiguration,
    QuicConnection,
    QuicConnectionProtocol,
    QuicEvent,
    SessionTicket,
    StreamDataReceived,
    acknowledge_every_second_packet,
    close_reason,
    closing,
    datagram_session_id,
    early_data_lost_to_retry,
    send_stream_data,
)
from gateway.errors import ConnectionLost, ErrorCode, GatewayError, LocalProtocolError, ServerError
from gateway.sdk.liveness import BackoffConfig, LivenessConfig, Verdict
from gateway.sdk.publish import Outstanding, PendingPublish
from gateway.sdk.session import (
    Answer,
    ChatterLostEvent,
    ClientSession,
    MessageEvent,
    MissedEvent,
    RoomResetEvent,
    SessionEvent,
    ShardMapEvent,
    SkippedEvent,
)
from gateway.wire import frames as f

__all__ = ["Client", "ClientConfig", "ClientStats", "connect"]

log = logging.getLogger("skein.sdk")
# After the gateway stops our side of the stream, how long to wait for its Error and FIN.
_STOPPED_GRACE_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """How the client connects. Units are in the names.

    ``ca_file`` verifies the gateway against a CA bundle (the dev CA is ``certs/ca.pem``);
    ``verify=False`` skips verification (development only). ``dual_stack`` uses one IPv6 socket
    that also talks IPv4 (IPv4-mapped addresses), as phones often do.

    ``token`` is the access token (JWT) sent at Hello. ``token_provider``, when given, is called
    for a token before every Hello instead (the first and each reconnect's), so a long session
    outlives its tokens: when the gateway closes the session because its token expired
    (UNAUTHENTICATED), the client reconnects with a fresh one and resumes, instead of giving up.
    It must return quickly (hand out a token fetched ahead of time).

    A gateway that dies says nothing, so the client watches for answers (every packet from the
    gateway counts): it sends a QUIC PING when nothing has come for ``keepalive_s``, and drops
    the connection and reconnects when what it sent (a request or a PING) has had no answer for
    ``dead_after_s``. A dead gateway is noticed within ``keepalive_s + dead_after_s`` of its last
    packet (5 s by default), and within ``dead_after_s`` of a request sent to it; the QUIC idle
    timeout (``idle_timeout_s``) is only the backstop. The policy is
    :class:`~gateway.sdk.liveness.Liveness`.
    """

    name: str = ""
    token: str = ""
    token_provider: Callable[[], str] | None = None
    ca_file: Path | str | None = None
    verify: bool = True
    capabilities: tuple[str, ...] = ("lz4", "datagrams")
    dual_stack: bool = False
    local_host: str | None = None
    idle_timeout_s: float = 30.0
    keepalive_s: float = 2.0  # probe (QUIC PING) after this long without a packet from the gateway
    dead_after_s: float = 3.0  # what was sent went unanswered this long: the connection is dead
    request_timeout_s: float = 15.0
    housekeeping_s: float = 0.05
    reconnect: bool = True
    reconnect_give_up_s: float = 120.0
    migration_grace_s: float = 1.0  # the old socket keeps receiving this long after migrate()
    resume_tls: bool = True  # reconnect with the TLS session ticket (an abbreviated handshake)
    zero_rtt: bool = True  # and send the CONNECT and Hello as 0-RTT early data
    max_queued_messages: int = 100_000
    stream_window_bytes: int = 8 * 1024 * 1024


@dataclass(slots=True)
class ClientStats:
    """Counters an application (or loadgen) can read at any time."""

    migrations: int = 0
    reconnects: int = 0
    dead_links: int = 0  # connections dropped because the gateway stopped answering
    skipped: int = 0
    chatter_lost: int = 0  # live chatter lost on the way as datagrams, passed over
    missed: int = 0
    shard_maps: int = 0
    room_resets: int = 0  # rooms the gateway lost and made anew (history unknown)
    errors: int = 0  # Error frames from the gateway, answered requests or not
    last_error: ServerError | None = None


_Pending = Outstanding


@dataclass(slots=True)
class _Link:
    """One QUIC connection carrying the session."""

    protocol: _LinkProtocol
    transport: asyncio.DatagramTransport
    family: int
    connect_stream: int = -1
    frame_stream: int = -1
    status: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Resolves with "was 0-RTT early data accepted" when the TLS handshake completes.
    handshake: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    send_stopped: bool = False  # the gateway stopped our side of the frame stream


class _EarlyDataRejected(Exception):
    """The gateway refused 0-RTT: what rode in it never arrived."""


@contextlib.contextmanager
def _engine_calls(doing: str, link: _Link | None = None) -> Iterator[None]:
    """The SDK's one boundary with the QUIC engine: what an engine raises when its connection is
    closed or broken (:data:`~gateway.engine.ENGINE_ERRORS`: qh3's QuicConnectionError, the H3
    layers' errors, aioquic's builtin ConnectionError) leaves as :class:`ConnectionLost`, saying
    ``doing`` and, when ``link`` knows it, why the connection closed."""
    try:
        yield
    except ENGINE_ERRORS as exc:
        if isinstance(exc, GatewayError):  # ours already (ConnectionLost is a ConnectionError)
            raise
        why = (close_reason(link.protocol._quic) if link is not None else "") or str(exc)
        raise ConnectionLost(f"{doing}: the connection is closed ({why})") from exc


class _LinkProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, client: Client) -> None:
        super().__init__(quic)
        self.client = client
        self.h3 = H3Connection(quic, enable_webtransport=True)
        self.link: _Link | None = None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if self.link is not None:  # any packet from the gateway answers what was sent
            self.client._heard(self.link)

    def quic_event_received(self, event: QuicEvent) -> None:
        link = self.link
        if isinstance(event, HandshakeCompleted) and link is not None and not link.handshake.done():
            link.handshake.set_result(event.early_data_accepted)
        if isinstance(event, ConnectionTerminated):
            if link is not None:
                lost = ConnectionLost(f"connection closed: {close_reason(link.protocol._quic)}")
                for waiter in (link.status, link.handshake):
                    if not waiter.done():
                        waiter.set_exception(lost)
                        waiter.exception()  # marked retrieved; whoever awaits it re-raises
                self.client._link_lost(link, event.reason_phrase)
            return
        if (
            isinstance(event, StreamDataReceived)
            and link is not None
            and event.stream_id == link.frame_stream
        ):
            # Our own bidirectional WebTransport stream: aioquic's client-side H3 does not mark
            # streams it opened as WebTransport, so it would parse the gateway's bytes as HTTP/3
            # frames. The stream carries only Skein frames; take them before H3 sees them.
            self.client._on_data(link, event.data, event.end_stream)
            return
        for h3_event in self.h3.handle_event(event):
            if link is None:
                continue
            if isinstance(h3_event, HeadersReceived) and h3_event.stream_id == link.connect_stream:
                if not link.status.done():
                    status = dict(h3_event.headers).get(b":status", b"0")
                    link.status.set_result(int(status))
                elif h3_event.stream_ended:
                    self.client._link_lost(link, "the gateway ended the session")
            elif (
                isinstance(h3_event, DatagramReceived)
                and datagram_session_id(h3_event) == link.connect_stream
            ):
                self.client._on_datagram(link, h3_event.data)


class Client:
    """A connected session. Create it with :func:`connect`."""

    def __init__(self, url: str, config: ClientConfig) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise LocalProtocolError(f"expected https://host:port/path, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 443
        self.path = parts.path or "/v1/chat"
        self.config = config
        # A stable name for the whole client, so retries after a reconnect dedupe by
        # (name, client_msg_id) on the gateway (with JWT auth the token's subject names it).
        name = config.name or f"anon-{random.getrandbits(48):012x}"
        self.session = ClientSession(
            name=name,
            token=config.token,
            capabilities=config.capabilities,
            liveness=LivenessConfig(
                probe_after_s=config.keepalive_s, dead_after_s=config.dead_after_s
            ),
            backoff=BackoffConfig(give_up_s=config.reconnect_give_up_s),
        )
        self.stats = ClientStats()
        self._loop = asyncio.get_running_loop()
        self._link: _Link | None = None
        self._pending: dict[int, _Pending] = {}
        self._welcome: asyncio.Future[f.Welcome] | None = None
        self._messages: asyncio.Queue[MessageEvent | None] = asyncio.Queue()
        self._ticket: SessionTicket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed_by_app = False  # close() was called before the session ended by itself
        self._reconnecting: asyncio.Task[None] | None = None
        self._overflowed = False
        self._ready = False  # the session is up and its rooms re-joined: requests may go
        self._terminal: GatewayError | None = None  # set when the session can never resume

    # ---- public API -----------------------------------------------------------------------------

    async def join(self, room: str) -> f.Joined:
        """Join ``room``. Returns the Joined answer. Raises ServerError if refused."""
        request_id, data = self.session.join(room, resume=False)
        result: f.Joined = await self._request(request_id, data, _Pending(self._future(), room))
        return result

    async def publish(
        self,
        room: str,
        body: bytes,
        *,
        priority: f.Priority = f.Priority.NORMAL,
        client_msg_id: str | None = None,
        timeout_s: float | None = None,
    ) -> f.Ack:
        """Publish and wait up to ``timeout_s`` (default ``request_timeout_s``) for the gateway's
        ack (its shard and seq). The whole contract is in :mod:`gateway.sdk.publish`.

        Returns the Ack: the message is sequenced (stored, if reliable) exactly once. Raises
        :class:`~gateway.sdk.publish.PublishTimeout` (a TimeoutError) if no ack came in time: the
        publish is **still pending** and the client keeps sending it, across reconnects, until it
        is acked; ``exc.pending.wait()`` waits for it and ``exc.pending.cancel()`` withdraws it.
        Do not publish it again under a new id: that would store it twice. Raises ServerError if
        the gateway refused it (not stored); ConnectionLost if the session ended first (if it
        had been sent it may be stored: publish it again in a new session with the same
        ``client_msg_id``); LocalProtocolError, with nothing sent, for a body over the gateway's
        ``max_body_bytes`` or a room not joined.
        """
        pending = self.start_publish(room, body, priority=priority, client_msg_id=client_msg_id)
        timeout = self.config.request_timeout_s if timeout_s is None else timeout_s
        return await pending.wait(timeout)

    def start_publish(
        self,
        room: str,
        body: bytes,
        *,
        priority: f.Priority = f.Priority.NORMAL,
        client_msg_id: str | None = None,
    ) -> PendingPublish:
        """Publish without waiting: returns the pending publish's handle (``wait()``,
        ``cancel()``), pending until acked, refused, withdrawn or the session ends.

        ``client_msg_id`` (default: a fresh unique id) names it for the gateway's dedupe: reuse
        one only to retry the same message. Raises LocalProtocolError (body too large, room not
        joined) and, once the session is over, the reason (ConnectionLost or ServerError)."""
        welcome = self.session.welcome
        if welcome is not None and len(body) > welcome.max_body_bytes:
            raise LocalProtocolError(
                f"body of {len(body)} bytes exceeds the gateway's max_body_bytes "
                f"({welcome.max_body_bytes})"
            )
        if self._terminal is not None:
            raise self._terminal
        if self._closing:
            raise ConnectionLost("the client is closed")
        request_id, msg_id, data = self.session.publish(
            room, body, priority=priority, client_msg_id=client_msg_id
        )
        outstanding = Outstanding(self._future(), room, (body, priority, msg_id))
        self._pending[request_id] = outstanding
        outstanding.sent = self._send(data)
        return PendingPublish(outstanding, room, msg_id)

    async def leave(self, room: str) -> None:
        request_id, data = self.session.leave(room)
        await self._request(request_id, data, _Pending(self._future(), room))

    async def messages(self) -> AsyncIterator[MessageEvent]:
        """Every message of every joined room, in causal order per room.

        Ends when the application calls :meth:`close`. Raises the reason when the session ends
        for good by itself: :class:`ServerError` (the gateway closed it with a fatal ``Error``)
        or :class:`ConnectionLost` (the connection died and ``reconnect`` is off or gave up), and
        :class:`LocalProtocolError` when the application fell behind by ``max_queued_messages``.
        """
        while True:
            event = await self._messages.get()
            if event is None:
                self._messages.put_nowait(None)  # every later or concurrent reader ends too
                if self._overflowed:
                    raise LocalProtocolError(
                        "the application fell behind by more than max_queued_messages; "
                        "consume messages() faster or raise the limit"
                    )
                if self._terminal is not None and not self._closed_by_app:
                    raise self._terminal
                return
            yield event

    async def migrate(self, local_addr: str | None = None) -> None:
        """Move the connection to a new local socket (new port; new address if given).

        The address family stays the one the connection talks with. The gateway validates the new
        path and the session carries on; this returns once a PING has crossed the new path.
        """
        link = self._require_link()
        sock = self._socket(link.family, local_addr or self._local_host(link))
        old = link.transport
        transport, _ = await self._loop.create_datagram_endpoint(lambda: link.protocol, sock=sock)
        link.transport = transport
        # Keep listening on the old socket for a moment: what the gateway sent before it saw the
        # new path still arrives there (the old network often lingers; a NAT rebinding always
        # does), instead of waiting for loss recovery.
        self._loop.call_later(self.config.migration_grace_s, old.close)
        if closing(link.protocol._quic):  # it died meanwhile: the reconnect takes over
            raise ConnectionLost("the connection closed during migrate(); reconnecting")
        with _engine_calls("migrate()", link):
            link.protocol.change_connection_id()
            await asyncio.wait_for(link.protocol.ping(), self.config.request_timeout_s)
        self.stats.migrations += 1

    async def reconnect(self) -> None:
        """Drop the connection and open a new one, resuming every room from its cursor.

        What a handoff costs without migration (and what the SDK does by itself when a
        connection dies). Returns once the new session is up; unacked publishes are re-sent.
        """
        link = self._require_link()
        self._link = None
        self._ready = False
        self._tasks.append(self._loop.create_task(self._dispose(link)))  # drains in the background
        try:
            await self._open()
        except BaseException:
            # Don't leave the client without a connection: keep trying as after a lost link.
            if self.config.reconnect and not self._closing and self._terminal is None:
                self._start_reconnecting()
            raise
        self.stats.reconnects += 1

    @property
    def local_address(self) -> tuple[str, int]:
        link = self._require_link()
        name = link.transport.get_extra_info("sockname")
        return (name[0], name[1])

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def close(self) -> None:
        """Close the session and the connection. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        self._closed_by_app = self._terminal is None
        for task in [*self._tasks, self._reconnecting]:
            if task is not None:
                task.cancel()
        link, self._link = self._link, None
        if link is not None:
            link.protocol.close(error_code=0x100, reason_phrase="client closing")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(link.protocol.wait_closed(), 1.0)
            link.transport.close()
        self._fail_pending(ConnectionLost("client closed"))
        self._messages.put_nowait(None)

    # ---- connection -----------------------------------------------------------------------------

    async def _open(self) -> None:
        """Open a link, WebTransport session and Hello; re-join rooms and re-send publishes.

        With a TLS session ticket from an earlier connection the handshake is resumed, and with
        ``zero_rtt`` the CONNECT request and the Hello ride in 0-RTT: both are safe to replay.
        Joins and publishes wait for the handshake (a replayed 0-RTT publish is exactly what
        0-RTT must not carry).
        """
        early = self._early_data_possible()
        link = await self._dial()
        try:
            if early:
                self._begin_session(link)  # rides in 0-RTT
                accepted = await self._await_handshake(link)
                if not accepted or early_data_lost_to_retry(link.protocol._quic):
                    raise _EarlyDataRejected
            else:
                await self._await_handshake(link)
                self._begin_session(link)
            await self._await_welcome(link)
        except _EarlyDataRejected:
            # The gateway no longer knows the ticket (restarted, or the ticket was used), or it
            # answered with a QUIC Retry that the engine lost the early data to: the early
            # CONNECT and Hello never arrived. Start over with a full handshake.
            await self._abandon(link)
            self._ticket = None
            await self._open()
            return
        except BaseException:
            await self._abandon(link)
            raise
        self._resume()

    async def _abandon(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        await self._dispose(link)

    async def _await_handshake(self, link: _Link) -> bool:
        """Wait for the TLS handshake; returns whether 0-RTT early data was accepted. Raises
        ConnectionLost if the connection closes first or no handshake completes in time."""
        timeout = self.config.request_timeout_s
        try:
            return await asyncio.wait_for(asyncio.shield(link.handshake), timeout)
        except TimeoutError as exc:
            raise ConnectionLost(
                f"no QUIC handshake with {self.host}:{self.port} within {timeout:g} s: is the "
                "gateway running there, and does UDP reach it?"
            ) from exc

    def _begin_session(self, link: _Link) -> None:
        """Send the WebTransport CONNECT, open the session's stream and say Hello, all at once
        (WebTransport lets a client use the session before the 200: it saves a round trip).

        Raises ConnectionLost if the connection has closed meanwhile: a gateway that refuses a
        connection closes it right after the handshake, and on a busy machine that close can
        arrive before this runs."""
        if closing(link.protocol._quic):
            why = close_reason(link.protocol._quic)
            raise ConnectionLost(f"the connection closed before the session began: {why}")
        with _engine_calls("starting the session", link):
            link.connect_stream = link.protocol._quic.get_next_available_stream_id()
            link.protocol.h3.send_headers(
                link.connect_stream,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"webtransport"),
                    (b":scheme", b"https"),
                    (b":authority", f"{self.host}:{self.port}".encode()),
                    (b":path", self.path.encode()),
                ],
            )
            link.frame_stream = link.protocol.h3.create_webtransport_stream(link.connect_stream)
        self.session.reset_stream()
        self._welcome = self._future()
        self._link = link
        self._ready = False  # requests wait until _resume() has re-joined the rooms
        if self.config.token_provider is not None:
            self.session.token = self.config.token_provider()
        self._send_on(link, self.session.hello())

    async def _await_welcome(self, link: _Link) -> None:
        assert self._welcome is not None
        # A Welcome proves the session was accepted; the 200 itself can arrive later (after 0-RTT
        # the response headers may wait in QPACK for the gateway's encoder stream).
        await asyncio.wait(
            (link.status, self._welcome),
            timeout=self.config.request_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if link.status.done() and link.status.result() != 200:
            raise ServerError(
                f"the gateway refused the WebTransport session at {self.path}: "
                f"HTTP {link.status.result()}",
                code=ErrorCode.UNSPECIFIED,
            )
        try:
            await asyncio.wait_for(self._welcome, self.config.request_timeout_s)
        except TimeoutError as exc:
            raise ConnectionLost(
                f"the gateway at {self.host}:{self.port} answered the QUIC handshake but sent no "
                f"Welcome within {self.config.request_timeout_s:g} s"
            ) from exc

    async def _dial(self) -> _Link:
        cfg = self.config
        quic_cfg = QuicConfiguration(
            is_client=True,
            alpn_protocols=H3_ALPN,
            server_name=self.host,
            max_datagram_frame_size=65536,
            idle_timeout=cfg.idle_timeout_s,
            max_stream_data=cfg.stream_window_bytes,
            max_data=cfg.stream_window_bytes * 2,
        )
        if not cfg.verify:
            quic_cfg.verify_mode = ssl.CERT_NONE
        elif cfg.ca_file is not None:
            quic_cfg.load_verify_locations(str(cfg.ca_file))
        # A ticket is used once (RFC 8446 C.4): the gateway consumed it, and the new connection
        # brings a fresh one shortly after its handshake.
        quic_cfg.session_ticket, self._ticket = (self._ticket if cfg.resume_tls else None), None
        infos = await self._loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        addr: tuple[Any, ...] = infos[0][4]
        family = infos[0][0]
        if cfg.dual_stack and family == socket.AF_INET:
            family, addr = socket.AF_INET6, ("::ffff:" + addr[0], addr[1], 0, 0)
        local = cfg.local_host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        sock = self._socket(family, local)
        quic = QuicConnection(configuration=quic_cfg, session_ticket_handler=self._store_ticket)
        acknowledge_every_second_packet(quic)  # half the ACKs the gateway must process
        transport, protocol = await self._loop.create_datagram_endpoint(
            lambda: _LinkProtocol(quic, self), sock=sock
        )
        link = _Link(protocol, transport, family)
        protocol.link = link
        protocol.connect(addr)
        return link

    def _early_data_possible(self) -> bool:
        ticket = self._ticket
        return (
            self.config.zero_rtt
            and self.config.resume_tls
            and ticket is not None
            and bool(ticket.max_early_data_size)
        )

    def _socket(self, family: int, host: str) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                if "." in host and not host.startswith("::ffff:"):
                    host = "::ffff:" + host
                sock.bind((host, 0, 0, 0))
            else:
                sock.bind((host, 0))
        except OSError:
            sock.close()
            raise
        return sock

    def _local_host(self, link: _Link) -> str:
        host: str = link.transport.get_extra_info("sockname")[0]
        return host

    def _store_ticket(self, ticket: SessionTicket) -> None:
        self._ticket = ticket

    def _resume(self) -> None:
        """After (re)connecting: re-join rooms from their cursors, re-send unacked publishes."""
        self._ready = True
        self.session.liveness.start(self._loop.time())
        old, self._pending = self._pending, {}
        joins = {p.room: p for p in old.values() if p.publish is None and p.room}
        for room in self.session.rooms():
            request_id, data = self.session.join(room, resume=True)
            self._pending[request_id] = joins.pop(room, _Pending(self._future(), room))
            self._send(data)
        for pending in old.values():
            if pending.publish is not None and not pending.future.done():
                body, priority, msg_id = pending.publish
                request_id, _, data = self.session.publish(
                    pending.room, body, priority=priority, client_msg_id=msg_id
                )
                self._pending[request_id] = pending
                pending.sent = self._send(data) or pending.sent
        for pending in joins.values():  # leaves of rooms the session already forgot
            if not pending.future.done():
                pending.future.set_result(None)

    def _link_lost(self, link: _Link, reason: str) -> None:
        if link is not self._link:
            return
        self._link = None
        self._ready = False
        self._tasks.append(self._loop.create_task(self._dispose(link)))
        log.info("connection lost: %s", reason)
        if self._closing:
            return
        if not self.config.reconnect or self._terminal is not None:
            self._terminal = self._terminal or ConnectionLost(f"connection lost: {reason}")
            self._fail_pending(self._terminal)
            self._messages.put_nowait(None)
            return
        self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._loop.create_task(self._reconnect())

    @staticmethod
    async def _dispose(link: _Link) -> None:
        """Close a link's QUIC connection (if it still lives), then its socket."""
        with contextlib.suppress(*ENGINE_ERRORS):
            link.protocol.close(error_code=0x100, reason_phrase="session over")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(link.protocol.wait_closed(), 1.0)
        link.transport.close()

    async def _reconnect(self) -> None:
        backoff = self.session.reconnect_backoff(self._loop.time())
        while not self._closing:
            await asyncio.sleep(backoff.next_delay_s(random.random()))
            try:
                await self._open()
                self.stats.reconnects += 1
                return
            except (TimeoutError, OSError, GatewayError, ConnectionError) as exc:
                log.info("reconnect failed: %r", exc)
            if backoff.gave_up(self._loop.time()):
                self._terminal = ConnectionLost(
                    f"gave up reconnecting after {self.config.reconnect_give_up_s:.0f} s"
                )
                self._fail_pending(self._terminal)
                self._messages.put_nowait(None)
                return

    # ---- I/O helpers ----------------------------------------------------------------------------

    def _require_link(self) -> _Link:
        if self._link is None:
            raise ConnectionLost("not connected (reconnecting)")
        return self._link

    def _future(self) -> asyncio.Future[Any]:
        return self._loop.create_future()

    def _send(self, data: bytes) -> bool:
        """Send a request on the session, once it is re-established (re-joined); until then the
        request waits in ``_pending`` and ``_resume()`` sends it. Returns whether it was sent."""
        link = self._link
        if link is not None and self._ready and data:
            return self._send_on(link, data)
        return False

    def _send_on(self, link: _Link, data: bytes) -> bool:
        """Hand ``data`` to the link's frame stream; returns False if the stream takes no more."""
        quic = link.protocol._quic
        if not send_stream_data(quic, link.frame_stream, data):
            if closing(quic):
                self._link_lost(link, "the connection is closing")
            elif not link.send_stopped:
                # The gateway stopped our side of the stream: it is ending the session, and its
                # Error (saying why) and the stream's end may still be on their way. Read them;
                # give up on the link only if they don't come.
                link.send_stopped = True
                self._loop.call_later(
                    _STOPPED_GRACE_S, self._link_lost, link, "the session stream is finished"
                )
            return False
        link.protocol.transmit()
        self.session.liveness.sent(self._loop.time())
        return True

    async def _request(self, request_id: int, data: bytes, pending: _Pending) -> Any:
        if self._terminal is not None:
            raise self._terminal  # the session ended for good; no reconnect follows
        if self._closing:
            raise ConnectionLost("the client is closed")
        self._pending[request_id] = pending
        self._send(data)
        return await asyncio.wait_for(asyncio.shield(pending.future), self.config.request_timeout_s)

    def _fail_pending(self, exc: GatewayError) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
                pending.future.exception()  # mark retrieved: the caller may have timed out
        self._pending.clear()

    def _on_data(self, link: _Link, data: bytes, ended: bool) -> None:
        if self._take(link, self.session.receive_data, data, "frame") and ended:
            self._link_lost(link, "the gateway ended the session stream")

    def _on_datagram(self, link: _Link, payload: bytes) -> None:
        self._take(link, self.session.receive_datagram, payload, "datagram")

    def _take(
        self,
        link: _Link,
        receive: Callable[[bytes, float], list[SessionEvent]],
        data: bytes,
        what: str,
    ) -> bool:
        """Feed the current link's bytes from the gateway to the session and act on its events.
        False if the link is not the current one, or the bytes are garbage (the connection is
        then closed)."""
        if link is not self._link:
            return False
        try:
            events = receive(data, self._loop.time())
        except GatewayError as exc:
            log.warning("gateway sent an undecodable %s: %s", what, exc)
            link.protocol.close(error_code=0x101, reason_phrase=f"bad {what} from gateway")
            return False
        for event in events:
            self._dispatch(event)
        return True

    def _dispatch(self, event: SessionEvent) -> None:
        if isinstance(event, MessageEvent):
            if self._messages.qsize() >= self.config.max_queued_messages:
                self._overflowed = True
                self._messages.put_nowait(None)
                return
            self._messages.put_nowait(event)
        elif isinstance(event, Answer):
            self._answer(event)
        elif isinstance(event, SkippedEvent):
            self.stats.skipped += event.count
        elif isinstance(event, ChatterLostEvent):
            self.stats.chatter_lost += event.count
        elif isinstance(event, MissedEvent):
            self.stats.missed += event.count
        elif isinstance(event, ShardMapEvent):
            self.stats.shard_maps += 1
        elif isinstance(event, RoomResetEvent):
            self.stats.room_resets += 1
            log.warning("room %s was reset by the gateway; its earlier history is gone", event.room)

    def _answer(self, event: Answer) -> None:
        frame = event.frame
        if isinstance(frame, f.Welcome):
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(frame)
            return
        if isinstance(frame, f.Error):
            self.stats.errors += 1
            self.stats.last_error = ServerError(
                frame.message, code=frame.code, request_id=frame.request_id, fatal=frame.fatal
            )
        if isinstance(frame, f.Error) and frame.fatal:
            log.warning("gateway closed the session: %s (%s)", frame.message, frame.code.name)
            renewable = (
                frame.code == ErrorCode.UNAUTHENTICATED and self.config.token_provider is not None
            )
            if frame.code < ErrorCode.INTERNAL and not renewable:
                # We broke the protocol or are not allowed in: reconnecting would only repeat it.
                # (An expired token is renewed by the provider at the next Hello.)
                self._terminal = ServerError(frame.message, code=frame.code, fatal=True)
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_exception(  # refused at Hello: connect() fails with why
                    ServerError(frame.message, code=frame.code, fatal=True)
                )
        pending = self._pending.pop(event.request_id, None)
        if pending is None or pending.future.done():
            return
        if isinstance(frame, f.Error):
            pending.future.set_exception(
                ServerError(
                    frame.message, code=frame.code, request_id=frame.request_id, fatal=frame.fatal
                )
            )
            pending.future.exception()  # marked retrieved: a timed-out caller may never look
        else:
            pending.future.set_result(frame)

    async def _housekeeping(self) -> None:
        """Fetch what the reconcilers miss, and watch the connection (the session's liveness
        policy: probe it when quiet, drop it when nothing answers), until closed."""
        while not self._closing:
            await asyncio.sleep(self.config.housekeeping_s)
            now = self._loop.time()
            self._send(self.session.fetches(now))
            link = self._link
            if link is None or not self._ready or closing(link.protocol._quic):
                continue
            verdict = self.session.liveness.poll(now)
            if verdict is Verdict.PROBE:
                with contextlib.suppress(*ENGINE_ERRORS):  # a close in between: _link_lost runs
                    link.protocol._quic.send_ping(0)
                    link.protocol.transmit()
                    self.session.liveness.sent(now)
            elif verdict is Verdict.DEAD:
                waited = now - (self.session.liveness.waiting_since or now)
                self.stats.dead_links += 1
                self._link_lost(link, f"no answer from the gateway for {waited:.1f} s")

    def _heard(self, link: _Link) -> None:
        if link is self._link:
            self.session.liveness.heard(self._loop.time())


@contextlib.asynccontextmanager
async def connect(url: str, **options: Any) -> AsyncIterator[Client]:
    """Open a session to the gateway at ``url``; ``options`` are :class:`ClientConfig` fields.

    Raises :class:`ServerError` (with the gateway's code) if the gateway refuses the session with
    an ``Error`` frame, :class:`ConnectionLost` (also a builtin ConnectionError) if it can't be
    reached, closes the connection (as it does over its connection caps) or never answers the
    Hello, and OSError if the local socket can't be made (a bad ``local_host``). No QUIC engine's
    own exception leaves the SDK: every method raises the SDK's error types (requests also raise
    TimeoutError when no answer comes within ``request_timeout_s``).
    """
    client = Client(url, ClientConfig(**options))
    try:
        await client._open()
    except BaseException:
        await client.close()
        raise
    client._tasks.append(asyncio.get_running_loop().create_task(client._housekeeping()))
    try:
        yield client
    finally:
        await client.close()
