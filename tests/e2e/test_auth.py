"""Only the right people in: JWTs at Hello, per-room permissions, violations close the session."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.errors import ConnectionLost, ErrorCode, ServerError
from gateway.sdk.client import connect
from gateway.sdk.http import get_json
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.tokens import mint
from gateway.wire.frames import Priority
from tests.conftest import chat_url, server_config

SECRET = "another-test-secret-at-least-32-bytes-long!"


def token(sub: str, join: list[str], publish: list[str], age_s: float = 0) -> str:
    """A one-hour token issued ``age_s`` ago (over an hour: expired)."""
    return mint(
        sub=sub, join=join, publish=publish, ttl_s=3600, now=time.time() - age_s, secret=SECRET
    )


@pytest.fixture
async def secured(certs: CertPaths):  # type: ignore[no-untyped-def]
    limits = LimitsConfig(
        violations_before_close=3,
        publish_rate_per_connection_per_s=5,
        publish_burst_per_connection=5,
    )
    server = GatewayServer(
        server_config(
            certs,
            CoreConfig(limits=limits),
            auth=AuthConfig(hs256_secrets=(SECRET,), dev_secret_file=None),
        )
    )
    await server.start()
    yield server
    await server.close()


async def test_no_token_or_a_bad_one_is_refused_at_hello(
    secured: GatewayServer, ca_file: Path
) -> None:
    for bad in ("", token("eve", ["*"], ["*"], age_s=7200), "not.a.jwt"):
        with pytest.raises(ServerError) as info:
            async with connect(chat_url(secured), ca_file=ca_file, token=bad, reconnect=False):
                pass
        assert info.value.code == ErrorCode.UNAUTHENTICATED
    assert secured.hub.session_count == 0


async def test_permissions_rates_and_repeated_violations(
    secured: GatewayServer, ca_file: Path
) -> None:
    alice = token("alice", ["lobby", "room-*"], ["lobby"])
    async with connect(chat_url(secured), ca_file=ca_file, token=alice, name="ignored") as c:
        await c.join("lobby")
        await c.join("room-7")
        ack = await c.publish("lobby", b"hi")
        assert ack.seq == 1
        first = await anext(aiter(c.messages()))
        assert first.message.sender == "alice" and first.message.body == b"hi"
        with pytest.raises(ServerError) as info:
            await c.publish("room-7", b"not allowed")
        assert info.value.code == ErrorCode.FORBIDDEN
        codes = []
        for _ in range(6):  # the bucket holds 5: the 6th-ish is refused
            try:
                await c.publish("lobby", b"x", priority=Priority.NORMAL)
            except ServerError as exc:
                codes.append(exc.code)
        assert ErrorCode.RATE_LIMITED in codes
        with pytest.raises(ServerError) as info:
            await c.join("vault")
        assert info.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(ServerError):  # the third violation closes the session
            await c.join("vault")
        assert c.stats.last_error is not None and c.stats.last_error.fatal
    # alice's publish bucket is hers across connections (per principal), and the loop above
    # emptied it: let it refill a token (5/s) before she publishes again.
    await asyncio.sleep(0.25)
    async with connect(chat_url(secured), ca_file=ca_file, token=alice) as again:
        await again.join("lobby")
        ack = await again.publish("lobby", b"me again")
        async for event in again.messages():
            if event.message.seq == ack.seq:
                # The sender is the token's subject, whatever name the client gave.
                assert event.message.sender == "alice"
                break


async def test_history_needs_a_token_that_may_join_the_room(
    secured: GatewayServer, ca_file: Path
) -> None:
    alice = token("alice", ["lobby"], ["lobby"])
    async with connect(chat_url(secured), ca_file=ca_file, token=alice) as c:
        await c.join("lobby")
        await c.publish("lobby", b"a rose", priority=Priority.HIGH)  # stored: history has it
    host, port = secured.address
    url = f"https://{host}:{port}/v1/rooms/lobby/messages?limit=10"
    status, _ = await get_json(url, ca_file=ca_file)
    assert status == 401
    status, _ = await get_json(url, ca_file=ca_file, token=token("bob", ["elsewhere"], []))
    assert status == 403
    status, page = await get_json(url, ca_file=ca_file, token=alice)
    assert status == 200 and [m["sender"] for m in page["messages"]] == ["alice"]


async def test_group_rooms_are_listed_only_to_tokens_that_may_join_them(
    secured: GatewayServer, ca_file: Path
) -> None:
    """A group room's name (dm-alice-bob) says who talks to whom: no token, or one that may not
    join it, neither lists it nor learns it exists; live rooms are listed to anyone."""
    alice = token("alice", ["lobby", "dm-alice-bob"], ["lobby", "dm-alice-bob"])
    async with connect(chat_url(secured), ca_file=ca_file, token=alice) as c:
        await c.join("lobby")
        await c.join("dm-alice-bob")
    host, port = secured.address
    base = f"https://{host}:{port}/v1/rooms"
    eve = token("eve", ["lobby"], [])
    for who in ("", eve):
        status, listing = await get_json(base, ca_file=ca_file, token=who)
        assert status == 200 and listing["rooms"] == ["lobby"], who
        status, _ = await get_json(f"{base}/dm-alice-bob", ca_file=ca_file, token=who)
        assert status == 404
        status, _ = await get_json(f"{base}/nonexistent", ca_file=ca_file, token=who)
        assert status == 404
    status, listing = await get_json(base, ca_file=ca_file, token=alice)
    assert status == 200 and listing["rooms"] == ["dm-alice-bob", "lobby"]
    status, info = await get_json(f"{base}/dm-alice-bob", ca_file=ca_file, token=alice)
    assert status == 200 and info["mode"] == "group"
    status, info = await get_json(f"{base}/lobby", ca_file=ca_file)
    assert status == 200 and info["mode"] == "live"


async def test_connections_are_capped_per_source_address(certs: CertPaths, ca_file: Path) -> None:
    from tests.conftest import GENEROUS

    limits = LimitsConfig(
        max_connections_per_address=2,
        publish_rate_per_connection_per_s=GENEROUS.publish_rate_per_connection_per_s,
        publish_burst_per_connection=GENEROUS.publish_burst_per_connection,
    )
    server = GatewayServer(server_config(certs, CoreConfig(limits=limits)))
    await server.start()
    try:
        url = chat_url(server)
        async with (
            connect(url, ca_file=ca_file, name="a") as a,
            connect(url, ca_file=ca_file, name="b") as b,
        ):
            with pytest.raises(ConnectionLost, match="too many connections"):
                async with connect(
                    url, ca_file=ca_file, name="c", reconnect=False, request_timeout_s=5.0
                ):
                    pass
            assert server.connection_count == 2
            await a.join("r")
            await b.join("r")
            assert (await a.publish("r", b"still fine")).seq == 1
        assert server.counters["connections_refused"] >= 1
        # Once those two are gone, the address may connect again.
        async with connect(url, ca_file=ca_file, name="d") as d:
            await d.join("r")
    finally:
        await server.close()


@pytest.fixture
async def strict_expiry(certs: CertPaths):  # type: ignore[no-untyped-def]
    """A gateway that holds tokens to their exact expiry (no leeway)."""
    from tests.conftest import GENEROUS

    server = GatewayServer(
        server_config(
            certs,
            CoreConfig(limits=GENEROUS),
            auth=AuthConfig(hs256_secrets=(SECRET,), dev_secret_file=None, leeway_s=0.0),
        )
    )
    await server.start()
    yield server
    await server.close()


def short_token(sub: str) -> str:
    """A token for the lobby that expires 2 s from now."""
    return mint(sub=sub, join=["lobby"], publish=["lobby"], ttl_s=2, now=time.time(), secret=SECRET)


async def test_a_session_ends_when_its_token_expires(
    strict_expiry: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(strict_expiry)
    async with connect(url, ca_file=ca_file, token=short_token("carol")) as c:
        await c.join("lobby")
        deadline = asyncio.get_running_loop().time() + 20
        while c.stats.last_error is None:
            assert asyncio.get_running_loop().time() < deadline, "the session outlived its token"
            await asyncio.sleep(0.1)
        assert c.stats.last_error.code == ErrorCode.UNAUTHENTICATED and c.stats.last_error.fatal
        assert "expired" in c.stats.last_error.message
        # Without a way to get a fresh token the client cannot go on: it says why.
        with pytest.raises(ServerError) as info:
            await c.publish("lobby", b"too late")
        assert info.value.code == ErrorCode.UNAUTHENTICATED


async def test_a_token_provider_carries_a_session_across_expiries(
    strict_expiry: GatewayServer, ca_file: Path
) -> None:
    """Tokens live 2 s; the subscriber's session lasts several of them and misses nothing."""
    url = chat_url(strict_expiry)
    minted: list[str] = []

    def fresh() -> str:
        minted.append(short_token("dave"))
        return minted[-1]

    async with (
        connect(url, ca_file=ca_file, token_provider=fresh) as sub,
        connect(url, ca_file=ca_file, token=token("erin", ["lobby"], ["lobby"])) as pub,
    ):
        await sub.join("lobby")
        await pub.join("lobby")
        sent = []
        for i in range(25):  # about 5 s: two or more expiries of the subscriber's tokens
            sent.append(f"gift-{i}".encode())
            await pub.publish("lobby", sent[-1], priority=Priority.HIGH)
            await asyncio.sleep(0.2)
        got: list[bytes] = []
        async with asyncio.timeout(60):
            async for event in sub.messages():
                got.append(event.message.body)
                if len(got) == len(sent):
                    break
        assert got == sent
        assert sub.stats.reconnects >= 2 and len(minted) >= 3
        assert strict_expiry.hub.stats.errors["UNAUTHENTICATED"] >= 2
