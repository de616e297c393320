"""The gateway's UDP socket as the kernel sees it: buffer sizes, and datagrams it dropped.

A QUIC server's receive buffer absorbs the bursts a busy event loop cannot read at once (one
fan-out draws an ACK from every subscriber within a millisecond or two); when it overflows the
kernel drops datagrams, each a loss QUIC must detect and repair. A bigger buffer trades those
drops for queueing delay while the loop falls behind, so the size is a setting
(``udp_buffer_bytes``, see ServerConfig), and both sides of the trade are exported: the drops
and the bytes waiting in the queue.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass

__all__ = [
    "BufferSizes",
    "kernel_counts",
    "kernel_drops",
    "kernel_receive_queue",
    "log_buffer_sizes",
    "size_buffers",
]

log = logging.getLogger("skein.server")

# Linux's privileged variants (CAP_NET_ADMIN): they may exceed net.core.rmem_max / wmem_max.
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass(frozen=True, slots=True)
class BufferSizes:
    """What was asked for and what the kernel granted, in bytes of payload (Linux reports
    twice the figure it was given, counting its bookkeeping; these are halved back)."""

    asked_bytes: int
    receive_bytes: int
    send_bytes: int

    @property
    def capped(self) -> bool:
        return min(self.receive_bytes, self.send_bytes) < self.asked_bytes


def size_buffers(sock: socket.socket, want_bytes: int) -> BufferSizes:
    """Ask for ``want_bytes`` of receive and of send buffer on ``sock`` and return what the
    kernel granted. Tries the privileged options first (they pass the sysctl caps when the
    process may use them), then the ordinary ones, which the kernel silently caps at
    ``net.core.rmem_max`` / ``wmem_max``. Never raises for a refusal; the caller logs
    :attr:`BufferSizes.capped`. ``want_bytes <= 0`` leaves the system's defaults."""
    if want_bytes > 0:
        for forced, plain in (
            (_SO_RCVBUFFORCE, socket.SO_RCVBUF),
            (_SO_SNDBUFFORCE, socket.SO_SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, forced, want_bytes)
            except OSError:  # not permitted (no CAP_NET_ADMIN) or not Linux
                with suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, plain, want_bytes)
    receive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    send = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    doubled = 2 if sys.platform.startswith("linux") else 1
    return BufferSizes(want_bytes, receive // doubled, send // doubled)


def log_buffer_sizes(sizes: BufferSizes) -> None:
    """One line at start-up; a warning that says what to do when the kernel capped them."""
    extra = {
        "event": "udp_buffers",
        "asked": sizes.asked_bytes,
        "receive": sizes.receive_bytes,
        "send": sizes.send_bytes,
    }
    if sizes.asked_bytes > 0 and sizes.capped:
        log.warning(
            "UDP buffers: asked for %d KiB, the kernel granted %d KiB receive and %d KiB send; "
            "bursts may be dropped: raise net.core.rmem_max and net.core.wmem_max "
            "(sysctl -w net.core.rmem_max=%d net.core.wmem_max=%d) or run with CAP_NET_ADMIN",
            sizes.asked_bytes // 1024,
            sizes.receive_bytes // 1024,
            sizes.send_bytes // 1024,
            sizes.asked_bytes,
            sizes.asked_bytes,
            extra=extra,
        )
    else:
        log.info(
            "UDP buffers: %d KiB receive, %d KiB send",
            sizes.receive_bytes // 1024,
            sizes.send_bytes // 1024,
            extra=extra,
        )


def kernel_drops(ports: Collection[int]) -> int:
    """Datagrams the kernel dropped at this machine's UDP sockets bound to ``ports`` (their
    receive buffers were full: the owner fell behind reading), since each socket opened, from
    Linux's /proc/net/udp and udp6 (the last column). 0 where there is no such table."""
    return sum(row[1] for row in _sockets(ports))


def kernel_receive_queue(ports: Collection[int]) -> int:
    """Bytes waiting in the receive queues of the UDP sockets bound to ``ports`` (the kernel's
    accounting, datagram overhead included): what arrived and the event loop has not read yet.
    Near 0 while the gateway keeps up; it grows when the loop falls behind, a delay no
    timing inside the gateway sees. 0 where there is no /proc/net/udp."""
    return sum(row[0] for row in _sockets(ports))


def kernel_counts(ports: Collection[int]) -> tuple[int, int]:
    """``(kernel_receive_queue(ports), kernel_drops(ports))`` from one read of the tables."""
    rows = _sockets(ports)
    return sum(row[0] for row in rows), sum(row[1] for row in rows)


def _sockets(ports: Collection[int]) -> list[tuple[int, int]]:
    """``(rx_queue bytes, drops)`` of each UDP socket on ``ports``, from /proc/net/udp{,6}."""
    rows = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) in ports:
                    rows.append((int(fields[4].split(":")[1], 16), int(fields[-1])))
    return rows
