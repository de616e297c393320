"""Sessions survive network handoffs: migration, NAT rebinding, blackouts, restarts, spoofing.

Real QUIC on loopback. A publisher streams ~200 msgs/s while a subscriber changes paths; the
subscriber must see every message exactly once, in order. Gaps are measured and printed
(`pytest -s` shows them); the benchmark suite reports their distribution.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.sdk.client import Client, connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from loadgen.relay import UdpRelay
from tests.conftest import chat_url, server_config

TIMEOUT_S = 30.0
RATE_HZ = 200


def loopback_alias_works() -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


class Stream:
    """A publisher at RATE_HZ and a subscriber's arrival log, for one room."""

    def __init__(self, publisher: Client, subscriber: Client, room: str) -> None:
        self.publisher, self.subscriber, self.room = publisher, subscriber, room
        self.sent: list[bytes] = []
        self.arrivals: list[tuple[float, bytes]] = []
        self._stop = asyncio.Event()

    async def publish(self, count: int) -> None:
        start = time.monotonic()
        for i in range(count):
            body = f"m{i}".encode()
            await self.publisher.publish(self.room, body)
            self.sent.append(body)
            delay = start + (i + 1) / RATE_HZ - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def receive(self, count: int) -> None:
        async def run() -> None:
            async for event in self.subscriber.messages():
                self.arrivals.append((time.monotonic(), event.message.body))
                if len(self.arrivals) >= count:
                    return

        await asyncio.wait_for(run(), TIMEOUT_S)

    def largest_gap_after(self, moment: float) -> float:
        times = [t for t, _ in self.arrivals]
        gaps = [b - a for a, b in itertools.pairwise(times) if b >= moment]
        return max(gaps, default=0.0)


async def run_with_handoff(
    publisher: Client, subscriber: Client, handoff: Callable[[], Awaitable[None]], count: int = 600
) -> tuple[Stream, float]:
    await publisher.join("road")
    await subscriber.join("road")
    stream = Stream(publisher, subscriber, "road")
    receiving = asyncio.create_task(stream.receive(count))
    publishing = asyncio.create_task(stream.publish(count))
    await asyncio.sleep(count / RATE_HZ / 3)
    moment = time.monotonic()
    await handoff()
    await publishing
    await receiving
    bodies = [b for _, b in stream.arrivals]
    assert bodies == stream.sent, "lost, duplicated or reordered across the handoff"
    return stream, stream.largest_gap_after(moment)


@pytest.fixture
async def relayed(gateway: GatewayServer) -> AsyncIterator[UdpRelay]:
    async with await UdpRelay.start(gateway.address) as relay:
        yield relay


def relay_url(relay: UdpRelay) -> str:
    return f"https://127.0.0.1:{relay.address[1]}/v1/chat"


async def test_migrate_mid_stream_loses_and_duplicates_nothing(
    gateway: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(gateway)
    async with (
        connect(url, name="pub", ca_file=ca_file) as pub,
        connect(url, name="sub", ca_file=ca_file) as sub,
    ):
        before = sub.local_address

        async def handoff() -> None:
            await sub.migrate()  # a new port: what a NAT rebinding looks like to the gateway

        _, gap = await run_with_handoff(pub, sub, handoff)
        assert sub.local_address[1] != before[1]
        assert sub.stats.migrations == 1 and sub.stats.reconnects == 0
        assert gateway.migrations["nat_rebinding"] >= 1
        print(f"\nmigration (new port): largest delivery gap {gap * 1000:.1f} ms")


@pytest.mark.skipif(not loopback_alias_works(), reason="127.0.0.2 is not bindable here")
async def test_migrate_to_another_address(gateway: GatewayServer, ca_file: Path) -> None:
    url = chat_url(gateway)
    async with (
        connect(url, name="pub", ca_file=ca_file) as pub,
        connect(url, name="sub", ca_file=ca_file, local_host="127.0.0.1") as sub,
    ):

        async def handoff() -> None:
            await sub.migrate("127.0.0.2")  # Wi-Fi -> cellular: a new address

        _, gap = await run_with_handoff(pub, sub, handoff)
        assert sub.local_address[0] == "127.0.0.2"
        assert gateway.migrations["address_change"] >= 1
        print(f"\nmigration (new address): largest delivery gap {gap * 1000:.1f} ms")


async def test_dual_stack_client_migrates_keeping_its_family(
    gateway: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(gateway)
    async with (
        connect(url, name="pub", ca_file=ca_file) as pub,
        connect(url, name="sub", ca_file=ca_file, dual_stack=True) as sub,
    ):
        assert ":" in sub.local_address[0]  # an IPv6 socket talking IPv4 through mapped addresses

        async def handoff() -> None:
            await sub.migrate("127.0.0.1")

        await run_with_handoff(pub, sub, handoff, count=200)
        assert sub.local_address[0] == "::ffff:127.0.0.1"


async def test_nat_rebinding_seen_only_by_the_gateway(
    gateway: GatewayServer, relayed: UdpRelay, ca_file: Path
) -> None:
    async with (
        connect(chat_url(gateway), name="pub", ca_file=ca_file) as pub,
        connect(relay_url(relayed), name="sub", ca_file=ca_file) as sub,
    ):

        async def handoff() -> None:
            relayed.rebind()  # the "NAT" gives the flow a new port; the client knows nothing

        await run_with_handoff(pub, sub, handoff)
        assert sub.stats.migrations == 0 and sub.stats.reconnects == 0
        assert gateway.migrations["nat_rebinding"] >= 1


async def test_blackout_then_migrate(
    gateway: GatewayServer, relayed: UdpRelay, ca_file: Path
) -> None:
    async with (
        connect(chat_url(gateway), name="pub", ca_file=ca_file) as pub,
        connect(relay_url(relayed), name="sub", ca_file=ca_file) as sub,
    ):

        async def handoff() -> None:
            relayed.blackhole(True)  # the Wi-Fi path goes dark ...
            await asyncio.sleep(0.8)
            relayed.rebind()  # ... and the phone comes back on another path
            relayed.blackhole(False)
            await sub.migrate()

        _, gap = await run_with_handoff(pub, sub, handoff)
        assert relayed.stats.dropped_blackhole > 0
        assert sub.stats.reconnects == 0  # the QUIC connection carried the session through
        assert gap >= 0.8
        print(f"\nblackout 800 ms then migrate: largest delivery gap {gap * 1000:.1f} ms")


async def test_connection_death_reconnects_and_resumes_from_the_cursor(
    gateway: GatewayServer, relayed: UdpRelay, ca_file: Path
) -> None:
    """A blackout longer than the idle timeout kills the connection; the SDK reconnects and the
    gateway replays the gap from the shard log (in-memory retention until the durable store)."""
    async with (
        connect(chat_url(gateway), name="pub", ca_file=ca_file) as pub,
        connect(
            relay_url(relayed), name="sub", ca_file=ca_file, idle_timeout_s=1.0, keepalive_s=0.3
        ) as sub,
    ):

        async def handoff() -> None:
            relayed.blackhole(True)
            await asyncio.sleep(2.0)  # > idle timeout: the connection is declared dead
            relayed.blackhole(False)

        _, gap = await run_with_handoff(pub, sub, handoff, count=800)
        assert sub.stats.reconnects >= 1
        assert gateway.hub.stats.resumes >= 1 and gateway.hub.stats.replayed > 0
        print(f"\nidle-timeout death, reconnect and resume: largest gap {gap * 1000:.1f} ms")


async def test_gateway_restart_clients_reconnect_and_are_told_history_is_gone(
    certs: CertPaths, ca_file: Path
) -> None:
    first = GatewayServer(server_config(certs))
    await first.start()
    port = first.address[1]
    url = chat_url(first)
    async with (
        connect(url, name="pub", ca_file=ca_file) as pub,
        connect(url, name="sub", ca_file=ca_file) as sub,
    ):
        await pub.join("r")
        await sub.join("r")
        for i in range(5):
            await pub.publish("r", f"before-{i}".encode())
        await first.close()
        second = GatewayServer(server_config(certs, port=port))
        await second.start()
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while sub.stats.room_resets < 1 or pub.stats.room_resets < 1:
                assert time.monotonic() < deadline, "clients did not reconnect"
                await asyncio.sleep(0.05)
            await pub.publish("r", b"after")
            seen = []
            async for event in sub.messages():
                seen.append(event.message.body)
                if event.message.body == b"after":
                    break
            # Without a durable store the new gateway has no history: the client is told
            # (room_resets), and everything published since arrives.
            assert seen[-1] == b"after" and b"after" not in seen[:-1]
        finally:
            await second.close()


async def test_replayed_datagrams_from_off_path_cannot_take_the_connection(
    gateway: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(gateway)
    async with (
        connect(url, name="pub", ca_file=ca_file) as pub,
        connect(url, name="sub", ca_file=ca_file, local_host="127.0.0.1") as sub,
    ):
        await pub.join("r")
        await sub.join("r")
        link = sub._link
        assert link is not None
        captured: list[bytes] = []
        real_sendto = link.transport.sendto

        def tap(data: bytes, addr: object = None) -> None:
            captured.append(bytes(data))
            real_sendto(data, addr)  # type: ignore[arg-type]

        link.transport.sendto = tap  # type: ignore[method-assign]
        await sub.publish("r", b"hello")
        link.transport.sendto = real_sendto  # type: ignore[method-assign]
        assert captured

        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.bind(("127.0.0.1", 0))
        migrations_before = sum(gateway.migrations.values())
        try:
            for data in captured * 3:
                attacker.sendto(data, gateway.address)
            await asyncio.sleep(0.3)
        finally:
            attacker.close()
        assert sum(gateway.migrations.values()) == migrations_before
        got = asyncio.create_task(_next_body(sub))
        await pub.publish("r", b"still mine")
        assert await asyncio.wait_for(got, TIMEOUT_S) == b"still mine"
        assert sub.stats.reconnects == 0


async def _next_body(client: Client) -> bytes:
    async for event in client.messages():
        if event.message.body != b"hello":
            return event.message.body
    raise AssertionError("stream ended")
