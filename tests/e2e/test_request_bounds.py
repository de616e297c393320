"""HTTP/3 request streams are bounded in size and in time, over real QUIC (issue 21 item 8).

A raw client declares HEADERS frames of 1 GiB on three request streams and feeds them a byte per
packet: each stream is reset (H3_EXCESSIVE_LOAD) at once, the HTTP/3 layer never buffers them, and
the same connection (and another client) go on being served. A request that stops arriving is
reset (H3_REQUEST_REJECTED) once its deadline passes; so is a stream that sends more than the
limit without a request (frames the HTTP/3 layer skips).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.config import CoreConfig
from gateway.sdk.client import connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from tests.conftest import GENEROUS, chat_url, server_config
from tests.e2e.wtclient import WtClient, wt_connect

LIMIT = 4096
DEADLINE_S = 0.5
H3_EXCESSIVE_LOAD = 0x107  # RFC 9114 8.1
H3_REQUEST_REJECTED = 0x10B


def varint(value: int) -> bytes:
    """A QUIC variable-length integer (RFC 9000 16), 8 bytes for anything >= 2^30."""
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | prefix << (8 * size - 8)).to_bytes(size, "big")
    raise ValueError(value)


@pytest.fixture
async def bounded(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    limits = dataclasses.replace(
        GENEROUS, max_request_header_bytes=LIMIT, request_deadline_s=DEADLINE_S
    )
    server = GatewayServer(server_config(certs, CoreConfig(limits=limits)))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def wait_reset(client: WtClient, stream_id: int, timeout_s: float) -> int:
    async def until() -> int:
        while stream_id not in client.resets:
            client.reset_seen.clear()
            await client.reset_seen.wait()
        return client.resets[stream_id]

    try:
        return await asyncio.wait_for(until(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"stream {stream_id} was never reset by the gateway") from None


async def still_serving(server: GatewayServer, client: WtClient, ca_file: Path) -> None:
    """The connection answers a plain request, and another client chats."""
    assert await asyncio.wait_for(client.get("/v1/rooms"), 5.0) == 200
    async with connect(chat_url(server), name="bystander", ca_file=ca_file) as other:
        await other.join("lobby")
        await other.publish("lobby", b"still here")
        event = await asyncio.wait_for(anext(aiter(other.messages())), 5.0)
        assert event.message.body == b"still here"


async def test_huge_headers_fed_byte_by_byte_are_reset_and_the_gateway_serves_on(
    bounded: GatewayServer, ca_file: Path
) -> None:
    async with wt_connect(bounded.address, ca_file) as client:
        streams = []
        for _ in range(3):  # three request streams, each declaring a 1 GiB HEADERS frame
            stream_id = client._quic.get_next_available_stream_id()
            client.raw(stream_id, b"\x01" + varint(1 << 30))
            streams.append(stream_id)
        for i in range(LIMIT // 4):  # then a byte a packet on each, while the gateway lets us
            for stream_id in streams:
                if stream_id not in client.resets:
                    client.raw(stream_id, b"a")
            if i % 16 == 0:
                await asyncio.sleep(0.001)
            if all(s in client.resets for s in streams):
                break
        for stream_id in streams:
            assert await wait_reset(client, stream_id, 5.0) == H3_EXCESSIVE_LOAD
        assert bounded.counters["requests_refused"] == 3
        await still_serving(bounded, client, ca_file)


async def test_a_request_that_stops_arriving_is_reset_at_its_deadline(
    bounded: GatewayServer, ca_file: Path
) -> None:
    async with wt_connect(bounded.address, ca_file) as client:
        stream_id = client._quic.get_next_available_stream_id()
        client.raw(stream_id, b"\x01" + varint(300) + b"\x00" * 10)  # 10 of 300 bytes
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await wait_reset(client, stream_id, 5.0) == H3_REQUEST_REJECTED
        assert loop.time() - started >= DEADLINE_S * 0.9
        await still_serving(bounded, client, ca_file)


async def test_a_stream_that_sends_the_limit_without_a_request_is_reset(
    bounded: GatewayServer, ca_file: Path
) -> None:
    async with wt_connect(bounded.address, ca_file) as client:
        stream_id = client._quic.get_next_available_stream_id()
        client.raw(stream_id, varint(0x21) + varint(1 << 30))  # a reserved frame type: skipped
        sent = 0
        while stream_id not in client.resets and sent < 4 * LIMIT:
            client.raw(stream_id, b"\x00" * 256)
            sent += 256
            await asyncio.sleep(0.001)
        assert await wait_reset(client, stream_id, 5.0) == H3_EXCESSIVE_LOAD
        await still_serving(bounded, client, ca_file)
