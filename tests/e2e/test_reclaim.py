"""Issue 21 item 5 over real QUIC on loopback: room creation is rate-limited per principal, idle
rooms are reclaimed so the cap frees up, and a room taken up again after it was reclaimed (and
again after a restart on the same SQLite file) is the same room: same incarnation, no seq used
twice, every stored message served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.errors import ErrorCode
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.store.base import StoreConfig
from gateway.wire import frames as f
from tests.conftest import GENEROUS, server_config
from tests.e2e.test_sessions_per_connection import SECRET, answers, token, welcome
from tests.e2e.wtclient import WtClient, WtSession, wt_connect

IDLE_S = 0.5
WAIT_S = 20.0  # generous: a loaded 2-core machine


async def until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.05)


async def start(config: object) -> GatewayServer:
    server = GatewayServer(config)  # type: ignore[arg-type]
    await server.start()
    return server


@pytest.fixture
async def capped(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    """JWT auth, room creation 10 at once then 1/s per principal, 20 rooms at most, idle rooms
    reclaimed after half a second."""
    limits = LimitsConfig(
        room_create_burst_per_principal=10, room_create_rate_per_principal_per_s=1
    )
    server = await start(
        server_config(
            certs,
            core=CoreConfig(limits=limits, max_rooms=20, room_idle_s=IDLE_S),
            auth=AuthConfig(mode="jwt", hs256_secrets=(SECRET,)),
        )
    )
    try:
        yield server
    finally:
        await server.close()


async def session(client: WtClient, sub: str) -> WtSession:
    s = client.open_session(f.Hello(token=token(sub)))
    await welcome(client, s, 0)
    return s


async def test_one_principal_creating_rooms_is_rate_limited_and_idle_rooms_free_the_cap(
    capped: GatewayServer, ca_file: Path
) -> None:
    async with wt_connect(capped.address, ca_file) as client:
        bots = [await session(client, "mallory") for _ in range(4)]  # one principal, 4 sessions
        started = time.monotonic()
        for i in range(25):
            for n, bot in enumerate(bots):
                client.send(bot, f.Join(i + 1, f"room-{n}-{i}"))
        got = [x for bot in bots for x in await answers(client, bot, 25)]
        elapsed = time.monotonic() - started
        made = [x for x in got if isinstance(x, f.Joined)]
        refused = [x for x in got if isinstance(x, f.Error)]
        assert len(made) + len(refused) == 100
        assert 10 <= len(made) <= 10 + elapsed * 1 + 1, (len(made), elapsed)  # was 20: the cap
        assert {e.code for e in refused} <= {ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_ROOMS}
        assert any(e.code is ErrorCode.RATE_LIMITED and "retry in" in e.message for e in refused)

        # Someone else, on a connection of their own, still gets rooms.
        async with wt_connect(capped.address, ca_file) as other:
            alice = await session(other, "alice")
            for i in range(5):
                other.send(alice, f.Join(i + 1, f"alice-{i}"))
            assert [type(x) for x in await answers(other, alice, 5)] == [f.Joined] * 5

            # Bob, on a third connection, finds the gateway full ...
            async with wt_connect(capped.address, ca_file) as third:
                bob = await session(third, "bob")
                for i in range(10):
                    third.send(bob, f.Join(i + 1, f"bob-{i}"))
                first = await answers(third, bob, 10)
                full = [x.request_id for x in first if isinstance(x, f.Error)]
                assert all(
                    isinstance(x, f.Joined) or x.code is ErrorCode.TOO_MANY_ROOMS for x in first
                )
                assert len(capped.hub.room_names()) == 20 and full, first
                # ... until mallory's sessions end and its rooms, idle, are reclaimed.
                for bot in bots:
                    client.fin_frame_stream(bot)
                    client.fin_connect_stream(bot)
                await until(lambda: len(capped.hub.room_names()) == 20 - len(made), "reclaimed")
                assert all(not name.startswith("room-") for name in capped.hub.room_names())
                for request_id in full:
                    third.send(bob, f.Join(100 + request_id, f"bob-{request_id - 1}"))
                again = await answers(third, bob, len(full))
                assert [type(x) for x in again] == [f.Joined] * len(full)
                assert capped.hub.stats.rooms_reclaimed == len(made)


async def deliveries(client: WtClient, s: WtSession, count: int) -> list[f.Message]:
    """The next ``count`` messages delivered on the session (tombstones included)."""
    out: list[f.Message] = []
    while len(out) < count:
        frame = await client.next_frame(s, WAIT_S)
        if isinstance(frame, f.Deliver):
            out += frame.messages
    return out


async def test_a_room_taken_up_after_reclaim_and_after_a_restart_keeps_its_seqs_and_messages(
    certs: CertPaths, ca_file: Path, tmp_path: Path
) -> None:
    config = server_config(
        certs,
        core=CoreConfig(limits=GENEROUS, room_idle_s=IDLE_S),
        store=StoreConfig(kind="sqlite", path=tmp_path / "skein.db"),
    )
    server = await start(config)
    try:
        async with wt_connect(server.address, ca_file) as client:
            pub = client.open_session(f.Hello(client_name="pub"))
            await welcome(client, pub, 0)
            client.send(pub, f.Join(1, "group-r"), f.Join(2, "live-r"))
            joined_g, joined_l = await answers(client, pub, 2)
            assert isinstance(joined_g, f.Joined) and isinstance(joined_l, f.Joined)
            for i in range(5):  # a group room: all stored
                client.send(pub, f.Publish(10 + i, "group-r", f"g{i}", f"g{i}".encode()))
            # A live room: a gift (stored), then chatter (never stored) above its mark.
            client.send(pub, f.Publish(20, "live-r", "h", b"gift", f.Priority.HIGH))
            acks = await answers(client, pub, 6)
            client.send(pub, f.Publish(21, "live-r", "c1", b"chat", f.Priority.CHATTER))
            client.send(pub, f.Publish(22, "live-r", "c2", b"chat", f.Priority.CHATTER))
            acks += await answers(client, pub, 2)
            assert all(isinstance(a, f.Ack) for a in acks), acks
            group_shard = {a.shard for a in acks if a.client_msg_id.startswith("g")}.pop()
            live_shard = {a.shard for a in acks if a.client_msg_id in ("h", "c1", "c2")}.pop()
            assert sorted(a.seq for a in acks if a.client_msg_id in ("h", "c1", "c2")) == [1, 2, 3]
            client.send(pub, f.Leave(30, "group-r"), f.Leave(31, "live-r"))
            await until(
                lambda: server.hub.room_names() == [] and server.hub.stats.rooms_reclaimed == 2,
                "both rooms reclaimed",
            )

            # Re-join with a cursor (seen g0, g1): the same room, the rest replayed from the store.
            back = client.open_session(f.Hello(client_name="back"))
            await welcome(client, back, 1)
            cursor = f.Cursor(1, {group_shard: 2}, joined_g.incarnation)
            client.send(back, f.Join(1, "group-r", cursor), f.Join(2, "live-r"))
            again_g, again_l = await answers(client, back, 2)
            assert isinstance(again_g, f.Joined) and isinstance(again_l, f.Joined)
            assert again_g.incarnation == joined_g.incarnation  # not silently a new room
            assert again_l.incarnation == joined_l.incarnation
            assert again_g.shard_maps[-1].sealed == {group_shard: 5}
            assert again_l.shard_maps[-1].sealed == {live_shard: 3}  # chatter's seqs too
            replay = await deliveries(client, back, 3)
            assert [(m.shard, m.seq, m.body) for m in replay] == [
                (group_shard, s, f"g{s - 1}".encode()) for s in (3, 4, 5)
            ]
            # A retry of a stored publish is acked where it is; new ones go to a new shard.
            client.send(back, f.Publish(5, "group-r", "g4", b"g4"))  # sender "back": its own id
            client.send(pub, f.Join(40, "group-r"))
            (rejoined,) = await answers(client, pub, 1)
            assert isinstance(rejoined, f.Joined)
            client.send(pub, f.Publish(41, "group-r", "g4", b"g4"))  # pub's retry of g4
            client.send(pub, f.Publish(42, "live-r", "x", b"x", f.Priority.HIGH))
            (retry,) = await answers(client, pub, 1)
            assert isinstance(retry, f.Ack) and (retry.shard, retry.seq) == (group_shard, 5)
            (new_back,) = await answers(client, back, 1)
            assert isinstance(new_back, f.Ack) and new_back.shard > group_shard  # a new shard
            assert new_back.seq == 1
    finally:
        await server.close()

    # Restarted on the same file: the rooms come back as the same rooms, nothing lost or reused.
    server = await start(config)
    try:
        async with wt_connect(server.address, ca_file) as client:
            late = client.open_session(f.Hello(client_name="late"))
            await welcome(client, late, 0)
            everything = f.Cursor(0, {}, joined_g.incarnation)
            client.send(late, f.Join(1, "group-r", everything))
            (joined,) = await answers(client, late, 1)
            assert isinstance(joined, f.Joined) and joined.incarnation == joined_g.incarnation
            replay = await deliveries(client, late, 6)
            stored = [(m.shard, m.seq, m.body) for m in replay if not m.shed]
            assert sorted(stored) == sorted(
                [(group_shard, s, f"g{s - 1}".encode()) for s in range(1, 6)]
                + [(new_back.shard, 1, b"g4")]
            )
            await until(lambda: server.hub.stats.rooms_reclaimed >= 1, "live-r reclaimed")
            assert "live-r" not in server.hub.room_names()  # restored, idle: reclaimed too
            client.send(late, f.Join(2, "live-r"))
            (live,) = await answers(client, late, 1)
            assert isinstance(live, f.Joined) and live.incarnation == joined_l.incarnation
            sealed = {s: n for m in live.shard_maps for s, n in m.sealed.items()}
            assert sealed[live_shard] == 3
    finally:
        await server.close()
