"""Many WebTransport sessions on one QUIC connection, over real QUIC on loopback (issue 21 items 9
and 4): sessions ended the documented way give their streams back, and a connection's sessions
share one set of rate limits and one violation count, at most ``max_sessions_per_connection`` at
once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.errors import ErrorCode
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.wire import frames as f
from tests.conftest import GENEROUS, server_config
from tests.e2e.wtclient import WtClient, WtSession, wt_connect

SECRET = "a-secret-of-at-least-32-bytes-for-hs256"
SESSIONS = 110  # more than the 128 (aioquic) or 100 (qh3) bidirectional streams a peer may open


async def welcome(client: WtClient, session: WtSession, n: int) -> f.Welcome:
    try:
        frame = await client.next_frame(session, 10.0)
    except TimeoutError:
        raise AssertionError(f"session {n} on the connection got no answer") from None
    assert isinstance(frame, f.Welcome), frame
    return frame


@pytest.mark.parametrize(
    "ending", ["frame_then_connect", "connect_then_frame", "together", "reset"]
)
async def test_sessions_ended_one_after_another_give_their_streams_back(
    gateway: GatewayServer, ca_file: Path, ending: str
) -> None:
    async with wt_connect(gateway.address, ca_file) as client:
        sessions: list[WtSession] = []
        for n in range(1, SESSIONS + 1):
            try:
                session = client.open_session(f.Hello(client_name=f"user{n}"))
            except ValueError as exc:  # qh3 refuses to open a stream beyond the peer's credit
                raise AssertionError(f"session {n}: no stream credit left ({exc})") from None
            sessions.append(session)
            await welcome(client, session, n)
            if ending == "frame_then_connect":  # each FIN seen by the gateway on its own
                client.fin_frame_stream(session)
                await client.ping()
                client.fin_connect_stream(session)
            elif ending == "connect_then_frame":
                client.fin_connect_stream(session)
                await client.ping()
                client.fin_frame_stream(session)
            elif ending == "together":
                client.fin_frame_stream(session)
                client.fin_connect_stream(session)
            else:
                client.end_by_reset(session)
            await client.ping()
        # The gateway ended its side of every frame stream too, so QUIC could let them go.
        await asyncio.wait_for(asyncio.gather(*(s.ended_by_gateway.wait() for s in sessions)), 10)
        assert gateway.hub.session_count == 0


@pytest.fixture
async def capped(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    """Default rate limits, JWT auth, at most 8 sessions per connection (the default)."""
    config = server_config(
        certs,
        core=CoreConfig(limits=LimitsConfig()),
        auth=AuthConfig(mode="jwt", hs256_secrets=(SECRET,)),
    )
    assert config.core.limits.max_sessions_per_connection == 8
    server = GatewayServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def token(sub: str, *, publish: tuple[str, ...] = ("*",)) -> str:
    claims = {"sub": sub, "join": ["*"], "publish": list(publish), "exp": time.time() + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def answers(client: WtClient, session: WtSession, count: int) -> list[f.ServerFrame]:
    """The next ``count`` answers (Joined, Ack, Error) on a session, skipping deliveries, or
    fewer if a fatal Error ends the session."""
    got: list[f.ServerFrame] = []
    while len(got) < count:
        frame = await client.next_frame(session)
        if isinstance(frame, f.Joined | f.Ack | f.Error):
            got.append(frame)
        if isinstance(frame, f.Error) and frame.fatal:
            break
    return got


async def test_the_ninth_session_on_a_connection_is_refused_with_429(
    capped: GatewayServer, ca_file: Path
) -> None:
    async with wt_connect(capped.address, ca_file) as client:
        sessions = [client.open_session(f.Hello(token=token(f"u{n}"))) for n in range(8)]
        for n, session in enumerate(sessions):
            await welcome(client, session, n)
            assert await session.status == 200
        ninth = client.open_session(f.Hello(token=token("u9")))
        assert await asyncio.wait_for(ninth.status, 10.0) == 429
        await client.ping()
        assert ninth.frames.empty() and capped.hub.session_count == 8
        assert capped.counters["sessions_refused"] == 1
        # Ending one session makes room for another.
        client.fin_frame_stream(sessions[0])
        client.fin_connect_stream(sessions[0])
        await asyncio.wait_for(sessions[0].ended_by_gateway.wait(), 10.0)
        tenth = client.open_session(f.Hello(token=token("u10")))
        await welcome(client, tenth, 10)


async def test_the_sessions_of_a_connection_share_one_publish_bucket(
    capped: GatewayServer, ca_file: Path
) -> None:
    async with wt_connect(capped.address, ca_file) as client:
        sessions = [client.open_session(f.Hello(token=token(f"bot{n}"))) for n in range(8)]
        for n, session in enumerate(sessions):
            await welcome(client, session, n)
            client.send(session, f.Join(1, "lobby"))
            assert isinstance((await answers(client, session, 1))[0], f.Joined)
        started = time.monotonic()
        for i in range(40):  # 320 publishes flat out, 40 per session
            for n, session in enumerate(sessions):
                client.send(session, f.Publish(10 + i, "lobby", f"{n}-{i}", b"x"))
        got = [x for s in sessions for x in await answers(client, s, 40)]
        elapsed = time.monotonic() - started
        acked = sum(isinstance(x, f.Ack) for x in got)
        refused = [x for x in got if isinstance(x, f.Error)]
        assert all(e.code is ErrorCode.RATE_LIMITED and not e.fatal for e in refused)
        # One bucket: burst 100 + 50/s (was 8 buckets: all 320).
        assert 100 <= acked <= 100 + 50 * elapsed + 1, (acked, elapsed)


async def test_violations_accumulate_across_the_sessions_of_a_connection(
    capped: GatewayServer, ca_file: Path
) -> None:
    readonly = token("reader", publish=())
    seen: list[tuple[ErrorCode, bool]] = []
    async with wt_connect(capped.address, ca_file) as client:
        for n in range(4):  # one session after another, 3 forbidden publishes each
            session = client.open_session(
                f.Hello(token=readonly if n % 2 else token(f"o{n}", publish=()))
            )
            await welcome(client, session, n)
            client.send(session, f.Join(1, "lobby"))
            for i in range(3):
                client.send(session, f.Publish(10 + i, "lobby", f"{n}-{i}", b"x"))
            got = await answers(client, session, 4)
            seen += [(e.code, e.fatal) for e in got if isinstance(e, f.Error)]
            if seen[-1][1]:
                await asyncio.wait_for(session.ended_by_gateway.wait(), 10.0)
                break
            client.fin_frame_stream(session)
            client.fin_connect_stream(session)
            await asyncio.wait_for(session.ended_by_gateway.wait(), 10.0)
    # violations_before_close = 10, counted per connection: the 10th (in the 4th session) is fatal.
    assert seen == [(ErrorCode.FORBIDDEN, False)] * 9 + [(ErrorCode.FORBIDDEN, True)]


async def test_a_generous_gateway_still_serves_many_sessions_per_connection_in_turn(
    certs: CertPaths, ca_file: Path
) -> None:
    """max_sessions_per_connection bounds sessions at once, not in a connection's lifetime."""
    limits = dataclasses.replace(GENEROUS, max_sessions_per_connection=2)
    server = GatewayServer(server_config(certs, core=CoreConfig(limits=limits)))
    await server.start()
    try:
        async with wt_connect(server.address, ca_file) as client:
            for n in range(12):
                session = client.open_session(f.Hello(client_name=f"turn{n}"))
                await welcome(client, session, n)
                client.fin_frame_stream(session)
                client.fin_connect_stream(session)
                await asyncio.wait_for(session.ended_by_gateway.wait(), 10.0)
    finally:
        await server.close()
