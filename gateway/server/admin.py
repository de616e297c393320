"""The admin port: a small HTTP/1.1 server on TCP for what load balancers, Prometheus and browsers
load over plain HTTP (health checks, metrics, the chat page). Routes are a table of exact paths.

Bounded: request heads over 8 KiB are refused, one request per connection (``Connection: close``),
a request head must arrive whole within ``read_timeout_s`` of the connection and a reply must be
taken within ``write_timeout_s``.

It stays answerable under a slowloris (clients that open connections and send their request a
byte at a time, or never read the reply). At most ``max_connections`` connections are held. A new
connection at the cap is not refused while a held one is idle (its request head has not all
arrived, or its reply has been stuck for over a second): it takes the place of the oldest idle
connection of the address that holds the most. So a client can hold many connections only while
nobody else wants one, one address's slow clients push out only each other once anyone else
connects, and a probe of ``/healthz`` or ``/readyz``, which sends its request at once and reads a
few bytes, always gets in and is not pushed out once its request has arrived. Only when no held
connection is idle is a new one refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import SupportsIndex

__all__ = ["PROBE_PATHS", "AdminServer", "Reply", "Route"]

log = logging.getLogger("skein.admin")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[str], Awaitable[Reply] | Reply]  # gets the query string, returns a reply

PROBE_PATHS = frozenset({"/healthz", "/readyz"})
"""Health and readiness: once its head is read, a request for one of these is never pushed out."""

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    503: "Service Unavailable",
    500: "Internal Server Error",
}
_MAX_HEAD_BYTES = 8192
_STUCK_WRITE_S = 1.0  # a reply not taken for this long may be pushed out by a new connection
_LOG_EVERY_S = 60.0  # at most one warning a minute about pushed-out connections

# What a held connection is doing, in order.
_HEAD, _ANSWER, _WRITE = "head", "answer", "write"


class _HeadReader(asyncio.StreamReader):
    """A StreamReader that notes the moment a whole request head has arrived, before the
    connection's task gets round to reading it: from then on the connection is not pushed out."""

    def __init__(self) -> None:
        super().__init__(limit=_MAX_HEAD_BYTES)
        self.head_in = False
        self.started = False  # some of the head has arrived
        self._tail = b""

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.started = True
        if not self.head_in:
            seen = self._tail + bytes(data)
            self.head_in = b"\r\n\r\n" in seen
            self._tail = seen[-3:]
        super().feed_data(data)


@dataclass(eq=False, slots=True)
class _Held:
    """One accepted connection, from accept until its socket is closed."""

    address: str
    reader: _HeadReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    phase: str = _HEAD
    since: float = 0.0  # loop time the phase began
    probe: bool = False
    evicted: bool = False

    def idle(self, now: float) -> bool:
        """May be pushed out: its head hasn't arrived, or (not a probe) its reply is stuck."""
        if self.phase == _HEAD:
            return not self.reader.head_in
        return self.phase == _WRITE and not self.probe and now - self.since > _STUCK_WRITE_S


class AdminServer:
    """``routes`` maps exact paths to handlers; add to it before or after :meth:`start`.

    ``evicted`` and ``refused`` count connections pushed out for a newer one and refused
    outright (see the module docstring).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 64,
        read_timeout_s: float = 5.0,
        write_timeout_s: float = 10.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.host, self.port = host, port
        self.routes: dict[str, Route] = {}
        self.address: tuple[str, int] = (host, port)
        self.max_connections = max_connections
        self.evicted = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._held: dict[_Held, None] = {}  # oldest first
        self._per_address: dict[str, int] = {}
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._pressure_logged_at: float | None = None

    async def start(self) -> None:
        def connection() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(_HeadReader(), self._serve)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(connection, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for held in list(self._held):
                self._evict(held)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    @property
    def connections(self) -> int:
        """Connections held now."""
        return len(self._held)

    def held_by(self, address: str) -> int:
        """Connections held now from ``address``."""
        return self._per_address.get(address, 0)

    # ---- admission -------------------------------------------------------------------------------

    def _admit(self, held: _Held, now: float) -> bool:
        """Hold ``held``; at the cap, push out an idle connection of the address that holds the
        most, counting ``held`` (the oldest of them). False when none is idle: refused."""
        if len(self._held) >= self.max_connections:

            def weight(h: _Held) -> tuple[int, bool]:
                # The address holding most (the newcomer counts for its own), then a client that
                # has started dribbling its head before one that has sent nothing yet (it may be
                # a probe that was just accepted).
                return self.held_by(h.address) + (h.address == held.address), h.reader.started

            victim: _Held | None = None
            for candidate in self._held:  # oldest first, so ties go to the oldest
                if candidate.idle(now) and (victim is None or weight(candidate) > weight(victim)):
                    victim = candidate
            if victim is None:
                self.refused += 1
                return False
            self._push_out(victim, now)
        self._held[held] = None
        self._per_address[held.address] = self.held_by(held.address) + 1
        return True

    def _push_out(self, victim: _Held, now: float) -> None:
        self.evicted += 1
        if self._pressure_logged_at is None or now - self._pressure_logged_at > _LOG_EVERY_S:
            self._pressure_logged_at = now
            log.warning(
                "admin port at its cap of %d connections: pushing out slow clients (%s holds %d); "
                "%d so far",
                self.max_connections,
                victim.address,
                self.held_by(victim.address),
                self.evicted,
                extra={"event": "admin_pressure", "evicted": self.evicted},
            )
        self._evict(victim)

    def _evict(self, held: _Held) -> None:
        held.evicted = True
        self._forget(held)
        held.writer.transport.abort()
        if held.task is not None:
            held.task.cancel()

    def _forget(self, held: _Held) -> None:
        if held in self._held:
            del self._held[held]
            left = self._per_address[held.address] - 1
            if left:
                self._per_address[held.address] = left
            else:
                del self._per_address[held.address]

    # ---- one connection --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        assert isinstance(reader, _HeadReader)
        held = _Held(address, reader, writer, asyncio.current_task(), since=loop.time())
        if not self._admit(held, loop.time()):
            writer.transport.abort()  # every held connection is busy: refuse rather than queue
            return
        try:
            await self._exchange(held, reader, writer, loop)
        except asyncio.CancelledError:
            if not held.evicted:
                raise
        finally:
            self._forget(held)
            if not held.evicted:
                writer.close()

    async def _exchange(
        self,
        held: _Held,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        head_only = False
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._read_timeout_s)
        except TimeoutError:
            reply = Reply(408, "text/plain", b"request head too slow\n")
        except asyncio.LimitOverrunError:
            reply = Reply(400, "text/plain", b"request head too large\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away
        else:
            held.phase, held.since = _ANSWER, loop.time()
            reply, head_only = await self._answer(held, head)
        held.phase, held.since = _WRITE, loop.time()
        status_line = f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"
        lines = [
            status_line,
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(reply.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            *(f"{k}: {v}" for k, v in reply.headers),
        ]
        body = b"" if head_only else reply.body  # HEAD: the headers GET would send
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await asyncio.wait_for(writer.drain(), self._write_timeout_s)

    async def _answer(self, held: _Held, head: bytes) -> tuple[Reply, bool]:
        """The reply to one request head, and whether it was a HEAD (send no body)."""
        if len(head) > _MAX_HEAD_BYTES:
            return Reply(400, "text/plain", b"request head too large\n"), False
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        except ValueError:
            return Reply(400, "text/plain", b"bad request\n"), False
        path, _, query = target.partition("?")
        held.probe = path in PROBE_PATHS
        try:
            reply = await asyncio.wait_for(self._route(method, path, query), self._write_timeout_s)
        except TimeoutError:
            log.warning("admin route %s took over %.0f s", path, self._write_timeout_s)
            reply = Reply(503, "text/plain", b"timed out\n")
        return reply, method == "HEAD"

    async def _route(self, method: str, path: str, query: str) -> Reply:
        route = self.routes.get(path)
        if route is None:
            return Reply(404, "text/plain", f"nothing at {path}\n".encode())
        if method not in ("GET", "HEAD"):
            return Reply(405, "text/plain", b"GET only\n")
        try:
            result = route(query)
            return await result if isinstance(result, Awaitable) else result
        except Exception:
            log.exception("admin route %s failed", path)
            return Reply(500, "text/plain", b"internal error\n")
