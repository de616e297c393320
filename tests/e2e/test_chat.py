"""End to end over real QUIC on loopback: SDK clients, a real gateway, WebTransport sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.quic.configuration import QuicConfiguration

from gateway.errors import ErrorCode, ServerError
from gateway.sdk.client import Client, connect
from gateway.sdk.http import get_json
from gateway.sdk.session import MessageEvent
from gateway.server.app import GatewayServer
from gateway.wire import frames as f
from tests.conftest import chat_url

TIMEOUT_S = 20.0


async def collect(client: Client, count: int) -> list[MessageEvent]:
    out: list[MessageEvent] = []

    async def run() -> None:
        async for event in client.messages():
            out.append(event)
            if len(out) == count:
                return

    await asyncio.wait_for(run(), TIMEOUT_S)
    return out


async def test_two_clients_exchange_messages_both_ways(
    gateway: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(gateway)
    async with (
        connect(url, name="alice", ca_file=ca_file) as alice,
        connect(url, name="bob", ca_file=ca_file) as bob,
    ):
        await alice.join("lobby")
        await bob.join("lobby")
        got_alice = asyncio.create_task(collect(alice, 20))
        got_bob = asyncio.create_task(collect(bob, 20))
        acks = []
        for i in range(10):
            acks.append(await alice.publish("lobby", f"a{i}".encode()))
            acks.append(await bob.publish("lobby", f"b{i}".encode(), priority=f.Priority.HIGH))
        assert sorted(a.seq for a in acks) == list(range(1, 21))
        for events in (await got_alice, await got_bob):
            bodies = [e.message.body.decode() for e in events]
            assert [b for b in bodies if b[0] == "a"] == [f"a{i}" for i in range(10)]
            assert [b for b in bodies if b[0] == "b"] == [f"b{i}" for i in range(10)]
            assert {e.message.sender for e in events} == {"alice", "bob"}
            assert [e.message.seq for e in events] == list(range(1, 21))


async def test_garbage_on_one_stream_gets_an_error_while_others_chat(
    gateway: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(gateway)
    async with (
        connect(url, name="alice", ca_file=ca_file) as alice,
        connect(url, name="bob", ca_file=ca_file) as bob,
        connect(url, name="mallory", ca_file=ca_file) as mallory,
    ):
        for c in (alice, bob, mallory):
            await c.join("lobby")
        link = mallory._link
        assert link is not None
        link.protocol._quic.send_stream_data(link.frame_stream, b"\x03\xff\xff\xff")
        link.protocol.transmit()
        with pytest.raises(ServerError) as info:  # the session goes on: this publish is refused
            await mallory.publish("lobby", b"x" * 100_000)
        assert info.value.code == ErrorCode.BODY_TOO_LARGE
        got = asyncio.create_task(collect(bob, 5))
        for i in range(5):
            await alice.publish("lobby", f"m{i}".encode())
        assert [e.message.body for e in await got] == [f"m{i}".encode() for i in range(5)]


async def test_unknown_path_is_404_and_rooms_endpoint_answers(
    gateway: GatewayServer, ca_file: Path
) -> None:
    host, port = gateway.address
    async with connect(chat_url(gateway), name="a", ca_file=ca_file) as a:
        await a.join("lobby")
        await a.publish("lobby", b"x")
        status, body = await get_json(f"https://{host}:{port}/v1/rooms", ca_file=ca_file)
        assert status == 200 and body == {"rooms": ["lobby"]}
        status, body = await get_json(f"https://{host}:{port}/v1/rooms/lobby", ca_file=ca_file)
        assert status == 200 and body["epoch"] == 1 and body["subscribers"] == 1
        status, body = await get_json(f"https://{host}:{port}/v1/nothing", ca_file=ca_file)
        assert status == 404

    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    config.load_verify_locations(str(ca_file))
    async with quic_connect(host, port, configuration=config) as proto:
        h3 = H3Connection(proto._quic, enable_webtransport=True)
        stream = proto._quic.get_next_available_stream_id()
        h3.send_headers(
            stream,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"webtransport"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", b"/elsewhere"),
            ],
            end_stream=False,
        )
        proto.transmit()
        # The gateway answers 404 and keeps serving; the SDK reports it as a ServerError.
    with pytest.raises(ServerError, match="HTTP 404"):
        async with connect(f"https://{host}:{port}/elsewhere", ca_file=ca_file, reconnect=False):
            pass
