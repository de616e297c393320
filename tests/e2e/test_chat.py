"""End to end over real QUIC on loopback: SDK clients, a real gateway, WebTransport sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.errors import ErrorCode, LocalProtocolError, ServerError
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
        got = asyncio.create_task(collect(bob, 10))

        # A well-framed but undecodable frame: an Error, and the session goes on.
        raw_send(mallory, b"\x03\xff\xff\xff")
        ack = await mallory.publish("lobby", b"m-0")
        assert mallory.stats.errors == 1 and mallory.stats.last_error is not None
        assert mallory.stats.last_error.code == ErrorCode.MALFORMED_FRAME
        assert not mallory.stats.last_error.fatal and ack.seq == 1

        # Too large for the gateway's body limit: refused before it leaves the client.
        with pytest.raises(LocalProtocolError, match="max_body_bytes"):
            await mallory.publish("lobby", b"x" * 20_000)

        # An unframeable stream: a fatal Error; mallory's session ends, nobody else's.
        raw_send(mallory, b"\xff" * 8)
        for i in range(9):
            await alice.publish("lobby", f"a-{i}".encode())
        events = await got
        assert [e.message.body for e in events] == [b"m-0"] + [f"a-{i}".encode() for i in range(9)]
        await asyncio.wait_for(_until(lambda: not mallory.connected), TIMEOUT_S)
        assert mallory.stats.last_error is not None and mallory.stats.last_error.fatal
        with pytest.raises(ServerError):  # and it does not reconnect into the same mistake
            await mallory.publish("lobby", b"again")
        assert gateway.hub.session_count == 2


def raw_send(client: Client, data: bytes) -> None:
    link = client._link
    assert link is not None
    link.protocol._quic.send_stream_data(link.frame_stream, data)
    link.protocol.transmit()


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - polling client state that has no event to await
        await asyncio.sleep(0.01)


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

    with pytest.raises(ServerError, match="HTTP 404"):  # a CONNECT to the wrong path
        async with connect(f"https://{host}:{port}/elsewhere", ca_file=ca_file, reconnect=False):
            pass
    async with connect(chat_url(gateway), name="b", ca_file=ca_file) as b:  # still serving
        assert (await b.join("lobby")).room == "lobby"


async def test_a_client_cut_mid_replay_learns_why(gateway: GatewayServer, ca_file: Path) -> None:
    """The gateway stops the client's side of the stream when it ends the session; the SDK keeps
    reading until the Error saying why arrives, so a request made in between fails with that
    error (and the client does not reconnect into the same mistake)."""
    from gateway.wire.codec import encode_client_frame
    from gateway.wire.framing import delimit

    url = chat_url(gateway)
    async with connect(url, name="busy", ca_file=ca_file) as busy:
        await busy.join("lobby")
        await asyncio.gather(*(busy.publish("lobby", b"y" * 1000) for _ in range(100)))
        async with connect(url, name="m", ca_file=ca_file) as c:
            joined = await c.join("lobby")
            # A replay of everything is queued to us, then we break the framing (fatal).
            replay = f.Join(99, "lobby", f.Cursor(1, {}, joined.incarnation))
            raw_send(c, delimit(encode_client_frame(replay)) + b"\xff" * 8)
            await asyncio.sleep(0.005)
            if c._link is not None:  # not yet closed by what came back (qh3 can be that quick)
                raw_send(c, delimit(b"\x78\x01"))  # late bytes: the gateway stops our side
            await asyncio.sleep(0.005)
            with pytest.raises(ServerError) as info:
                await c.publish("lobby", b"hello")
            assert info.value.code == ErrorCode.MALFORMED_FRAME
            assert c.stats.last_error is not None and c.stats.last_error.fatal
            assert c.stats.reconnects == 0
