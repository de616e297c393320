"""A client that never reads costs the gateway one bounded budget, over real QUIC (issue 21 item 3).

The client stops reading at the transport (it drops every datagram from the gateway, so nothing
is ever acknowledged), then asks for a room's big log: joins it with an empty cursor (replay
everything), or fetches it twenty times, or asks for ten history pages of it, or all three. The
bytes the gateway holds for that connection (every stream's unacknowledged bytes, read from the
QUIC engine) must stay within a stated bound the whole time; a joined session must be closed
SLOW_CONSUMER and what it left unread dropped once the grace has passed; and a client beside it
must get every message.

Without the bound the gateway queued the whole replay, every fetch answer and every history
page (tens of MB here). RSS is not measured: the engine's queued bytes are what grows.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.config import CoreConfig
from gateway.engine import ENGINE, closing
from gateway.errors import ErrorCode
from gateway.sdk.client import connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.wire import frames as f
from tests.conftest import GENEROUS, chat_url, server_config
from tests.e2e.wtclient import wt_connect

BUDGET = 64 * 1024
BODY = b"b" * 4096
LOGGED = 200  # in memory per shard; the rest of the log only in the (memory) store
BEFORE, DURING = 600, 100  # messages published before the frozen client joins, and after
ROOM = "group-big"  # a group room: every message stored, so history and store reads serve it
BOUND = 2 << 20  # budget, a history page (1 MiB), a replay piece, shed fan-out, Error frames


def backlog(quic: Any) -> int:
    """Every byte the gateway's QUIC connection holds unacknowledged, on every stream, read from
    the engine itself (not from the gateway's own accounting)."""
    if ENGINE == "aioquic":
        return sum(
            s.sender._buffer_stop - s.sender._buffer_start for s in list(quic._streams.values())
        )
    if closing(quic) or quic._core is None:
        return 0
    return int(quic.get_send_buffer_size()) + int(quic._core.bytes_in_flight)


@pytest.fixture
async def impatient(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    core = CoreConfig(
        send_budget_bytes=BUDGET,
        max_backlog_bytes=1 << 20,
        slow_consumer_s=1.0,
        log_messages_per_shard=LOGGED,
        limits=dataclasses.replace(GENEROUS, unread_grace_s=1.0),
    )
    server = GatewayServer(server_config(certs, core))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def publish(client: Any, count: int) -> None:
    for start in range(0, count, 50):
        await asyncio.gather(*(client.publish(ROOM, BODY) for _ in range(min(50, count - start))))


@pytest.mark.parametrize("asks", ["replay", "fetch", "history", "everything"])
async def test_a_client_that_never_reads_holds_one_budget_and_is_cut(
    impatient: GatewayServer, ca_file: Path, asks: str
) -> None:
    server = impatient
    url = chat_url(server)
    async with (
        connect(url, name="publisher", ca_file=ca_file) as publisher,
        connect(url, name="watcher", ca_file=ca_file) as watcher,
    ):
        await publisher.join(ROOM)
        await watcher.join(ROOM)
        got: list[bytes] = []

        async def watch() -> None:
            async for event in watcher.messages():
                got.append(event.message.body)
                if len(got) == BEFORE + DURING:
                    return

        watching = asyncio.create_task(watch())
        await publish(publisher, BEFORE)
        known = set(server._protocols)
        async with wt_connect(server.address, ca_file) as frozen:
            session = frozen.open_session(f.Hello(client_name="frozen"))
            assert isinstance(await frozen.next_frame(session), f.Welcome)
            (protocol,) = set(server._protocols) - known
            frozen.frozen = True  # from now on it reads (and acknowledges) nothing
            info = server.hub.room_info(ROOM, server.now())
            assert info is not None
            (shard,) = info.shards
            replay = asks in ("replay", "everything")
            joined = asks != "history"
            if joined:
                frozen.send(session, f.Join(1, ROOM, cursor=f.Cursor(0, {}, 0) if replay else None))
            if asks in ("fetch", "everything"):
                frozen.send(session, *(f.Fetch(10 + i, ROOM, shard, 1, 1000) for i in range(20)))
            if asks in ("history", "everything"):
                for _ in range(10):
                    frozen.get(f"/v1/rooms/{ROOM}/messages?limit=1000")
            peak = 0

            async def measure() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, backlog(protocol._quic))
                    await asyncio.sleep(0.01)

            measuring = asyncio.create_task(measure())
            try:
                await publish(publisher, DURING)
                await asyncio.wait_for(watching, 20.0)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 15.0
                if not joined:  # nothing is fanned out to it: no session to cut
                    await asyncio.sleep(1.0)
                while joined and server.hub.stats.errors[ErrorCode.SLOW_CONSUMER.name] < 1:
                    assert loop.time() < deadline, "the frozen client was never cut"
                    await asyncio.sleep(0.05)
                assert peak <= BOUND, f"{peak} bytes queued for a client that reads nothing"
                # After the grace its unread bytes go: the stream is reset and, with no session
                # left on it, the connection closed.
                while joined and not closing(protocol._quic) and backlog(protocol._quic) > 0:
                    assert loop.time() < deadline, "the frozen client's bytes were never dropped"
                    await asyncio.sleep(0.05)
            finally:
                measuring.cancel()
            assert peak <= BOUND, f"{peak} bytes queued for a client that reads nothing"
        assert got == [BODY] * (BEFORE + DURING)


async def test_sessions_cut_on_a_live_connection_release_what_they_queued(
    impatient: GatewayServer, ca_file: Path
) -> None:
    """Three frozen sessions in the room are cut; a fourth, in no room, keeps the connection open.
    Once the grace has passed, the three frame streams are reset and their bytes dropped."""
    server = impatient
    async with connect(chat_url(server), name="publisher", ca_file=ca_file) as publisher:
        await publisher.join(ROOM)
        known = set(server._protocols)
        async with wt_connect(server.address, ca_file) as frozen:
            sessions = [frozen.open_session(f.Hello(client_name=f"s{i}")) for i in range(4)]
            for session in sessions:
                assert isinstance(await frozen.next_frame(session), f.Welcome)
            (protocol,) = set(server._protocols) - known
            frozen.frozen = True
            for session in sessions[:3]:
                frozen.send(session, f.Join(1, ROOM))
            await asyncio.sleep(0.2)
            await publish(publisher, 200)  # 800 KB, to each of three sessions
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15.0
            while server.hub.stats.errors[ErrorCode.SLOW_CONSUMER.name] < 3:
                assert loop.time() < deadline, "the frozen sessions were never cut"
                await asyncio.sleep(0.05)
            assert backlog(protocol._quic) <= BOUND
            while backlog(protocol._quic) >= BUDGET:
                assert loop.time() < deadline, "the cut sessions' bytes were never dropped"
                await asyncio.sleep(0.05)
            assert not closing(protocol._quic)  # the fourth session is still open on it
            assert server.counters["unread_released"] == 3
