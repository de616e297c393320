"""Handshake admission over real QUIC: the handshake rate, QUIC Retry (always and automatic), and
the anti-amplification limit a client's first Initial buys."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from gateway.core.config import CoreConfig
from gateway.engine import H3_ALPN, QuicConfiguration, QuicConnection
from gateway.sdk.client import connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.server.listener import parse_initial
from tests.conftest import GENEROUS, chat_url, server_config


@asynccontextmanager
async def gateway_with(certs: CertPaths, **limits: object) -> AsyncIterator[GatewayServer]:
    server = GatewayServer(server_config(certs, CoreConfig(limits=replace(GENEROUS, **limits))))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def chat_once(server: GatewayServer, ca_file: Path, name: str) -> None:
    """A full session: connect, join, publish, see the message delivered."""
    async with connect(chat_url(server), ca_file=ca_file, name=name, reconnect=False) as c:
        await c.join("lobby")
        ack = await c.publish("lobby", name.encode())
        async for event in c.messages():
            if event.message.seq == ack.seq:
                assert event.message.body == name.encode()
                break


async def test_retry_always_validates_every_new_client_and_they_still_chat(
    certs: CertPaths, ca_file: Path
) -> None:
    async with gateway_with(certs, retry="always") as server:
        await asyncio.wait_for(
            asyncio.gather(*(chat_once(server, ca_file, f"c{i}") for i in range(3))), 60
        )
        assert server.admissions["retried"] == 3
        assert server.admissions["accepted"] == 3  # each came back with its token
        assert server.admissions["dropped"] == 0
        assert server.counters["handshakes"] == 3


async def test_handshakes_over_the_rate_are_dropped_and_clients_get_in_when_it_allows(
    certs: CertPaths, ca_file: Path
) -> None:
    # One handshake at once, one more every 2 s: the second client's first Initials are dropped
    # and its retransmissions get in once the bucket has refilled.
    async with gateway_with(
        certs, retry="off", handshake_rate_per_s=0.5, handshake_burst=1.0
    ) as server:
        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(chat_once(server, ca_file, "first"), chat_once(server, ca_file, "next")),
            60,
        )
        assert server.admissions["dropped"] >= 1
        assert server.admissions["accepted"] == 2
        assert server.admissions["retried"] == 0
        assert time.monotonic() - started >= 1.0  # the second waited for a refill (a lower bound)


async def test_retry_auto_starts_under_a_handshake_flood(certs: CertPaths, ca_file: Path) -> None:
    # A burst of 4 at 0.05/s: after 3 handshakes fewer than half the burst is left, which is a
    # flood: the 4th new client is asked to prove its address first, and then gets in.
    async with gateway_with(
        certs, retry="auto", handshake_rate_per_s=0.05, handshake_burst=4.0
    ) as server:
        for i in range(3):
            await asyncio.wait_for(chat_once(server, ca_file, f"early{i}"), 30)
        assert server.admissions["retried"] == 0
        await asyncio.wait_for(chat_once(server, ca_file, "late"), 30)
        assert server.admissions["retried"] == 1
        assert server.admissions["accepted"] == 4


def first_initial(server: GatewayServer) -> bytes:
    """A real client's first Initial datagram for ``server`` (aioquic/qh3 as the engine)."""
    client = QuicConnection(
        configuration=QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True, verify_mode=0)
    )
    client.connect(server.address, now=time.monotonic())
    datagrams = client.datagrams_to_send(now=time.monotonic())
    assert len(datagrams) >= 1
    return datagrams[0][0]


async def received_for(
    sock: socket.socket, seconds: float, stop: Callable[[list[bytes]], bool] = lambda _: False
) -> list[bytes]:
    """Datagrams arriving on ``sock`` within ``seconds`` (a bounded wait)."""
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    deadline = loop.time() + seconds
    while loop.time() < deadline and not stop(got):
        try:
            got.append(await asyncio.wait_for(loop.sock_recv(sock, 65536), 0.25))
        except TimeoutError:
            continue
    return got


async def test_an_unanswered_initial_gets_at_most_three_times_its_size_back(
    certs: CertPaths,
) -> None:
    """RFC 9000 8.1: before the client's address is validated, the gateway sends at most three
    times what it received, however long it retransmits; with Retry it sends one small packet."""
    for retry in ("off", "always"):
        async with gateway_with(certs, retry=retry) as server:
            initial = first_initial(server)
            assert len(initial) >= 1200 and parse_initial(initial) is not None
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
                sock.sendto(initial, server.address)
                # Long enough for several of the gateway's retransmission timeouts.
                replies = await received_for(sock, 4.0)
            sent_back = sum(len(r) for r in replies)
            assert 0 < sent_back <= 3 * len(initial), (retry, sent_back, len(initial))
            if retry == "always":
                assert len(replies) == 1 and sent_back < len(initial)
                assert server.admissions["retried"] == 1


def test_parse_initial_reads_the_destination_id_and_the_token() -> None:
    dcid = os.urandom(8)
    for token in (b"", b"t" * 5, b"t" * 70):  # a token length of 70 takes a 2-byte varint
        length = (
            bytes([len(token)]) if len(token) < 64 else (0x4000 | len(token)).to_bytes(2, "big")
        )
        header = bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([8]) + dcid + b"\x04scid" + length
        assert parse_initial(header + token + bytes(1200)) == (dcid, bool(token))
    assert parse_initial(b"\x40" + bytes(1300)) is None  # a short header
    assert parse_initial(bytes([0xE0]) + (1).to_bytes(4, "big") + bytes(1300)) is None  # Handshake
    assert parse_initial(bytes([0xC0]) + (7).to_bytes(4, "big") + bytes(1300)) is None  # version
    assert parse_initial(bytes([0xC0, 0, 0, 0, 1, 20]) + bytes(5)) is None  # truncated


async def test_a_reconnect_with_early_data_gets_through_a_retry(
    certs: CertPaths, ca_file: Path
) -> None:
    """The SDK reconnects with its TLS ticket and sends the CONNECT and Hello as 0-RTT early
    data. A gateway that answers with a QUIC Retry (always, or under a flood) made the aioquic
    client lose that early data while the handshake said it was accepted: reconnect() waited
    for a Welcome that never came. Each reconnect must get its session back, and publish."""
    async with gateway_with(certs, retry="always") as server:
        async with connect(
            chat_url(server), ca_file=ca_file, name="phone", request_timeout_s=10.0
        ) as client:
            await client.join("lobby")
            for i in range(3):
                await asyncio.wait_for(client.reconnect(), 30)
                ack = await client.publish("lobby", b"after reconnect %d" % i)
                assert ack.seq == i + 1
            assert client.stats.reconnects == 3
        assert server.admissions["dropped"] == 0
        assert server.admissions["retried"] >= 4  # the first connection and every reconnect
