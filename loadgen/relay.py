"""An impaired-path UDP relay: emulates mobile network paths on loopback, without root.

:class:`UdpRelay` sits between a QUIC client and the gateway. Clients send to
:attr:`UdpRelay.address`; for each distinct client address the relay opens its own upstream socket
and forwards that client's datagrams to the target from it, and sends the target's replies back to
the client. On the way, in both directions independently, a :class:`PathProfile` adds one-way delay
with uniform jitter and random loss. :meth:`UdpRelay.rebind` swaps every upstream socket for a fresh
one (a NAT rebinding, or with another host a network handoff), and :meth:`UdpRelay.blackhole`
models a tunnel or dead zone where nothing gets through.

Bounds and drop policies (nothing here grows without limit):

- Delayed datagrams waiting on a timer: at most ``max_in_flight``; a datagram that would exceed it
  is dropped on arrival and counted in ``dropped_overflow`` (a router with a full queue tail-drops).
- A send the kernel refuses because its buffer is full is dropped and counted in
  ``dropped_overflow``; other send errors (e.g. the target port is closed) in ``send_errors``.
- Clients tracked: at most ``max_clients`` (default 4096), least recently active evicted first;
  its upstream socket is closed and its datagrams still in flight upward are dropped
  (``dropped_overflow``), as a NAT does when its mapping table is full.
- Upstream sockets retired by :meth:`UdpRelay.rebind`: kept readable for :data:`REBIND_GRACE_S` so
  late replies still arrive, at most :data:`MAX_RETIRED_SOCKETS` of them (oldest closed first).

The relay uses non-blocking sockets with ``loop.add_reader`` rather than asyncio transports so that
:meth:`UdpRelay.rebind` can swap sockets synchronously and a full send buffer drops a datagram
instead of queueing it without bound. That needs a loop with ``add_reader``: any loop on Linux and
macOS, the selector loop on Windows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import math
import random
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Self

__all__ = [
    "DEFAULT_MAX_CLIENTS",
    "MAX_DELAY_MS",
    "MAX_RETIRED_SOCKETS",
    "PROFILES",
    "REBIND_GRACE_S",
    "PathProfile",
    "RelayStats",
    "UdpRelay",
]

MAX_DELAY_MS = 60_000.0
"""Upper bound on ``delay_ms + jitter_ms``: keeps every timer, and so every test, bounded in time."""

DEFAULT_MAX_CLIENTS = 4096
REBIND_GRACE_S = 2.0
MAX_RETIRED_SOCKETS = 4096

_MAX_DATAGRAM = 65_535
# Datagrams read per readiness callback: one busy socket must not starve the rest of the loop.
_READ_BATCH = 256

# A socket address as the socket module returns it: (host, port) for IPv4, 4 items for IPv6.
_SockAddr = tuple[Any, ...]
_Deliver = Callable[["_Client", bytes], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class PathProfile:
    """How one network path impairs traffic, applied to each direction independently.

    ``delay_ms`` is the one-way delay; ``jitter_ms`` spreads it uniformly over
    ``delay_ms +/- jitter_ms``, clamped at 0 (so jitter reorders datagrams, as real paths do);
    ``loss`` is the probability that a datagram is dropped, per direction. Raises ``ValueError``
    for a blank name, a negative or non-finite figure, ``loss`` outside 0..1, or
    ``delay_ms + jitter_ms`` above :data:`MAX_DELAY_MS`.
    """

    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a path profile needs a name")
        for label, value in (("delay_ms", self.delay_ms), ("jitter_ms", self.jitter_ms)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
        if self.delay_ms + self.jitter_ms > MAX_DELAY_MS:
            raise ValueError(f"delay_ms + jitter_ms must be at most {MAX_DELAY_MS:g}")
        if not 0.0 <= self.loss <= 1.0:  # also rejects NaN
            raise ValueError(f"loss must be a probability in 0..1, got {self.loss!r}")


# Typical, rounded figures for each kind of path, not measurements of ours nor of any one network:
# Wi-Fi a few ms one way and nearly lossless, LTE a few tens of ms with visible jitter, and a
# congested cell (busy cell, weak signal, bufferbloat) near 100 ms with heavy jitter and a few
# percent loss. Good enough to exercise loss recovery and reordering, not to predict latency.
PROFILES: dict[str, PathProfile] = {
    profile.name: profile
    for profile in (
        PathProfile(name="perfect"),
        PathProfile(name="wifi", delay_ms=5.0, jitter_ms=2.0, loss=0.001),
        PathProfile(name="lte", delay_ms=25.0, jitter_ms=10.0, loss=0.005),
        PathProfile(name="congested", delay_ms=80.0, jitter_ms=40.0, loss=0.03),
    )
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayStats:
    """A snapshot of a relay's counters (datagrams), plus its current occupancy.

    ``forwarded_up`` went client -> target, ``forwarded_down`` target -> client; each dropped
    datagram is counted once, under the cause that dropped it. ``in_flight`` datagrams are waiting
    on their delay, and ``clients`` addresses are tracked. All are >= 0 (``ValueError`` otherwise).
    """

    forwarded_up: int = 0
    forwarded_down: int = 0
    dropped_loss: int = 0
    dropped_blackhole: int = 0
    dropped_overflow: int = 0
    send_errors: int = 0
    in_flight: int = 0
    clients: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} cannot be negative")


class _Client:
    """One client address and the upstream socket the target currently sees it as."""

    __slots__ = ("addr", "closed", "sock")

    def __init__(self, addr: _SockAddr, sock: socket.socket) -> None:
        self.addr = addr
        self.sock = sock
        self.closed = False


def _ip_family(host: str, role: str) -> socket.AddressFamily:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # Literal addresses only: a name could resolve to another family than the target's.
        raise ValueError(f"{role} must be an IP address literal, got {host!r}") from None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class UdpRelay:
    """A UDP relay between clients and one target that delays, jitters and drops datagrams.

    Build it with :meth:`start`; it runs on the loop that called :meth:`start` and is not
    thread-safe. :meth:`close` (or leaving ``async with``) releases every socket and timer. See the
    module docstring for the bounds and what happens to datagrams beyond them.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        listen: socket.socket,
        target: _SockAddr,
        target_family: socket.AddressFamily,
        upstream_host: str,
        profile: PathProfile,
        seed: int | None,
        max_in_flight: int,
        max_clients: int,
    ) -> None:
        """Internal: use :meth:`start`, which resolves the target and binds the listen socket."""
        self._loop = loop
        self._listen = listen
        self._address: tuple[str, int] = listen.getsockname()[:2]
        self._target = target
        self._target_family = target_family
        self._upstream_host = upstream_host
        self._profile = profile
        self._rng = random.Random(seed)
        self._max_in_flight = max_in_flight
        self._max_clients = max_clients
        self._clients: OrderedDict[_SockAddr, _Client] = OrderedDict()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._retired: OrderedDict[int, tuple[socket.socket, asyncio.TimerHandle]] = OrderedDict()
        self._ids = itertools.count()
        self._blackholed = False
        self._closed = False
        self._counts = dict.fromkeys(
            (
                "forwarded_up",
                "forwarded_down",
                "dropped_loss",
                "dropped_blackhole",
                "dropped_overflow",
                "send_errors",
            ),
            0,
        )
        loop.add_reader(listen.fileno(), self._on_listen_readable)

    @classmethod
    async def start(
        cls,
        target: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        upstream_host: str = "127.0.0.1",
        profile: PathProfile = PROFILES["perfect"],
        seed: int | None = None,
        max_in_flight: int = 10_000,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> UdpRelay:
        """Bind a listen socket on ``(listen_host, 0)`` and relay what arrives to ``target``.

        ``listen_host`` and ``upstream_host`` must be IP literals and ``upstream_host`` of the
        target's family; ``target`` may be a name, resolved once here. ``seed`` makes loss and
        jitter reproducible. Raises ``ValueError`` for bad arguments and ``OSError`` if a socket
        can't be bound or the target can't be resolved.
        """
        if max_in_flight < 0 or max_clients < 1:
            raise ValueError("max_in_flight must be >= 0 and max_clients >= 1")
        listen_family = _ip_family(listen_host, "listen_host")
        upstream_family = _ip_family(upstream_host, "upstream_host")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(target[0], target[1], type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(f"cannot resolve {target!r}")
        target_family, _, _, _, target_addr = infos[0]
        if upstream_family != target_family:
            raise ValueError(f"upstream_host {upstream_host!r} is not of the target's family")
        listen = socket.socket(listen_family, socket.SOCK_DGRAM)
        try:
            listen.setblocking(False)
            listen.bind((listen_host, 0))
            return cls(
                loop=loop,
                listen=listen,
                target=tuple(target_addr),
                target_family=target_family,
                upstream_host=upstream_host,
                profile=profile,
                seed=seed,
                max_in_flight=max_in_flight,
                max_clients=max_clients,
            )
        except BaseException:
            listen.close()
            raise

    # ---- public surface ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send: the listen socket's (host, port)."""
        return self._address

    @property
    def profile(self) -> PathProfile:
        return self._profile

    @property
    def stats(self) -> RelayStats:
        """A snapshot of the counters; later traffic does not change it."""
        return RelayStats(**self._counts, in_flight=len(self._timers), clients=len(self._clients))

    def set_profile(self, profile: PathProfile) -> None:
        """Use ``profile`` for datagrams arriving from now on; those in flight keep their delay."""
        self._profile = profile

    def blackhole(self, on: bool) -> None:
        """While on, drop every datagram in both directions, including those still in flight."""
        self._blackholed = on

    def upstream_addresses(self) -> list[tuple[str, int]]:
        """The current (host, port) of each client's upstream socket: what the target sees."""
        return [client.sock.getsockname()[:2] for client in self._clients.values()]

    def rebind(self, upstream_host: str | None = None) -> None:
        """Give every client a fresh upstream socket on ``(upstream_host or the current host, 0)``.

        To the target the client's address changes: a NAT rebinding if the host stays, a network
        handoff if it changes (127.0.0.1 -> 127.0.0.2). New clients use the new host too. The old
        sockets keep delivering replies for :data:`REBIND_GRACE_S` so late ones still arrive. All
        or nothing: if a socket can't be bound, ``OSError`` is raised and nothing has changed.
        """
        self._check_open()
        host = self._upstream_host if upstream_host is None else upstream_host
        if _ip_family(host, "upstream_host") != self._target_family:
            raise ValueError(f"upstream_host {host!r} is not of the target's family")
        clients = list(self._clients.values())
        fresh: list[socket.socket] = []
        try:
            # Without clients, one probe still proves the host can be bound before we commit to it.
            for _ in range(max(1, len(clients))):
                fresh.append(self._open_upstream(host))
        except OSError:
            for sock in fresh:
                sock.close()
            raise
        if not clients:
            fresh[0].close()
        self._upstream_host = host
        for client, sock in zip(clients, fresh, strict=True):
            self._retire(client.sock)
            client.sock = sock
            self._loop.add_reader(sock.fileno(), self._on_upstream_readable, client, sock)

    async def close(self) -> None:
        """Close every socket and cancel every timer; datagrams in flight are lost. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for sock, handle in self._retired.values():
            handle.cancel()
            self._close_socket(sock)
        self._retired.clear()
        for client in self._clients.values():
            self._close_client(client)
        self._clients.clear()
        self._close_socket(self._listen)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- receiving -----------------------------------------------------------------------------

    def _on_listen_readable(self) -> None:
        for _ in range(_READ_BATCH):
            if self._closed:  # closed by something this batch's datagrams set off
                return
            try:
                data, addr = self._listen.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # An error queued by an earlier send concerns that datagram, not this socket.
                continue
            client = self._client_for(addr)
            if client is not None:
                self._impair(self._send_up, client, data)

    def _on_upstream_readable(self, client: _Client, sock: socket.socket) -> None:
        for _ in range(_READ_BATCH):
            if sock.fileno() < 0:  # closed (evicted, expired, relay closed) during this batch
                return
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Typically ECONNREFUSED from an ICMP error: the target isn't listening (yet).
                continue
            self._impair(self._send_down, client, data)

    def _client_for(self, addr: _SockAddr) -> _Client | None:
        client = self._clients.get(addr)
        if client is not None:
            self._clients.move_to_end(addr)
            return client
        if len(self._clients) >= self._max_clients:
            _, oldest = self._clients.popitem(last=False)
            self._close_client(oldest)
        try:
            sock = self._open_upstream(self._upstream_host)
        except OSError:
            self._counts["send_errors"] += 1
            return None
        client = _Client(addr, sock)
        self._clients[addr] = client
        self._loop.add_reader(sock.fileno(), self._on_upstream_readable, client, sock)
        return client

    # ---- impairing and sending -----------------------------------------------------------------

    def _impair(self, deliver: _Deliver, client: _Client, data: bytes) -> None:
        """Drop ``data``, deliver it now, or schedule its delivery after the profile's delay."""
        profile = self._profile
        if self._blackholed:
            self._counts["dropped_blackhole"] += 1
            return
        if profile.loss > 0 and self._rng.random() < profile.loss:
            self._counts["dropped_loss"] += 1
            return
        delay_ms = profile.delay_ms
        if profile.jitter_ms > 0:
            delay_ms = max(0.0, delay_ms + self._rng.uniform(-profile.jitter_ms, profile.jitter_ms))
        if delay_ms <= 0:
            deliver(client, data)
            return
        if len(self._timers) >= self._max_in_flight:
            self._counts["dropped_overflow"] += 1
            return
        key = next(self._ids)
        self._timers[key] = self._loop.call_later(
            delay_ms / 1000.0, self._fire, key, deliver, client, data
        )

    def _fire(self, key: int, deliver: _Deliver, client: _Client, data: bytes) -> None:
        del self._timers[key]
        deliver(client, data)

    def _send_up(self, client: _Client, data: bytes) -> None:
        if client.closed:
            self._counts["dropped_overflow"] += 1  # evicted while in flight
            return
        self._send(client.sock, data, None, "forwarded_up")

    def _send_down(self, client: _Client, data: bytes) -> None:
        # An evicted client's address is still good; only a closed relay has nothing to send from.
        if not self._closed:
            self._send(self._listen, data, client.addr, "forwarded_down")

    def _send(self, sock: socket.socket, data: bytes, addr: _SockAddr | None, counter: str) -> None:
        if self._blackholed:
            self._counts["dropped_blackhole"] += 1
            return
        try:
            if addr is None:
                sock.send(data)
            else:
                sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._counts["dropped_overflow"] += 1  # kernel buffer full: drop, as a router would
            return
        except OSError:
            self._counts["send_errors"] += 1
            return
        self._counts[counter] += 1

    # ---- sockets -------------------------------------------------------------------------------

    def _open_upstream(self, host: str) -> socket.socket:
        """A non-blocking socket bound to ``(host, 0)`` and connected to the target.

        Connecting makes the kernel drop datagrams from anyone but the target.
        """
        sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((host, 0))
            sock.connect(self._target)
        except BaseException:
            sock.close()
            raise
        return sock

    def _retire(self, sock: socket.socket) -> None:
        """Close ``sock`` after the grace period; its reader keeps forwarding replies till then."""
        if len(self._retired) >= MAX_RETIRED_SOCKETS:
            _, (oldest, handle) = self._retired.popitem(last=False)
            handle.cancel()
            self._close_socket(oldest)
        key = next(self._ids)
        self._retired[key] = (sock, self._loop.call_later(REBIND_GRACE_S, self._expire, key))

    def _expire(self, key: int) -> None:
        sock, _ = self._retired.pop(key)
        self._close_socket(sock)

    def _close_client(self, client: _Client) -> None:
        client.closed = True
        self._close_socket(client.sock)

    def _close_socket(self, sock: socket.socket) -> None:
        # The reader must go before the fd does, or a reused fd would get our callback.
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the relay is closed")
