"""The admin port: a small HTTP/1.1 server on TCP for what load balancers, Prometheus and browsers
load over plain HTTP (health checks, metrics, the chat page). Routes are a table of exact paths.

Bounded: request heads over 8 KiB are refused, one request per connection (``Connection: close``),
at most ``max_connections`` at once, and a slow client gets ``read_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["AdminServer", "Reply", "Route"]

log = logging.getLogger("skein.admin")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[str], Awaitable[Reply] | Reply]  # gets the query string, returns a reply

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
    500: "Internal Server Error",
}
_MAX_HEAD_BYTES = 8192


class AdminServer:
    """``routes`` maps exact paths to handlers; add to it before or after :meth:`start`."""

    def __init__(
        self, host: str, port: int, *, max_connections: int = 64, read_timeout_s: float = 5.0
    ) -> None:
        self.host, self.port = host, port
        self.routes: dict[str, Route] = {}
        self.address: tuple[str, int] = (host, port)
        self._server: asyncio.Server | None = None
        self._slots = asyncio.Semaphore(max_connections)
        self._read_timeout_s = read_timeout_s

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._slots.locked():
            writer.close()  # over max_connections: refuse rather than queue
            return
        async with self._slots:
            try:
                reply, head_only = await asyncio.wait_for(
                    self._answer(reader), self._read_timeout_s
                )
            except (
                TimeoutError,
                asyncio.LimitOverrunError,
                asyncio.IncompleteReadError,
                ConnectionError,
                ValueError,
            ):
                reply, head_only = Reply(400, "text/plain", b"bad request\n"), False
            head = [
                f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}",
                f"Content-Type: {reply.content_type}",
                f"Content-Length: {len(reply.body)}",
                "Connection: close",
                "Cache-Control: no-store",
                *(f"{k}: {v}" for k, v in reply.headers),
            ]
            with contextlib.suppress(ConnectionError):
                body = b"" if head_only else reply.body  # HEAD: the headers GET would send
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
                await writer.drain()
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[Reply, bool]:
        """The reply to one request, and whether it was a HEAD (send no body)."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD_BYTES:
            return Reply(400, "text/plain", b"request head too large\n"), False
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        reply = await self._route(method, target)
        return reply, method == "HEAD"

    async def _route(self, method: str, target: str) -> Reply:
        path, _, query = target.partition("?")
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
