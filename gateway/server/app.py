"""The gateway process: binds QUIC, owns the hub, moves bytes between them and keeps one timer.

This is the only layer (with the SDK's client) that touches sockets, asyncio and aioquic's asyncio
module. It maps each WebTransport session to a hub connection id; the QUIC connection, not the
network address, holds the session, so a client that changes address keeps it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

from gateway.core.auth import Authenticator
from gateway.core.hub import Hub
from gateway.core.limits import HandshakeGuard
from gateway.core.outputs import (
    Close,
    LoadRoom,
    Output,
    Persist,
    RoomChanged,
    RoomReclaimed,
    Send,
    SendDatagram,
    StoreRead,
)
from gateway.engine import (
    H3_ALPN,
    NetworkAddress,
    QuicConfiguration,
    SessionTicket,
    engine_version,
    peer_address,
)
from gateway.server.admin import AdminServer, Reply
from gateway.server.certs import check_certificate_pair
from gateway.server.config import ServerConfig
from gateway.server.listener import Listener, listen
from gateway.server.metrics import install as install_metrics
from gateway.server.protocol import GatewayProtocol
from gateway.server.storage import Durability
from gateway.server.udp import (
    BufferSizes,
    kernel_drops,
    kernel_receive_queue,
    log_buffer_sizes,
)
from gateway.server.webapp import install as install_webapp

__all__ = ["GatewayServer", "run"]

log = logging.getLogger("skein.server")
_CONNECTION_REFUSED = 0x2  # RFC 9000 transport error CONNECTION_REFUSED


@dataclass(slots=True)
class _Route:
    protocol: GatewayProtocol
    stream_id: int


class _TicketStore:
    """TLS session tickets for resumption and 0-RTT, bounded (oldest evicted)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self._capacity = capacity

    def add(self, ticket: SessionTicket) -> None:
        self._tickets[ticket.ticket] = ticket
        if len(self._tickets) > self._capacity:
            self._tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        # Single use: a ticket replayed for a second 0-RTT attempt finds nothing (RFC 8446 8.1).
        return self._tickets.pop(label, None)


def _classify(before: NetworkAddress, after: NetworkAddress) -> str:
    """``nat_rebinding`` when only the port changed, ``address_change`` otherwise."""
    return "nat_rebinding" if before[0] == after[0] else "address_change"


class GatewayServer:
    """A running gateway. ``await start()``, then ``await close()`` (or use :func:`run`)."""

    def __init__(self, config: ServerConfig, *, hub: Hub | None = None) -> None:
        self.config = config
        self.authenticator = (
            None if config.auth.insecure else Authenticator.from_config(config.auth)
        )
        self.hub = hub or Hub(config.core, durable=True, authenticator=self.authenticator)
        self.durability = Durability(config.store)
        self.migrations: collections.Counter[str] = collections.Counter()
        # Connection-level counters: "handshakes", "connections_closed", "sessions_refused".
        self.counters: collections.Counter[str] = collections.Counter()
        self.address: tuple[str, int] = (config.host, config.port)
        self._routes: dict[int, _Route] = {}
        self._reads: set[asyncio.Task[None]] = set()
        self._connections = config.core.limits.connection_counter()
        self._admitted: dict[GatewayProtocol, str] = {}
        self._budget = config.core.send_budget_bytes
        self._next_conn_id = 1
        self._protocols: set[GatewayProtocol] = set()
        self._tickets = _TicketStore()
        self._server: Listener | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.admin: AdminServer | None = None
        self.ready = False
        if config.admin_port >= 0:
            self.admin = AdminServer(config.admin_host, config.admin_port)
            self.admin.routes["/healthz"] = lambda _: Reply(200, "text/plain", b"ok\n")
            self.admin.routes["/readyz"] = self._readyz
        self.metrics = install_metrics(self)  # GET /metrics on the admin port

    # ---- lifecycle ------------------------------------------------------------------------------

    def quic_configuration(self) -> QuicConfiguration:
        cfg = self.config
        quic = QuicConfiguration(
            alpn_protocols=H3_ALPN,
            is_client=False,
            max_datagram_frame_size=cfg.max_datagram_frame_bytes,
            idle_timeout=cfg.idle_timeout_s,
            max_data=cfg.stream_window_bytes * 4,
            max_stream_data=cfg.stream_window_bytes,
        )
        # Loaded and matched first: a key that is not the certificate's would otherwise start,
        # report ready and fail every handshake. Raises FileNotFoundError / ValueError saying how
        # to fix it.
        check_certificate_pair(cfg.certificate_file, cfg.private_key_file)
        quic.load_cert_chain(cfg.certificate_file, cfg.private_key_file)
        return quic

    async def start(self) -> None:
        """Bind the UDP socket and start serving. ``self.address`` is the bound address."""
        self._loop = asyncio.get_running_loop()
        configuration = self.quic_configuration()  # certificates checked before anything opens
        self.hub.wall_offset_s = time.time() - self._loop.time()  # token expiry is wall clock
        if self.authenticator is None:
            log.warning(
                "INSECURE DEVELOPMENT MODE: no tokens are checked; anyone may join and publish "
                "anywhere under any name. Never expose this gateway.",
                extra={"event": "insecure_dev"},
            )
        restored = await self.durability.open(self.hub, self.now())
        if restored:
            log.info(
                "restored %d rooms from the store",
                restored,
                extra={"event": "rooms_restored", "count": restored},
            )
        self._server = await listen(
            self.config.host,
            self.config.port,
            guard=self.config.core.limits.handshake_guard(),
            configuration=configuration,
            create_protocol=partial(GatewayProtocol, gateway=self),
            session_ticket_fetcher=self._tickets.pop,
            session_ticket_handler=self._tickets.add,
            buffer_bytes=self.config.udp_buffer_bytes,
        )
        log_buffer_sizes(self._server.buffers)
        if self.admin is not None:
            try:
                # The certificate the QUIC server has just loaded: the page pins its hash.
                install_webapp(
                    self.admin,
                    cert_file=self.config.certificate_file,
                    quic_port=lambda: self.address[1],
                    quic_host=lambda: self.address[0],
                    chat_path=self.config.chat_path,
                )
            except OSError as exc:  # e.g. an install without schemas/: serve everything else
                log.warning("the chat page is not served: %s", exc)
            await self.admin.start()
        self.ready = True
        transport = self._server._transport
        assert transport is not None
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])
        log.info(
            "serving",
            extra={
                "event": "serving",
                "address": f"{self.address[0]}:{self.address[1]}",
                "engine": engine_version(),
            },
        )

    def _readyz(self, _query: str) -> Reply:
        if self.ready:
            return Reply(200, "text/plain", b"ready\n")
        return Reply(503, "text/plain", b"not ready\n")

    async def close(self) -> None:
        """Close every connection and the socket."""
        self.ready = False
        if self.admin is not None:
            await self.admin.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for protocol in list(self._protocols):
            protocol.close(error_code=0x100, reason_phrase="gateway shutting down")
        await asyncio.sleep(0)
        if self._server is not None:
            transport = self._server._transport
            self._server.close()
            self._server = None
            # asyncio closes the socket one loop turn later; return only once the port is free,
            # so a restart on the same port works.
            for _ in range(100):
                if transport is None or transport.get_extra_info("socket").fileno() == -1:
                    break
                await asyncio.sleep(0)
        for task in list(self._reads):
            task.cancel()
        await self.durability.close()  # commits whatever was submitted

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # ---- called by protocols --------------------------------------------------------------------

    def session_opened(self, protocol: GatewayProtocol, stream_id: int) -> int:
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        self._protocols.add(protocol)
        self._routes[conn_id] = _Route(protocol, stream_id)
        self.hub.connect(conn_id, self.now(), connection=protocol.connection_key)
        log.debug(
            "session opened",
            extra={"event": "session_opened", "conn": conn_id, "cid": protocol.cid},
        )
        return conn_id

    def session_data(self, conn_id: int, data: bytes) -> None:
        self.hub.receive_data(conn_id, data, self.now())
        self._pump()

    def session_ended(self, conn_id: int, *, mid_stream: bool) -> None:
        """The client ended its frame stream (``mid_stream``: it may have stopped inside a frame,
        which earns an Error while the route still exists) or the whole session."""
        if conn_id not in self._routes:
            return
        if mid_stream:
            self.hub.stream_ended(conn_id, self.now())
        else:
            self.hub.disconnect(conn_id, self.now())
        self._pump()
        self._routes.pop(conn_id, None)

    def connection_closed(self, protocol: GatewayProtocol) -> None:
        self.hub.connection_closed(protocol.connection_key)
        self._protocols.discard(protocol)
        self.counters["connections_closed"] += 1
        host = self._admitted.pop(protocol, None)
        if host is not None:
            self._connections.close(host)

    def handshake_completed(self, protocol: GatewayProtocol) -> None:
        """Admit a connection within ``max_connections`` (in total and per source address), or
        close it with CONNECTION_REFUSED. The address is the one it connected from: a migrated
        connection stays counted there."""
        self.counters["handshakes"] += 1
        peer = peer_address(protocol._quic)
        host = str(peer[0]) if peer else ""
        if not self._connections.try_open(host):
            self.counters["connections_refused"] += 1
            log.warning(
                "connection refused: too many connections",
                extra={"event": "connection_refused", "cid": protocol.cid, "from": host},
            )
            protocol.close(
                error_code=_CONNECTION_REFUSED,
                reason_phrase="too many connections (in total or from this address)",
            )
            return
        self._admitted[protocol] = host
        self._protocols.add(protocol)

    @property
    def datagram_counts(self) -> tuple[int, int | None, int | None]:
        """UDP datagrams received, and datagrams sent and the system calls that sent them (None
        when sends are not batched: SKEIN_SENDMMSG=0 or no extension, one sendto each)."""
        server = self._server
        if server is None:
            return 0, None, None
        batching = server.batching
        if batching is None:
            return server.datagrams_received, None, None
        return server.datagrams_received, batching.datagrams, batching.flushes

    @property
    def admissions(self) -> collections.Counter[str]:
        """New connections' first Initials by outcome: accepted, retried, dropped."""
        return self._server.admissions if self._server is not None else collections.Counter()

    @property
    def guard(self) -> HandshakeGuard | None:
        """The listener's handshake admission and overload policy (None before start())."""
        return self._server.guard if self._server is not None else None

    @property
    def udp_buffers(self) -> BufferSizes:
        """The UDP socket buffers the kernel granted (zeros before start())."""
        return self._server.buffers if self._server is not None else BufferSizes(0, 0, 0)

    def udp_drops(self) -> int:
        """Datagrams the kernel dropped at the gateway's UDP port (its receive buffer was full)."""
        return kernel_drops({self.address[1]}) if self._server is not None else 0

    def udp_receive_queue(self) -> int:
        """Bytes waiting in the kernel for the event loop to read them from the UDP socket."""
        return kernel_receive_queue({self.address[1]}) if self._server is not None else 0

    @property
    def connection_count(self) -> int:
        """QUIC connections with a completed handshake that are still open."""
        return len(self._protocols)

    def path_changed(
        self, protocol: GatewayProtocol, before: NetworkAddress, after: NetworkAddress
    ) -> None:
        kind = _classify(before, after)
        self.migrations[kind] += 1
        log.info(
            "connection migrated",
            extra={
                "event": "migration",
                "kind": kind,
                "cid": protocol.cid,
                "from": f"{before[0]}:{before[1]}",
                "to": f"{after[0]}:{after[1]}",
            },
        )

    # ---- outputs and the timer ------------------------------------------------------------------

    def _persist(self, batch: list[Persist]) -> None:
        """One group commit for the batch; the hub hears back (and we pump) when it is durable."""
        self.durability.persist(self.hub, batch, self._pump)

    def _store_read(self, read: StoreRead) -> None:
        """Answer from the store, off the loop; the frames go to the connection when ready."""

        async def run() -> None:
            sent = 0
            try:
                data = await self.durability.serve_read(read)
                route = self._routes.get(read.conn_id)
                if route is not None:
                    route.protocol.send_frames(route.stream_id, data)
                    route.protocol.transmit()
                    sent = len(data)
            except Exception:
                log.exception(
                    "store read failed", extra={"event": "store_read_failed", "room": read.room}
                )
            finally:  # counted against the connection's budget; its next store read may go
                route = self._routes.get(read.conn_id)
                queued = route.protocol.queued_bytes(route.stream_id) if route is not None else 0
                self.hub.store_read_done(read.conn_id, sent, queued, self.now())
                if self._server is not None:  # not while closing
                    self._pump()

        assert self._loop is not None
        task = self._loop.create_task(run())
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    def _load_room(self, load: LoadRoom) -> None:
        """Take a reclaimed room up from the store, off the loop; its Joins are answered then."""

        async def run() -> None:
            await self.durability.load(self.hub, load)
            if self._server is not None:  # not while closing
                self._pump()

        assert self._loop is not None
        task = self._loop.create_task(run())
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    def _pump(self) -> None:
        # Connections to transmit on, in the order the hub's Sends name them (a dict keeps it):
        # the hub rotates each batch's subscribers, so the same ones are not always sent last.
        touched: dict[GatewayProtocol, None] = {}
        outputs = self.hub.take_outputs()
        while outputs:
            persists = self._deliver(outputs, touched)
            if persists:
                self._persist(persists)
            outputs = self.hub.take_outputs()
        for protocol in touched:
            protocol.transmit()
        self._arm_timer()

    def _deliver(
        self, outputs: list[Output], touched: dict[GatewayProtocol, None]
    ) -> list[Persist]:
        """Hand Sends to connections and Closes to sessions; return the Persists for the store."""
        routes = self._routes
        persists: list[Persist] = []
        cut: set[int] = set()  # closed over their hard cap: nothing more goes to them
        for output in outputs:
            if isinstance(output, Send | SendDatagram):
                send = (
                    GatewayProtocol.send_frames
                    if isinstance(output, Send)
                    else GatewayProtocol.send_datagram
                )
                data, budget = output.data, self._budget
                for conn_id in output.conn_ids:
                    route = routes.get(conn_id)
                    if route is not None and conn_id not in cut:
                        send(route.protocol, route.stream_id, data)
                        touched[route.protocol] = None
                        queued = route.protocol.backlog(route.stream_id)
                        if queued >= budget and self.hub.report_backlog(
                            conn_id, queued, self.now()
                        ):
                            cut.add(conn_id)
            elif isinstance(output, Close):
                route = routes.pop(output.conn_id, None)
                if route is not None:
                    log.info(
                        "session closed by gateway",
                        extra={
                            "event": "session_closed",
                            "conn": output.conn_id,
                            "code": int(output.code),
                            "reason": output.reason,
                        },
                    )
                    route.protocol.finish_session(route.stream_id)
                    touched[route.protocol] = None
            elif isinstance(output, Persist):
                persists.append(output)
            elif isinstance(output, RoomChanged):
                self.durability.room_changed(output)
            elif isinstance(output, StoreRead):
                self._store_read(output)
            elif isinstance(output, RoomReclaimed):
                self.durability.reclaimed(output)
            elif isinstance(output, LoadRoom):
                self._load_room(output)
        return persists

    def _arm_timer(self) -> None:
        at = self.hub.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            assert self._loop is not None
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.now()
        for conn_id in self.hub.watched():
            route = self._routes.get(conn_id)
            if route is not None:
                self.hub.report_backlog(conn_id, route.protocol.queued_bytes(route.stream_id), now)
        self.hub.handle_timer(now)
        self._pump()


async def run(config: ServerConfig, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then close cleanly."""
    server = GatewayServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = server.address
    print(
        f"skein: serving HTTP/3 on {host}:{port} (WebTransport at {config.chat_path}); "
        "Ctrl-C stops",
        flush=True,
    )
    if server.authenticator is None:
        print(
            "skein: WARNING: --insecure-dev: no tokens are checked, anyone may join and publish "
            "anywhere under any name; never expose this gateway",
            flush=True,
        )
    if server.admin is not None:
        admin_host, admin_port = server.admin.address
        print(f"skein: chat page at http://{admin_host}:{admin_port}/", flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
        print("skein: stopped", flush=True)
