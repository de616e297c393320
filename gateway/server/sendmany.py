"""Fewer system calls per packet: one loop turn's UDP datagrams sent with ``sendmmsg(2)``.

asyncio's datagram transport makes one ``sendto`` system call per datagram. When the gateway fans
a message out to hundreds of connections, each connection's ``transmit()`` sends its datagrams
within the same event-loop turn, one system call each (with qh3, ``sendto`` was about a quarter
of the gateway's CPU: docs/performance.md). Here:

- :func:`send_many` sends a list of ``(bytes, address)`` datagrams, each to its own address, with
  one ``sendmmsg`` per up to 1,024 of them (the C extension ``gateway.server._sendmany``, built by
  setuptools where a compiler and Linux are there), else with a plain loop of ``sendto``
  (:data:`HAVE_SENDMMSG` says which);
- :class:`BatchingTransport` wraps the listener's asyncio transport: ``sendto`` only queues, and
  the first datagram of a loop turn schedules one flush (``loop.call_soon``), which sends the
  turn's datagrams with :func:`send_many`. The listener (gateway/server/listener.py) gives it to
  every QUIC connection, so the datagrams of one tick's fan-out leave in a handful of calls.

``SKEIN_SENDMMSG=0`` in the gateway's environment turns the batching off (for A/B measurements:
the listener then hands the connections asyncio's transport, as before). It is also off when the
extension is missing, since a loop of ``sendto`` in Python would batch nothing.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "HAVE_SENDMMSG",
    "MAX_PENDING",
    "BatchingTransport",
    "Datagram",
    "batching_enabled",
    "send_many",
]

_native: ModuleType | None
try:
    from gateway.server import _sendmany as _native
except ImportError:  # not built: no compiler at install time, or not Linux
    _native = None

HAVE_SENDMMSG: bool = _native is not None

Datagram = tuple[bytes, tuple[Any, ...]]
# send_many's contract on a file descriptor (the extension's function, or a stand-in in tests).
SendMany = Callable[[int, Sequence[Datagram]], int]

# The most datagrams a BatchingTransport holds before it flushes without waiting for the end of
# the loop turn: bounds the memory (and the delay) a huge fan-out can queue; 4 sendmmsg calls.
MAX_PENDING = 4096

_REFUSED_FOR_NOW = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


def batching_enabled() -> bool:
    """True when the gateway should batch its sends: the extension is built and the environment
    does not say ``SKEIN_SENDMMSG=0``."""
    return HAVE_SENDMMSG and os.environ.get("SKEIN_SENDMMSG", "1").strip() != "0"


def send_many(sock: socket.socket, datagrams: Sequence[Datagram]) -> int:
    """Send ``(bytes, address)`` datagrams from ``sock`` in order and return how many were sent.

    Fewer than given means the next one was not sent: either the kernel refused it for now
    (EAGAIN or ENOBUFS: the caller decides what to do with the rest), or it fails on its own (a
    call starting with it raises: OSError from the kernel, TypeError/ValueError for a malformed
    item). Only the first datagram of a call raises, so a count is never lost. Addresses are as
    asyncio gives them (``(host, port)``, ``(host, port, flowinfo, scope_id)``, IPv4-mapped IPv6
    included) with numeric hosts. One ``sendmmsg`` per up to 1,024 datagrams with the extension,
    else one ``sendto`` each."""
    if _native is not None:
        count: int = _native.send_many(sock.fileno(), datagrams)
        return count
    return _send_loop(sock, datagrams)


def _send_loop(sock: socket.socket, datagrams: Sequence[Datagram]) -> int:
    """:func:`send_many` without the extension: the same contract, one ``sendto`` each."""
    sent = 0
    for data, addr in datagrams:
        try:
            sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            return sent
        except OSError as exc:
            if exc.errno in _REFUSED_FOR_NOW or sent:
                return sent
            raise
        except (TypeError, ValueError, OverflowError):
            if sent:
                return sent
            raise
        sent += 1
    return sent


class BatchingTransport(asyncio.DatagramTransport):
    """The listener's asyncio datagram transport, with one loop turn's ``sendto`` calls sent
    together at the end of the turn.

    ``sendto`` appends to a list; the first append of a turn schedules one :meth:`flush` with
    ``loop.call_soon`` (it runs at the start of the next turn, before that turn's I/O callbacks),
    unless a :meth:`hold` is on (then its :meth:`release` flushes). A flush of one datagram
    hands it to asyncio's ``sendto``, the cheapest way to send one.
    The list holds at most ``max_pending`` datagrams (:data:`MAX_PENDING`); at the bound it is
    flushed at once. Order is kept: datagrams leave in the order ``sendto`` was called, and
    whatever cannot go with ``send`` goes, in order, through the real transport's ``sendto``:

    - those the kernel refused for now (EAGAIN/ENOBUFS): asyncio buffers them (EAGAIN) or reports
      them to the protocol (ENOBUFS), as it did for every datagram before;
    - one that fails on its own (an unreachable address...): asyncio reports its error to the
      protocol's ``error_received``, as before;
    - everything while asyncio holds a backlog of its own (sending past it would reorder), or
      once the transport is closing.

    Every other method delegates to the real transport; :meth:`close` flushes first (a closing
    connection's last datagrams still leave), :meth:`abort` drops what is queued.
    ``send`` is :func:`send_many`'s contract on a file descriptor (the extension by default; a
    stand-in in tests). Without the extension and without ``send``, everything goes through the
    real transport, one ``sendto`` each.
    """

    def __init__(
        self,
        transport: asyncio.DatagramTransport,
        *,
        send: SendMany | None = None,
        max_pending: int = MAX_PENDING,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__()
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._transport = transport
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._send: SendMany | None = send
        if send is None and _native is not None:
            self._send = _native.send_many
        self._fd: int = transport.get_extra_info("socket").fileno()
        self._backlog: Callable[[], int] = getattr(transport, "get_write_buffer_size", lambda: 0)
        self._max_pending = max_pending
        self._pending: list[Datagram] = []
        self._flush_handle: asyncio.Handle | None = None
        self._held = 0  # hold() depth
        # Counters, for tests and measurements.
        self.flushes = 0  # flushes that had something to send
        self.datagrams = 0  # datagrams flushed, by any path
        self.handed_back = 0  # of those, refused, failing or behind asyncio's backlog

    @property
    def transport(self) -> asyncio.DatagramTransport:
        """The asyncio transport underneath."""
        return self._transport

    def sendto(self, data: ReadableBuffer, addr: Any = None) -> None:
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
            data = bytes(data)  # what is queued must not change before it is sent
        pending = self._pending
        pending.append((data, addr))
        if len(pending) >= self._max_pending:
            self.flush()
        elif self._flush_handle is None and not self._held:
            self._flush_handle = self._loop.call_soon(self._end_of_turn)

    def hold(self) -> None:
        """Queue without scheduling a flush until the matching :meth:`release`, which flushes:
        for a callback that knows when it ends. The listener holds around each received
        datagram, so what that datagram makes the connections send (often one datagram, at
        times a whole fan-out) leaves when its callback returns, without a ``call_soon`` and
        without waiting for the next loop turn."""
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        if not self._held:
            self.flush()

    def _end_of_turn(self) -> None:
        self._flush_handle = None
        self.flush()

    def flush(self) -> None:
        """Send everything queued now."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self.flushes += 1
        self.datagrams += len(pending)
        transport = self._transport
        if len(pending) == 1:  # asyncio's own sendto is the cheapest way to send one
            data, addr = pending[0]
            transport.sendto(data, addr)
            return
        start = 0
        if self._send is not None and not transport.is_closing() and not self._backlog():
            start = self._send_batch(pending)
        if start < len(pending):
            self.handed_back += len(pending) - start
            for i in range(start, len(pending)):
                data, addr = pending[i]
                transport.sendto(data, addr)

    def _send_batch(self, pending: list[Datagram]) -> int:
        """Send from the start of ``pending`` with ``send``; return how many are done (sent, or
        handed to the real transport one by one because they fail on their own)."""
        send = self._send
        assert send is not None
        transport = self._transport
        done, total = 0, len(pending)
        while done < total:
            try:
                sent = send(self._fd, pending if done == 0 else pending[done:])
            except (OSError, TypeError, ValueError, OverflowError):
                # This datagram fails on its own: the transport tries it as it always has and
                # reports the error to the protocol (asyncio's error_received).
                data, addr = pending[done]
                transport.sendto(data, addr)
                self.handed_back += 1
                done += 1
                if transport.is_closing() or self._backlog():
                    break  # the rest must queue behind what asyncio holds
                continue
            if sent <= 0:
                break  # EAGAIN/ENOBUFS: the kernel refused; the rest go through the transport
            done += sent
        return done

    # Everything else is the real transport's.

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        """Bytes asyncio holds unsent, plus those queued here for this loop turn."""
        return self._backlog() + sum(len(data) for data, _ in self._pending)

    def __repr__(self) -> str:
        return f"<BatchingTransport {len(self._pending)} queued over {self._transport!r}>"
