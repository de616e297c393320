"""Every frame of docs/protocol.md §4.2 and §4.3, spoken with the schema alone.

Raw WebTransport (:mod:`tests.e2e.wtclient`) and the generated protobuf classes
(:mod:`tests.e2e.rawpb`), no SDK and no gateway codec, against a real gateway on loopback, on
whichever QUIC engine the run uses (``make test`` runs this file on aioquic, then on qh3): Hello
and Welcome, Join and Joined (a cursor replay among them), Leave and Left, Publish and Ack on the
live and the reliable path, Fetch and Fetched, Ping and Pong, a ShardMap when a room re-shards,
Deliver and deliver_lz4, and live chatter as HTTP/3 datagrams (§1.7). The errors are in
``test_conformance_errors.py``. Each test asserts what the document says, field by field.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.config import CoreConfig
from gateway.core.sharder import ShardingConfig
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from tests.conftest import GENEROUS, server_config
from tests.e2e.rawpb import TIMEOUT_S, Peer, inflate, open_peer, pb
from tests.e2e.wtclient import wt_connect

CHATTER, NORMAL, HIGH = pb.PRIORITY_CHATTER, pb.PRIORITY_NORMAL, pb.PRIORITY_HIGH


def publish(request_id: int, room: str, msg_id: str, body: bytes, **kw: object) -> pb.Publish:
    return pb.Publish(request_id=request_id, room=room, client_msg_id=msg_id, body=body, **kw)  # type: ignore[arg-type]


async def joined(peer: Peer, request_id: int, room: str, **cursor: object) -> pb.Joined:
    join = pb.Join(request_id=request_id, room=room)
    if cursor:
        join.cursor.CopyFrom(pb.Cursor(**cursor))  # type: ignore[arg-type]
    peer.send(join=join)
    answer: pb.Joined = await peer.expect("joined")
    assert (answer.request_id, answer.room) == (request_id, room)
    return answer


async def acked(peer: Peer, frame: pb.Publish) -> pb.Ack:
    peer.send(publish=frame)
    ack: pb.Ack = await peer.expect("ack")
    assert (ack.request_id, ack.client_msg_id) == (frame.request_id, frame.client_msg_id)
    return ack


def at(messages: list[pb.Message]) -> list[tuple[int, int]]:
    return [(m.shard, m.seq) for m in messages]


# ---- a session, end to end -------------------------------------------------------------------------


async def test_a_session_from_ping_to_leave(gateway: GatewayServer, ca_file: Path) -> None:
    """§3, §4.2-4.6: Ping before Hello; Welcome's fields; Joined of a new room; Acks and a
    Deliver with every field of each Message; a retry acked at its first place and not sent
    again; Left (also for a room not joined), after which the room's news stops."""
    async with wt_connect(gateway.address, ca_file) as client:
        alice, _ = await open_peer(client, hello=False)
        await alice.ping(17)  # allowed before Hello
        alice.send(
            hello=pb.Hello(protocol_version=1, capabilities=["x-new", "lz4"], client_name="alice")
        )
        welcome: pb.Welcome = await alice.expect("welcome")
        assert welcome.protocol_version == 1
        assert list(welcome.capabilities) == ["lz4"]  # unknown capabilities are ignored
        assert welcome.session_id.startswith("n1-")
        assert (welcome.max_frame_bytes, welcome.max_body_bytes) == (65536, 16384)

        answer = await joined(alice, 1, "plaza")
        assert [
            (m.room, m.epoch, list(m.shards), len(m.sealed.shards), m.base_sum)
            for m in answer.shard_maps
        ] == [("plaza", 1, [1], 0, 0)]
        assert (answer.missed, len(answer.frontier.shards)) == (0, 0)
        assert answer.incarnation != 0

        first = await acked(alice, publish(2, "plaza", "a-1", b"hi", priority=NORMAL))
        second = await acked(alice, publish(3, "plaza", "a-2", b"yo", priority=CHATTER))
        assert [(first.id.shard, first.id.seq), (second.id.shard, second.id.seq)] == [
            (1, 1),
            (1, 2),
        ]
        retry = await acked(alice, publish(4, "plaza", "a-1", b"other body"))
        assert (retry.id.shard, retry.id.seq) == (1, 1)  # the first place; not sequenced again
        third = await acked(
            alice, publish(5, "plaza", "a-3", b"", deps=pb.VectorClock(shards=[1], seqs=[2]))
        )
        assert (third.id.shard, third.id.seq) == (1, 3)
        messages = await alice.messages(3)
        await alice.ping(18)
        assert at(alice.delivered) == [(1, 1), (1, 2), (1, 3)]  # each once: the retry was not
        hi, yo, empty = messages
        assert (hi.sender, hi.client_msg_id, hi.priority, hi.body, hi.shed) == (
            "alice",
            "a-1",
            NORMAL,
            b"hi",
            False,
        )
        assert (yo.client_msg_id, yo.priority, yo.body, yo.chatter_before) == (
            "a-2",
            CHATTER,
            b"yo",
            0,
        )
        assert (empty.client_msg_id, empty.body, empty.chatter_before) == ("a-3", b"", 1)
        # Its own shard is never in deps (§4.3): the 1:2 it sent is dropped.
        assert [len(m.deps.shards) for m in messages] == [0, 0, 0]

        alice.send(leave=pb.Leave(request_id=6, room="plaza"))
        assert (await alice.expect("left")).request_id == 6
        alice.send(leave=pb.Leave(request_id=7, room="never-joined"))
        left: pb.Left = await alice.expect("left")
        assert (left.request_id, left.room) == (7, "never-joined")

        bob, _ = await open_peer(client, "bob")
        await joined(bob, 1, "plaza")
        await acked(bob, publish(2, "plaza", "b-1", b"after alice left"))
        await bob.messages(1)
        await alice.ping(19)  # bob has had it: had alice still been in, it would be before this
        assert [m.client_msg_id for m in alice.delivered] == ["a-1", "a-2", "a-3"]


# ---- the reliable path, replays and fetches --------------------------------------------------------


async def test_the_reliable_path_acks_and_delivers(gateway: GatewayServer, ca_file: Path) -> None:
    """§4.7: a group room's messages and HIGH ones of a live room are acked (once stored) and
    delivered like any other; chatter_before stays 0 in a group room."""
    async with wt_connect(gateway.address, ca_file) as client:
        pub, _ = await open_peer(client, "pub")
        sub, _ = await open_peer(client, "sub")
        for peer in (pub, sub):
            await joined(peer, 1, "group-team")
            await joined(peer, 2, "stage")
        for i, priority in enumerate((CHATTER, NORMAL, CHATTER), start=1):
            ack = await acked(pub, publish(10 + i, "group-team", f"g-{i}", b"g", priority=priority))
            assert (ack.id.shard, ack.id.seq) == (1, i)
        gift = await acked(pub, publish(20, "stage", "gift", b"rose", priority=HIGH))
        assert (gift.id.shard, gift.id.seq) == (1, 1)
        got = await sub.messages(4)
        by_room = sorted((m.body, m.priority, m.seq, m.chatter_before) for m in got)
        assert by_room == [
            (b"g", CHATTER, 1, 0),
            (b"g", CHATTER, 3, 0),
            (b"g", NORMAL, 2, 0),
            (b"rose", HIGH, 1, 0),
        ]


async def test_a_cursor_replays_what_follows_it(gateway: GatewayServer, ca_file: Path) -> None:
    """§7.1-7.2: a fresh Join's frontier covers what was fanned out; a Join with a cursor gets
    Joined, then a Deliver of every seq after the cursor; a cursor of another incarnation, or
    with no entries, replays everything."""
    async with wt_connect(gateway.address, ca_file) as client:
        alice, _ = await open_peer(client, "alice")
        first = await joined(alice, 1, "replay")
        for i in range(1, 4):
            await acked(alice, publish(1 + i, "replay", f"r-{i}", f"m{i}".encode()))
        await alice.messages(3)  # fanned out
        bob, _ = await open_peer(client, "bob")
        fresh = await joined(bob, 1, "replay")
        assert (list(fresh.frontier.shards), list(fresh.frontier.seqs)) == ([1], [3])
        assert fresh.incarnation == first.incarnation
        cases = {
            2: (pb.VectorClock(shards=[1], seqs=[1]), first.incarnation, [(1, 2), (1, 3)]),
            3: (pb.VectorClock(), first.incarnation, [(1, 1), (1, 2), (1, 3)]),
            4: (
                pb.VectorClock(shards=[1], seqs=[2]),
                first.incarnation + 1,
                [(1, 1), (1, 2), (1, 3)],
            ),
            5: (pb.VectorClock(shards=[1], seqs=[2]), 0, [(1, 3)]),  # 0: no incarnation known
        }
        for request_id, (delivered, incarnation, wanted) in cases.items():
            bob.delivered.clear()
            again = await joined(
                bob, request_id, "replay", epoch=1, delivered=delivered, incarnation=incarnation
            )
            assert (again.missed, list(again.frontier.seqs)) == (0, [3])
            replay: pb.Deliver = await bob.expect("deliver")  # right after Joined
            assert (replay.room, at(list(replay.messages))) == ("replay", wanted)
            assert [m.body for m in replay.messages] == [f"m{seq}".encode() for _, seq in wanted]


async def test_fetch_answers_with_the_range_it_has(gateway: GatewayServer, ca_file: Path) -> None:
    """§7.3: Fetched echoes the request, holds one message per seq of the range that exists,
    and says nothing was lost (first_available_seq 0: the gateway has a store)."""
    async with wt_connect(gateway.address, ca_file) as client:
        peer, _ = await open_peer(client)
        await joined(peer, 1, "archive")
        for i in range(1, 6):
            await acked(peer, publish(1 + i, "archive", f"f-{i}", f"body{i}".encode()))
        for request_id, (low, high, seqs) in {
            10: (2, 4, [2, 3, 4]),
            11: (4, 1 << 40, [4, 5]),
        }.items():
            peer.send(
                fetch=pb.Fetch(
                    request_id=request_id, room="archive", shard=1, from_seq=low, to_seq=high
                )
            )
            fetched: pb.Fetched = await peer.expect("fetched")
            assert (fetched.request_id, fetched.room, fetched.shard) == (request_id, "archive", 1)
            assert [m.seq for m in fetched.messages] == seqs
            assert [m.body for m in fetched.messages] == [f"body{s}".encode() for s in seqs]
            assert fetched.first_available_seq == 0


# ---- lz4 ------------------------------------------------------------------------------------------


async def test_lz4_clients_get_big_batches_compressed(
    gateway: GatewayServer, ca_file: Path
) -> None:
    """§4.11: with "lz4" on both sides a batch of at least 512 bytes comes as deliver_lz4 (a u32
    size, then an LZ4 block of the Deliver), a smaller one as a plain deliver; the messages are
    the same as a plain client's."""
    async with wt_connect(gateway.address, ca_file) as client:
        plain, _ = await open_peer(client, "plain")
        squeezed, welcome = await open_peer(client, "lz4", capabilities=("lz4",))
        assert welcome is not None and list(welcome.capabilities) == ["lz4"]
        for peer in (plain, squeezed):
            await joined(peer, 1, "big")
        await acked(plain, publish(2, "big", "big-1", b"chatter " * 200))
        await squeezed.messages(1)
        assert squeezed.compressed == 1
        await acked(plain, publish(3, "big", "small-1", b"tiny"))
        await squeezed.messages(2)
        assert squeezed.compressed == 1  # the small one came plain
        await plain.messages(2)
        assert plain.compressed == 0
        assert squeezed.delivered == plain.delivered
        # Only fan-out batches are compressed: a replay after Join comes plain, however big.
        squeezed.send(join=pb.Join(request_id=4, room="big", cursor=pb.Cursor(epoch=1)))
        await squeezed.expect("joined")
        replay: pb.Deliver = await squeezed.expect("deliver")
        assert [m.client_msg_id for m in replay.messages] == ["big-1", "small-1"]
        assert replay.ByteSize() >= 512 and squeezed.compressed == 1


# ---- a re-shard -----------------------------------------------------------------------------------

HOT = ShardingConfig(
    split_above_per_s=40,
    split_after_s=0.3,
    merge_below_per_s=5,
    merge_after_s=60.0,
    cooldown_s=0.3,
    max_shards=2,
    velocity_tau_s=0.2,
)


@pytest.fixture
async def hot(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    """A gateway whose rooms split at 40 msgs/s, once."""
    server = GatewayServer(server_config(certs, CoreConfig(sharding=HOT, limits=GENEROUS)))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_a_re_shard_sends_its_shard_map_between_the_epochs(
    hot: GatewayServer, ca_file: Path
) -> None:
    """§4.9, §5.2: a subscriber gets the new epoch's ShardMap after every message of the old
    epoch and before any of the new; it seals the old shard at its last seq, numbers the new
    shards next, and base_sum counts what came before. A later Joined holds both maps."""
    async with wt_connect(hot.address, ca_file) as client:
        pub, _ = await open_peer(client, "pub")
        sub, _ = await open_peer(client, "sub")
        for peer in (pub, sub):
            await joined(peer, 1, "stadium")
        waiting = asyncio.create_task(sub.expect("shard_map"))
        request_id = 10
        for _ in range(200):  # bursts of 20 until the room splits (at most 4,000 messages)
            if waiting.done():
                break
            for _ in range(20):
                request_id += 1
                pub.send(publish=publish(request_id, "stadium", f"p-{request_id}", b"x"))
            for _ in range(20):
                await pub.expect("ack")
            await asyncio.sleep(0.01)
        shard_map: pb.ShardMap = await asyncio.wait_for(waiting, TIMEOUT_S)
        before = list(sub.delivered)
        (sealed,) = shard_map.sealed.seqs
        assert (shard_map.room, shard_map.epoch, list(shard_map.shards)) == ("stadium", 2, [2, 3])
        assert (list(shard_map.sealed.shards), shard_map.base_sum) == ([1], sealed)
        assert at(before) == [(1, seq) for seq in range(1, sealed + 1)]
        pub.send(publish=publish(1, "stadium", "after", b"y"))
        ack = await pub.expect("ack")
        affine = [2, 3][zlib.crc32(b"pub") % 2]  # §5.5: one sender, one shard per epoch
        assert ack.id.shard == affine
        everything = await sub.messages(request_id - 10 + 1)  # each publish, and "after"
        newer = everything[sealed:]
        assert at(newer) == [(affine, seq) for seq in range(1, len(newer) + 1)]
        assert everything[-1].client_msg_id == "after"  # sequenced last, so fanned out last
        # §6.1: shards of an earlier epoch never appear in deps (the map's sealed stands for them)
        assert not [m for m in newer if set(m.deps.shards) - {2, 3}]

        newcomer, _ = await open_peer(client, "newcomer")
        answer = await joined(newcomer, 1, "stadium")
        assert [(m.epoch, list(m.shards)) for m in answer.shard_maps] == [(1, [1]), (2, [2, 3])]
        assert answer.shard_maps[1] == shard_map
        # §4.5: the frontier is the previous epoch's sealed seqs and what each current shard
        # fanned out (everything, here: sub has had it all)
        frontier = dict(zip(answer.frontier.shards, answer.frontier.seqs, strict=True))
        assert frontier == {1: sealed, affine: len(newer)}


# ---- datagrams ------------------------------------------------------------------------------------


async def test_chatter_comes_as_datagrams_to_who_asked(
    gateway: GatewayServer, ca_file: Path
) -> None:
    """§1.7: with "datagrams" in both Hellos' intersection, a live room's chatter comes as
    HTTP/3 datagrams of the session, each a whole ServerFrame (no length prefix) of at most
    1,100 bytes, and the rest on the stream; the message after the chatter says how many seqs
    before it were chatter (chatter_before). A client that did not ask gets it all on the
    stream; a group room never uses datagrams."""
    async with wt_connect(gateway.address, ca_file) as client:
        pub, _ = await open_peer(client, "pub")
        dgram, welcome = await open_peer(client, "dgram", capabilities=("datagrams", "lz4"))
        assert welcome is not None and list(welcome.capabilities) == ["lz4", "datagrams"]
        plain, _ = await open_peer(client, "plain")
        for peer in (pub, dgram, plain):
            await joined(peer, 1, "arena")
            await joined(peer, 2, "group-arena")
        await acked(pub, publish(3, "arena", "c-1", b"c1", priority=CHATTER))
        await acked(pub, publish(4, "arena", "c-2", b"c2", priority=CHATTER))
        await acked(pub, publish(5, "arena", "n-3", b"n3", priority=NORMAL))
        await acked(pub, publish(6, "group-arena", "g-1", b"g1", priority=CHATTER))

        chatter: list[pb.Message] = []
        for _ in range(10):  # a datagram per batch: at most one per message here
            if len(chatter) == 2:
                break
            data = await dgram.client.next_datagram(dgram.session, TIMEOUT_S)
            assert len(data) <= 1100
            frame = pb.ServerFrame.FromString(data)
            assert frame.WhichOneof("kind") == "deliver", frame
            assert frame.deliver.room == "arena"
            chatter.extend(frame.deliver.messages)
        chatter.sort(key=lambda m: m.seq)  # datagrams may come in any order
        assert [(m.seq, m.body, m.priority, m.chatter_before) for m in chatter] == [
            (1, b"c1", CHATTER, 0),
            (2, b"c2", CHATTER, 1),
        ]
        on_stream = await dgram.messages(2)  # two rooms: their Delivers in either order
        assert sorted((m.body, m.chatter_before) for m in on_stream) == [(b"g1", 0), (b"n3", 2)]

        everything = await plain.messages(4)
        assert sorted((m.body, m.chatter_before) for m in everything) == [
            (b"c1", 0),
            (b"c2", 1),
            (b"g1", 0),
            (b"n3", 2),
        ]
        assert plain.session.datagrams.empty()

        # Chatter that compresses well goes to an lz4 client as deliver_lz4, in a datagram too.
        await acked(pub, publish(7, "arena", "c-4", b"z" * 900, priority=CHATTER))
        data = await dgram.client.next_datagram(dgram.session, TIMEOUT_S)
        frame = pb.ServerFrame.FromString(data)
        assert frame.WhichOneof("kind") == "deliver_lz4" and len(data) < 900, frame
        (big,) = inflate(frame.deliver_lz4).messages
        assert (big.seq, big.body, big.chatter_before) == (4, b"z" * 900, 0)
