"""Tests for loadgen.relay: a real UDP echo server on loopback behind the relay.

Timing is only ever bounded from below (an added delay); everything else waits for counts with
generous deadlines, so a loaded machine makes the tests slower, not flaky.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from loadgen.relay import PROFILES, PathProfile, RelayStats, UdpRelay

DEADLINE_S = 15.0
_MAX_RECORDED = 10_000  # test endpoints keep at most this many datagrams; beyond, they drop


class _Echo(asyncio.DatagramProtocol):
    """Echoes each datagram to its sender, after ``reply_delay_s`` if set, and records senders."""

    def __init__(self, reply_delay_s: float = 0.0) -> None:
        self.reply_delay_s = reply_delay_s
        self.seen: deque[tuple[bytes, tuple[Any, ...]]] = deque(maxlen=_MAX_RECORDED)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport doesn't subclass DatagramTransport, hence cast.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.seen.append((data, addr))
        assert self.transport is not None
        if self.reply_delay_s > 0:
            asyncio.get_running_loop().call_later(
                self.reply_delay_s, self.transport.sendto, data, addr
            )
        else:
            self.transport.sendto(data, addr)


class _Client(asyncio.DatagramProtocol):
    """Collects what comes back, bounded (oldest dropped past the bound)."""

    def __init__(self) -> None:
        self.received: deque[bytes] = deque(maxlen=_MAX_RECORDED)
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append(data)
        self.arrived.set()


@contextlib.asynccontextmanager
async def _echo_server(host: str = "127.0.0.1", reply_delay_s: float = 0.0) -> AsyncIterator[_Echo]:
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(
        lambda: _Echo(reply_delay_s), local_addr=(host, 0)
    )
    try:
        yield echo
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def _client(
    relay: UdpRelay,
) -> AsyncIterator[tuple[asyncio.DatagramTransport, _Client]]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=relay.address)
    try:
        yield transport, client
    finally:
        transport.close()


def _address(echo: _Echo) -> tuple[str, int]:
    assert echo.transport is not None
    host, port = echo.transport.get_extra_info("sockname")[:2]
    return host, port


async def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _round_trip(transport: asyncio.DatagramTransport, client: _Client, data: bytes) -> None:
    before = len(client.received)
    transport.sendto(data)
    await _wait_until(lambda: len(client.received) > before, f"echo of {data!r}")
    assert client.received[-1] == data


async def _send_paced(transport: asyncio.DatagramTransport, payloads: list[bytes]) -> None:
    # Paced so loopback socket buffers never overflow: the kernel would drop, not the model.
    for i, payload in enumerate(payloads):
        transport.sendto(payload)
        if i % 25 == 24:
            await asyncio.sleep(0.005)


# ---- profiles ------------------------------------------------------------------------------------


def test_profiles_are_named_and_valid() -> None:
    assert {"perfect", "wifi", "lte", "congested"} <= PROFILES.keys()
    for name, profile in PROFILES.items():
        assert profile.name == name
    assert PROFILES["perfect"] == PathProfile(name="perfect")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "x", "delay_ms": -1.0},
        {"name": "x", "jitter_ms": float("nan")},
        {"name": "x", "delay_ms": float("inf")},
        {"name": "x", "loss": 1.5},
        {"name": "x", "loss": -0.1},
        {"name": "x", "loss": float("nan")},
        {"name": "x", "delay_ms": 60_000.0, "jitter_ms": 1.0},
    ],
)
def test_profile_rejects_bad_figures(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PathProfile(**kwargs)


def test_stats_reject_negative_counts() -> None:
    with pytest.raises(ValueError):
        RelayStats(forwarded_up=-1)


# ---- relaying ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_round_trip_through_relay() -> None:
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo)) as relay,
        _client(relay) as (transport, client),
    ):
        for i in range(5):
            await _round_trip(transport, client, f"hello {i}".encode())
        stats = relay.stats
        assert (stats.forwarded_up, stats.forwarded_down, stats.clients) == (5, 5, 1)
        # The echo server saw the relay's upstream socket, never the client itself.
        assert {addr[:2] for _, addr in echo.seen} == set(relay.upstream_addresses())
        assert relay.address[0] == "127.0.0.1"


@pytest.mark.asyncio
async def test_delay_adds_to_round_trip() -> None:
    profile = PathProfile(name="slow", delay_ms=60.0)
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo), profile=profile) as relay,
        _client(relay) as (transport, client),
    ):
        for i in range(3):
            started = time.monotonic()
            await _round_trip(transport, client, b"ping %d" % i)
            # Lower bound only: 60 ms each way; 1 ms of slack for timer clock granularity.
            assert time.monotonic() - started >= 2 * 0.060 - 0.001


@pytest.mark.asyncio
async def test_jitter_delivers_everything() -> None:
    profile = PathProfile(name="jittery", delay_ms=5.0, jitter_ms=5.0)
    payloads = [b"%d" % i for i in range(200)]
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo), profile=profile, seed=7) as relay,
        _client(relay) as (transport, client),
    ):
        await _send_paced(transport, payloads)
        await _wait_until(lambda: len(client.received) == len(payloads), "all echoes")
        # Jitter may reorder but never loses nor duplicates.
        assert sorted(client.received) == sorted(payloads)
        assert relay.stats.in_flight == 0


@pytest.mark.asyncio
async def test_total_loss_drops_and_counts_everything() -> None:
    profile = PathProfile(name="dead", loss=1.0)
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo), profile=profile) as relay,
        _client(relay) as (transport, client),
    ):
        await _send_paced(transport, [b"x"] * 20)
        await _wait_until(lambda: relay.stats.dropped_loss == 20, "20 losses")
        assert relay.stats.forwarded_up == 0
        assert not echo.seen
        assert not client.received


@pytest.mark.asyncio
async def test_partial_loss_matches_model() -> None:
    # Each direction loses 30%: up, 300 of 1000 expected (sd 14.5); a round trip survives with
    # 0.7 * 0.7 = 0.49, so 510 lost in all (sd 15.8). The bands are over 6 sd wide either way.
    count = 1000
    profile = PathProfile(name="lossy", loss=0.3)
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo), profile=profile, seed=1234) as relay,
        _client(relay) as (transport, client),
    ):
        await _send_paced(transport, [b"%d" % i for i in range(count)])

        def settled() -> bool:
            stats = relay.stats
            return stats.dropped_loss + stats.forwarded_down == count and stats.in_flight == 0

        await _wait_until(settled, "every datagram to be lost or echoed")
        stats = relay.stats
        lost_up = count - stats.forwarded_up
        assert 200 <= lost_up <= 400
        assert 400 <= stats.dropped_loss <= 620
        assert len(echo.seen) == stats.forwarded_up
        await _wait_until(lambda: len(client.received) == stats.forwarded_down, "echoes")


@pytest.mark.asyncio
async def test_blackhole_drops_then_recovers() -> None:
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo)) as relay,
        _client(relay) as (transport, client),
    ):
        await _round_trip(transport, client, b"before")
        relay.blackhole(True)
        await _send_paced(transport, [b"dark"] * 5)
        await _wait_until(lambda: relay.stats.dropped_blackhole == 5, "5 blackholed")
        assert [data for data, _ in echo.seen] == [b"before"]
        relay.blackhole(False)
        await _round_trip(transport, client, b"after")
        assert list(client.received) == [b"before", b"after"]


@pytest.mark.asyncio
async def test_blackhole_drops_datagrams_in_flight() -> None:
    profile = PathProfile(name="slow", delay_ms=200.0)
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo), profile=profile) as relay,
        _client(relay) as (transport, _),
    ):
        transport.sendto(b"doomed")
        await _wait_until(lambda: relay.stats.in_flight == 1, "a datagram in flight")
        relay.blackhole(True)
        await _wait_until(lambda: relay.stats.dropped_blackhole == 1, "the in-flight drop")
        assert not echo.seen


@pytest.mark.asyncio
async def test_rebind_changes_source_port() -> None:
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo)) as relay,
        _client(relay) as (transport, client),
    ):
        await _round_trip(transport, client, b"one")
        first = echo.seen[-1][1][:2]
        assert relay.upstream_addresses() == [first]
        relay.rebind()
        await _round_trip(transport, client, b"two")
        second = echo.seen[-1][1][:2]
        assert second[0] == first[0] == "127.0.0.1"
        assert second[1] != first[1]
        assert relay.upstream_addresses() == [second]


def _can_bind(host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.asyncio
@pytest.mark.skipif(
    not _can_bind("127.0.0.2"), reason="127.0.0.2 is not bindable here (only Linux routes 127/8)"
)
async def test_rebind_to_other_host_changes_source_address() -> None:
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo)) as relay,
        _client(relay) as (transport, client),
    ):
        await _round_trip(transport, client, b"wifi")
        assert echo.seen[-1][1][0] == "127.0.0.1"
        relay.rebind("127.0.0.2")
        await _round_trip(transport, client, b"cellular")
        assert echo.seen[-1][1][0] == "127.0.0.2"
        assert [host for host, _ in relay.upstream_addresses()] == ["127.0.0.2"]


@pytest.mark.asyncio
async def test_late_reply_to_old_socket_still_arrives_after_rebind() -> None:
    async with (
        _echo_server(reply_delay_s=0.3) as echo,
        await UdpRelay.start(_address(echo)) as relay,
        _client(relay) as (transport, client),
    ):
        transport.sendto(b"late")
        await _wait_until(lambda: len(echo.seen) == 1, "the echo server to get it")
        old = echo.seen[0][1][:2]
        relay.rebind()
        assert relay.upstream_addresses() != [old]
        # The echo goes to the old upstream socket, which is retired but still read.
        await _wait_until(lambda: list(client.received) == [b"late"], "the late reply")


@pytest.mark.asyncio
async def test_rebind_to_unbindable_host_changes_nothing() -> None:
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo)) as relay,
        _client(relay) as (transport, client),
    ):
        await _round_trip(transport, client, b"x")
        before = relay.upstream_addresses()
        with pytest.raises(OSError):
            relay.rebind("192.0.2.1")  # TEST-NET-1: not an address of this host
        assert relay.upstream_addresses() == before
        with pytest.raises(ValueError):
            relay.rebind("::1")  # the target is IPv4
        await _round_trip(transport, client, b"y")


@pytest.mark.asyncio
async def test_overflow_drops_beyond_max_in_flight() -> None:
    profile = PathProfile(name="slow", delay_ms=200.0)
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo), profile=profile, max_in_flight=10) as relay,
        _client(relay) as (transport, client),
    ):
        payloads = [b"%d" % i for i in range(50)]
        # Not paced: client and relay share this loop, so all 50 are queued before the relay
        # reads any, and exactly the first 10 find room (50 small datagrams fit a socket buffer).
        for payload in payloads:
            transport.sendto(payload)

        def accounted() -> bool:
            stats = relay.stats
            return stats.forwarded_up + stats.in_flight + stats.dropped_overflow == 50

        await _wait_until(accounted, "all 50 datagrams to be accounted for")
        assert relay.stats.dropped_overflow == 40
        # The admitted ten make the round trip: their echoes find room once they have left.
        await _wait_until(lambda: len(client.received) == 10, "10 echoes")
        assert list(client.received) == payloads[:10]
        assert relay.stats.forwarded_down == 10
        assert len(echo.seen) == 10


@pytest.mark.asyncio
async def test_each_client_gets_its_own_upstream_and_oldest_is_evicted() -> None:
    async with (
        _echo_server() as echo,
        await UdpRelay.start(_address(echo), max_clients=2) as relay,
        _client(relay) as (t1, c1),
        _client(relay) as (t2, c2),
        _client(relay) as (t3, c3),
    ):
        await _round_trip(t1, c1, b"1")
        await _round_trip(t2, c2, b"2")
        assert len(set(relay.upstream_addresses())) == 2
        await _round_trip(t3, c3, b"3")
        assert relay.stats.clients == 2
        assert len({addr for _, addr in echo.seen}) == 3
        # An evicted client comes back as a new mapping, as behind a NAT.
        await _round_trip(t1, c1, b"1 again")
        assert len({addr for _, addr in echo.seen}) == 4


@pytest.mark.asyncio
@pytest.mark.skipif(not _can_bind("::1"), reason="IPv6 loopback (::1) is not available here")
async def test_ipv6_loopback() -> None:
    async with (
        _echo_server("::1") as echo,
        await UdpRelay.start(_address(echo), listen_host="::1", upstream_host="::1") as relay,
        _client(relay) as (transport, client),
    ):
        assert relay.address[0] == "::1"
        await _round_trip(transport, client, b"six")


@pytest.mark.asyncio
async def test_start_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        await UdpRelay.start(("127.0.0.1", 9), listen_host="localhost")
    with pytest.raises(ValueError):
        await UdpRelay.start(("127.0.0.1", 9), upstream_host="::1")
    with pytest.raises(ValueError):
        await UdpRelay.start(("127.0.0.1", 9), max_clients=0)


@pytest.mark.asyncio
async def test_close_is_idempotent_and_final() -> None:
    relay = await UdpRelay.start(("127.0.0.1", 9), profile=PROFILES["lte"], seed=1)
    await relay.close()
    await relay.close()
    with pytest.raises(RuntimeError):
        relay.rebind()
    assert relay.stats == RelayStats()
