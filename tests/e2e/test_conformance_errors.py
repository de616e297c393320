"""Every error code of docs/protocol.md §8 a client can provoke, and the limits of §9 behind
them, provoked with the schema alone (no SDK, no gateway codec) over raw WebTransport.

Each case checks what §8 promises: the code, whether it is fatal (and then that the gateway ends
the session), which request it names (``request_id``), and that the gateway goes on serving the
session (a Ping is answered) or, after a fatal one, the connection's other sessions. Size limits
are tried at the limit (accepted) and one above it (refused). Codes a client cannot provoke:
``UNSPECIFIED`` and ``SHUTTING_DOWN`` are never sent; ``INTERNAL`` needs a failing store.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from gateway.tokens import mint
from tests.conftest import GENEROUS, server_config
from tests.e2e.rawpb import (
    FETCH,
    JOIN,
    PING,
    PUBLISH,
    TIMEOUT_S,
    Peer,
    client_frame,
    clock,
    delimited,
    open_peer,
    pb,
    pb_bytes,
    pb_int,
    pb_varint,
)
from tests.e2e.wtclient import wt_connect

SECRET = "conformance-errors-secret-at-least-32-bytes"


async def refused(peer: Peer, code: ErrorCode, request_id: int, *, fatal: bool = False) -> pb.Error:
    error: pb.Error = await peer.error()
    assert (error.code, error.request_id, error.fatal) == (code.value, request_id, fatal), error
    if fatal:
        await peer.ended()
    return error


# ---- framing and the session's state ---------------------------------------------------------------


async def test_framing_errors(gateway: GatewayServer, ca_file: Path) -> None:
    """§2: undecodable payloads and unknown kinds are non-fatal (request_id 0); a payload of
    exactly max_frame_bytes is read (unknown fields are ignored); a declared length above it, a
    length prefix over 5 bytes and a stream ended inside a frame are fatal, for that session
    only."""
    async with wt_connect(gateway.address, ca_file) as client:
        peer, _ = await open_peer(client)
        peer.send_bytes(delimited(pb_bytes(1, b"\x08")[:-1] + b"\x05ab"))  # hello cut short
        await refused(peer, ErrorCode.MALFORMED_FRAME, 0)
        peer.send_bytes(
            client_frame(JOIN, pb_int(1, 5) + pb_bytes(2, b"\xff\xfe"))
        )  # invalid UTF-8
        await refused(peer, ErrorCode.MALFORMED_FRAME, 0)
        peer.send_bytes(delimited(b""))
        await refused(peer, ErrorCode.UNKNOWN_FRAME, 0)
        peer.send_bytes(client_frame(9, pb_int(1, 1)))  # a kind from the future
        await refused(peer, ErrorCode.UNKNOWN_FRAME, 0)
        # A Ping padded with unknown field 15 to exactly max_frame_bytes.
        payload = next(
            p
            for n in range(65500, 65536)
            if len(p := pb_bytes(PING, pb_int(1, 41) + pb_bytes(15, b"p" * n))) == 65536
        )
        peer.send_bytes(delimited(payload))
        assert (await peer.expect("pong")).nonce == 41
        await peer.ping(1)

        for fatal_bytes, code in (
            (pb_varint(65537), ErrorCode.FRAME_TOO_LARGE),
            (b"\x80\x80\x80\x80\x80\x01", ErrorCode.MALFORMED_FRAME),
        ):
            doomed, _ = await open_peer(client)
            doomed.send_bytes(fatal_bytes)
            await refused(doomed, code, 0, fatal=True)
        doomed, _ = await open_peer(client)
        doomed.send_bytes(b"\x05\x32")  # 1 byte of a 5-byte frame, then FIN
        client.fin_frame_stream(doomed.session)
        await refused(doomed, ErrorCode.MALFORMED_FRAME, 0, fatal=True)
        await peer.ping(2)  # the connection's other session goes on


async def test_hello_errors(gateway: GatewayServer, ca_file: Path) -> None:
    """§3.1, §3.2: a request before Hello is HELLO_REQUIRED and a version other than 1
    UNSUPPORTED_VERSION, both fatal; over 32 capabilities is INVALID_ARGUMENT and the session
    still waits for its Hello; a client_name over 128 characters is a fatal INVALID_ARGUMENT;
    a second Hello a non-fatal one. All with request_id 0."""
    async with wt_connect(gateway.address, ca_file) as client:
        for version in (2, 0):
            peer, _ = await open_peer(client, hello=False)
            peer.send(hello=pb.Hello(protocol_version=version, client_name="v"))
            await refused(peer, ErrorCode.UNSUPPORTED_VERSION, 0, fatal=True)
        peer, _ = await open_peer(client, hello=False)
        peer.send(join=pb.Join(request_id=3, room="lobby"))
        await refused(peer, ErrorCode.HELLO_REQUIRED, 0, fatal=True)
        peer, _ = await open_peer(client, hello=False)
        peer.send(hello=pb.Hello(protocol_version=1, client_name="n" * 129))
        await refused(peer, ErrorCode.INVALID_ARGUMENT, 0, fatal=True)

        peer, _ = await open_peer(client, hello=False)
        many = [f"cap-{i}" for i in range(33)]
        peer.send(hello=pb.Hello(protocol_version=1, capabilities=many, client_name="c"))
        await refused(peer, ErrorCode.INVALID_ARGUMENT, 0)
        peer.send(hello=pb.Hello(protocol_version=1, capabilities=many[:32], client_name="n" * 128))
        welcome: pb.Welcome = await peer.expect("welcome")
        assert list(welcome.capabilities) == []
        peer.send(hello=pb.Hello(protocol_version=1, client_name="again"))
        await refused(peer, ErrorCode.INVALID_ARGUMENT, 0)
        await peer.ping(4)
        peer.send(join=pb.Join(request_id=5, room="lobby"))
        await peer.expect("joined")
        peer.send(publish=pb.Publish(request_id=6, room="lobby", body=b"who"))
        await peer.expect("ack")
        (message,) = await peer.messages(1)
        assert message.sender == "n" * 128  # the second Hello changed nothing


async def test_request_errors_name_their_request(gateway: GatewayServer, ca_file: Path) -> None:
    """§4, §6.3, §7.3, §8: each refusal of a request carries its request_id, is non-fatal, and
    the session answers the next request; each size limit is accepted at the limit."""
    big = 1 << 63
    cases: list[tuple[str, int, bytes, ErrorCode | None]] = [
        ("room of 128", JOIN, pb_bytes(2, "r" * 128), None),
        ("room of 129", JOIN, pb_bytes(2, "r" * 129), ErrorCode.INVALID_ARGUMENT),
        ("publish unjoined", PUBLISH, pb_bytes(2, "elsewhere"), ErrorCode.NOT_JOINED),
        (
            "fetch unjoined",
            FETCH,
            pb_bytes(2, "elsewhere") + pb_int(3, 1) + pb_int(4, 1) + pb_int(5, 1),
            ErrorCode.NOT_JOINED,
        ),
        ("join", JOIN, pb_bytes(2, "lobby"), None),
        ("body of 16384", PUBLISH, pb_bytes(2, "lobby") + pb_bytes(4, b"b" * 16384), None),
        (
            "body of 16385",
            PUBLISH,
            pb_bytes(2, "lobby") + pb_bytes(4, b"b" * 16385),
            ErrorCode.BODY_TOO_LARGE,
        ),
        ("msg id of 64", PUBLISH, pb_bytes(2, "lobby") + pb_bytes(3, "m" * 64), None),
        (
            "msg id of 65",
            PUBLISH,
            pb_bytes(2, "lobby") + pb_bytes(3, "m" * 65),
            ErrorCode.INVALID_ARGUMENT,
        ),
        ("priority 4", PUBLISH, pb_bytes(2, "lobby") + pb_int(5, 4), ErrorCode.INVALID_ARGUMENT),
        (
            "deps: a shard never had",
            PUBLISH,
            pb_bytes(2, "lobby") + pb_bytes(6, clock([99], [1])),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        (
            "deps: past the shard's end",
            PUBLISH,
            pb_bytes(2, "lobby") + pb_bytes(6, clock([1], [50])),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        (
            "deps: seq 2^63",
            PUBLISH,
            pb_bytes(2, "lobby") + pb_bytes(6, clock([1], [big])),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        (
            "cursor of 1024",
            JOIN,
            pb_bytes(2, "lobby")
            + pb_bytes(3, pb_bytes(2, clock(list(range(1, 1025)), [big - 1] * 1024))),
            None,
        ),
        (
            "cursor of 1025",
            JOIN,
            pb_bytes(2, "lobby")
            + pb_bytes(3, pb_bytes(2, clock(list(range(1, 1026)), [1] * 1025))),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        (
            "cursor: repeated shard",
            JOIN,
            pb_bytes(2, "lobby") + pb_bytes(3, pb_bytes(2, clock([1, 1], [1, 2]))),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        (
            "fetch: unknown shard",
            FETCH,
            pb_bytes(2, "lobby") + pb_int(3, 42) + pb_int(4, 1) + pb_int(5, 1),
            ErrorCode.OUT_OF_RANGE,
        ),
        (
            "fetch: past the end",
            FETCH,
            pb_bytes(2, "lobby") + pb_int(3, 1) + pb_int(4, 9) + pb_int(5, 9),
            ErrorCode.OUT_OF_RANGE,
        ),
        (
            "fetch: to 2^63",
            FETCH,
            pb_bytes(2, "lobby") + pb_int(3, 1) + pb_int(4, 1) + pb_int(5, big),
            ErrorCode.OUT_OF_RANGE,
        ),
        (
            "fetch: from 0",
            FETCH,
            pb_bytes(2, "lobby") + pb_int(3, 1) + pb_int(4, 0) + pb_int(5, 1),
            ErrorCode.OUT_OF_RANGE,
        ),
    ]
    answers = {JOIN: "joined", PUBLISH: "ack", FETCH: "fetched"}
    async with wt_connect(gateway.address, ca_file) as client:
        peer, _ = await open_peer(client)
        for request_id, (what, kind, body, code) in enumerate(cases, start=100):
            peer.send_bytes(client_frame(kind, pb_int(1, request_id) + body))
            if code is None:
                answer = await peer.expect(answers[kind])
                assert answer.request_id == request_id, what
            else:
                error = await peer.error()
                assert (error.code, error.request_id, error.fatal) == (
                    code.value,
                    request_id,
                    False,
                ), what
        await peer.ping(5)


# ---- limits on a gateway with small ones -----------------------------------------------------------

SMALL = CoreConfig(
    max_rooms_per_session=2,
    max_fetch_messages=2,
    max_errors_per_session=3,
    limits=LimitsConfig(
        publish_rate_per_connection_per_s=0.001,
        publish_burst_per_connection=4,
        join_rate_per_connection_per_s=0.001,
        join_burst_per_connection=3,
        fetch_rate_per_connection_per_s=0.001,
        fetch_burst_per_connection=2,
        max_sessions_per_connection=3,
    ),
)


@pytest.fixture
async def small(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    server = GatewayServer(server_config(certs, SMALL))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_rooms_rates_and_answer_sizes(small: GatewayServer, ca_file: Path) -> None:
    """§4.5, §4.7, §7.3, §9: the rooms-per-session limit is TOO_MANY_ROOMS (a re-join is not a
    new room); past each bucket's burst a Join, Publish or Fetch is RATE_LIMITED; a Fetched
    holds at most max_fetch_messages. All non-fatal, with the request's id."""
    async with wt_connect(small.address, ca_file) as client:
        peer, _ = await open_peer(client)
        for request_id, room in ((1, "one"), (2, "two")):
            peer.send(join=pb.Join(request_id=request_id, room=room))
            await peer.expect("joined")
        peer.send(join=pb.Join(request_id=3, room="three"))
        await refused(peer, ErrorCode.TOO_MANY_ROOMS, 3)
        peer.send(join=pb.Join(request_id=4, room="one"))  # the third and last join token
        await peer.expect("joined")
        peer.send(join=pb.Join(request_id=5, room="one"))
        await refused(peer, ErrorCode.RATE_LIMITED, 5)

        for i in range(1, 5):
            peer.send(publish=pb.Publish(request_id=10 + i, room="one", client_msg_id=f"m{i}"))
            assert (await peer.expect("ack")).id.seq == i
        peer.send(publish=pb.Publish(request_id=15, room="one", client_msg_id="m5"))
        await refused(peer, ErrorCode.RATE_LIMITED, 15)

        peer.send(fetch=pb.Fetch(request_id=20, room="one", shard=1, from_seq=1, to_seq=4))
        fetched: pb.Fetched = await peer.expect("fetched")
        assert [m.seq for m in fetched.messages] == [1, 2]  # max_fetch_messages; no flag
        peer.send(fetch=pb.Fetch(request_id=21, room="one", shard=1, from_seq=3, to_seq=4))
        assert [m.seq for m in (await peer.expect("fetched")).messages] == [3, 4]
        peer.send(fetch=pb.Fetch(request_id=22, room="one", shard=1, from_seq=1, to_seq=1))
        await refused(peer, ErrorCode.RATE_LIMITED, 22)
        await peer.ping(6)


async def test_sessions_and_errors_per_session(small: GatewayServer, ca_file: Path) -> None:
    """§1.6, §8: a CONNECT beyond max_sessions_per_connection is HTTP 429; the
    max_errors_per_session-th protocol error is sent fatal and ends the session; refusals of
    well-formed requests do not count."""
    async with wt_connect(small.address, ca_file) as client:
        peers = [(await open_peer(client, f"s{i}"))[0] for i in range(3)]
        extra = client.open_session(b"", raw=True)
        assert await asyncio.wait_for(extra.status, TIMEOUT_S) == 429
        peer = peers[0]
        for request_id in range(1, 6):  # NOT_JOINED counts towards nothing
            peer.send(publish=pb.Publish(request_id=request_id, room="nowhere"))
            await refused(peer, ErrorCode.NOT_JOINED, request_id)
        peer.send_bytes(delimited(b""))
        await refused(peer, ErrorCode.UNKNOWN_FRAME, 0)
        peer.send_bytes(delimited(b""))
        await refused(peer, ErrorCode.UNKNOWN_FRAME, 0)
        peer.send_bytes(delimited(b""))
        await refused(peer, ErrorCode.UNKNOWN_FRAME, 0, fatal=True)  # the third
        await peers[1].ping(7)


# ---- tokens and permissions ------------------------------------------------------------------------


@pytest.fixture
async def guarded(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    """A jwt gateway that closes a session at its third violation."""
    auth = AuthConfig(hs256_secrets=(SECRET,), dev_secret_file=None)
    core = CoreConfig(limits=dataclasses.replace(GENEROUS, violations_before_close=3))
    server = GatewayServer(server_config(certs, core, auth=auth))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def token(secret: str = SECRET) -> str:
    return mint(
        sub="carol",
        join=["lobby", "stage"],
        publish=["lobby"],
        ttl_s=600,
        now=time.time(),
        secret=secret,
    )


async def test_tokens_and_permissions(guarded: GatewayServer, ca_file: Path) -> None:
    """§3.2, §8: no token, or one not signed with the gateway's secret, is a fatal
    UNAUTHENTICATED (request_id 0); a Join or Publish outside the token's patterns is FORBIDDEN
    with the request's id, and the third violation is sent fatal; the sender is the token's sub."""
    for bad in ("", token("another-secret-that-is-at-least-32-bytes")):
        async with wt_connect(guarded.address, ca_file) as client:
            peer, _ = await open_peer(client, hello=False)
            peer.send(hello=pb.Hello(protocol_version=1, token=bad, client_name="x"))
            await refused(peer, ErrorCode.UNAUTHENTICATED, 0, fatal=True)
    async with wt_connect(guarded.address, ca_file) as client:
        peer, _ = await open_peer(client, "free text", token=token())
        peer.send(join=pb.Join(request_id=1, room="stage"))
        await peer.expect("joined")
        peer.send(publish=pb.Publish(request_id=2, room="stage", body=b"no"))
        await refused(peer, ErrorCode.FORBIDDEN, 2)
        peer.send(join=pb.Join(request_id=3, room="backstage"))
        await refused(peer, ErrorCode.FORBIDDEN, 3)
        peer.send(join=pb.Join(request_id=4, room="lobby"))
        await peer.expect("joined")
        peer.send(publish=pb.Publish(request_id=5, room="lobby", body=b"yes"))
        await peer.expect("ack")
        (message,) = await peer.messages(1)
        assert message.sender == "carol"
        peer.send(join=pb.Join(request_id=6, room="vip"))
        await refused(peer, ErrorCode.FORBIDDEN, 6, fatal=True)


# ---- a client that stops reading ------------------------------------------------------------------


@pytest.fixture
async def impatient(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    """A gateway that cuts a connection congested for 0.5 s, and keeps what it queued for the
    client to read for 60 s after."""
    limits = dataclasses.replace(GENEROUS, unread_grace_s=60.0)
    core = CoreConfig(send_budget_bytes=32 * 1024, slow_consumer_s=0.5, limits=limits)
    server = GatewayServer(server_config(certs, core))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_a_client_that_stops_reading_is_cut(impatient: GatewayServer, ca_file: Path) -> None:
    """§4.8: a connection whose unread backlog stays over the send budget for slow_consumer_s
    is sent a fatal SLOW_CONSUMER (request_id 0) after what was queued before it, chatter shed
    as tombstones first, and the session ends; the publisher is not held up."""
    async with (
        wt_connect(impatient.address, ca_file) as writer,
        wt_connect(impatient.address, ca_file) as reader,
    ):
        pub, _ = await open_peer(writer, "pub")
        slow, _ = await open_peer(reader, "slow")
        for peer in (pub, slow):
            peer.send(join=pb.Join(request_id=1, room="flood"))
            await peer.expect("joined")
        reader.frozen = True  # it reads (and acknowledges) nothing from now on
        cut = impatient.hub.stats.errors
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT_S
        request_id = 10
        while cut[ErrorCode.SLOW_CONSUMER.name] < 1:  # a burst of 64 KiB at a time, bounded
            assert loop.time() < deadline, "the slow reader was never cut"
            for _ in range(16):
                request_id += 1
                priority = pb.PRIORITY_CHATTER if request_id % 2 else pb.PRIORITY_NORMAL
                pub.send(
                    publish=pb.Publish(
                        request_id=request_id, room="flood", body=b"f" * 4096, priority=priority
                    )
                )
            for _ in range(16):
                await pub.expect("ack")
            await asyncio.sleep(0.05)
        reader.frozen = False
        error = await refused(slow, ErrorCode.SLOW_CONSUMER, 0, fatal=True)
        assert "0.5 s" in error.message  # the message says how long, as configured
        tombstones = [m for m in slow.delivered if m.shed]
        assert tombstones, "no chatter was shed before the cut"
        for m in tombstones:  # §4.3: a shed message's tombstone has only shard, seq and shed
            assert (m.shard, m.seq > 0, m.body, m.sender, len(m.deps.shards)) == (
                1,
                True,
                b"",
                "",
                0,
            )
        await pub.ping(8)
