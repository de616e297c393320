"""The SDK's public API raises only the SDK's error types, on either QUIC engine.

A refused or closed connection surfaces as :class:`ServerError` (with the gateway's code) when
the gateway said why in an ``Error`` frame, and as :class:`ConnectionLost` (also a builtin
``ConnectionError``) otherwise; never as aioquic's or qh3's own exceptions. Each public entry
point is driven through a refusal and through a close. ``make test`` runs this file on both
engines (the second pass sets SKEIN_QUIC_ENGINE=qh3 for the gateway and these clients).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.engine import closing
from gateway.errors import ConnectionLost, ErrorCode, GatewayError, ServerError
from gateway.sdk.client import Client, ClientConfig, connect
from gateway.sdk.http import get_json
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.tokens import mint
from tests.conftest import GENEROUS, chat_url, server_config

SECRET = "sdk-errors-test-secret-at-least-32-bytes-long"
_WAIT_S = 30.0  # generous: a loaded 2-core machine


def assert_sdk_error(exc: BaseException) -> None:
    """``exc`` is one of the SDK's documented errors, not an engine's (or anything else's)."""
    assert isinstance(exc, ServerError | ConnectionLost), f"{type(exc)!r}: {exc}"
    assert type(exc).__module__ == "gateway.errors", type(exc)


async def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + _WAIT_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def one_per_address(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    """A gateway that admits one connection per source address: a second is refused."""
    limits = LimitsConfig(
        max_connections_per_address=1,
        publish_rate_per_connection_per_s=GENEROUS.publish_rate_per_connection_per_s,
        publish_burst_per_connection=GENEROUS.publish_burst_per_connection,
    )
    server = GatewayServer(server_config(certs, CoreConfig(limits=limits)))
    await server.start()
    yield server
    await server.close()


async def test_connect_refused_over_the_connection_cap(
    one_per_address: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(one_per_address)
    async with connect(url, ca_file=ca_file, name="holder") as holder:
        await holder.join("r")
        for attempt in range(5):  # each attempt lands at a different moment of the close
            with pytest.raises(Exception) as info:
                async with connect(
                    url, ca_file=ca_file, name=f"refused-{attempt}", reconnect=False
                ):
                    pass
            assert_sdk_error(info.value)
            assert isinstance(info.value, ConnectionError)
            assert "too many connections" in str(info.value)
        assert (await holder.publish("r", b"still served")).seq == 1
    assert one_per_address.counters["connections_refused"] >= 5


async def test_a_close_between_handshake_and_session_start(
    one_per_address: GatewayServer, ca_file: Path
) -> None:
    """The race behind a flaky test: on a busy machine the gateway's refusal (a close right after
    the handshake) can arrive before the client has sent its CONNECT. Here it arrives first every
    time: the client waits for it before starting the session. qh3 raised its own
    QuicConnectionError from send_headers at this point."""
    url = chat_url(one_per_address)
    async with connect(url, ca_file=ca_file, name="holder"):
        client = Client(url, ClientConfig(ca_file=ca_file, reconnect=False))
        link = await client._dial()
        await client._await_handshake(link)
        await wait_until(lambda: closing(link.protocol._quic), "the refusal to arrive")
        with pytest.raises(ConnectionLost, match="too many connections"):
            client._begin_session(link)
        await client._dispose(link)
        await client.close()


async def test_connect_to_nothing_raises_connection_lost(ca_file: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        with pytest.raises(ConnectionLost, match="no QUIC handshake"):
            async with connect(
                f"https://127.0.0.1:{port}/v1/chat",
                ca_file=ca_file,
                reconnect=False,
                request_timeout_s=1.0,
            ):
                pass


async def test_every_method_after_the_gateway_closes_the_connection(
    gateway: GatewayServer, ca_file: Path
) -> None:
    async with connect(chat_url(gateway), ca_file=ca_file, name="a", reconnect=False) as c:
        await c.join("r")
        await c.publish("r", b"before")
        reader = asyncio.create_task(_drain(c))
        await wait_until(lambda: gateway.connection_count == 1, "the connection to be counted")
        for protocol in list(gateway._protocols):
            protocol.close(error_code=0x105, reason_phrase="closed by the test")
        await wait_until(lambda: not c.connected, "the client to see the close")
        failures = []
        for call in (
            lambda: c.join("other"),
            lambda: c.publish("r", b"after"),
            lambda: c.leave("r"),
            lambda: c.migrate(),
            lambda: c.reconnect(),
        ):
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(call(), _WAIT_S)
            assert_sdk_error(info.value)
            failures.append(info.value)
        assert all(isinstance(exc, ConnectionLost) for exc in failures), failures
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(reader, _WAIT_S)  # messages() says why it ended


async def test_every_method_after_a_fatal_refusal(certs: CertPaths, ca_file: Path) -> None:
    """The gateway ends the session with a fatal Error frame (here FORBIDDEN, over its violation
    limit): every later call, and messages(), raises that ServerError with its code."""
    limits = LimitsConfig(violations_before_close=1)
    auth = AuthConfig(hs256_secrets=(SECRET,), dev_secret_file=None)
    server = GatewayServer(server_config(certs, CoreConfig(limits=limits), auth=auth))
    await server.start()
    token = mint(
        sub="mallory", join=["mine"], publish=["mine"], ttl_s=3600, now=time.time(), secret=SECRET
    )
    try:
        async with connect(chat_url(server), ca_file=ca_file, token=token) as c:
            await c.join("mine")
            reader = asyncio.create_task(_drain(c))
            with pytest.raises(ServerError) as info:
                await c.join("not-mine")
            assert info.value.code == ErrorCode.FORBIDDEN
            await wait_until(lambda: not c.connected, "the session to end")
            for call in (
                lambda: c.join("mine"),
                lambda: c.publish("mine", b"after"),
                lambda: c.leave("mine"),
            ):
                with pytest.raises(ServerError) as refused:
                    await asyncio.wait_for(call(), _WAIT_S)
                assert refused.value.code == ErrorCode.FORBIDDEN and refused.value.fatal
            with pytest.raises(GatewayError) as moved:
                await c.migrate()
            assert_sdk_error(moved.value)
            with pytest.raises(ServerError) as ended:
                await asyncio.wait_for(reader, _WAIT_S)
            assert ended.value.code == ErrorCode.FORBIDDEN
    finally:
        await server.close()


async def test_messages_ends_quietly_when_the_application_closes(
    gateway: GatewayServer, ca_file: Path
) -> None:
    async with connect(chat_url(gateway), ca_file=ca_file) as c:
        await c.join("r")
        reader = asyncio.create_task(_drain(c))
        await asyncio.sleep(0)
    assert await asyncio.wait_for(reader, _WAIT_S) == 0


async def test_get_json_from_a_closed_gateway_raises_connection_lost(
    gateway: GatewayServer, ca_file: Path
) -> None:
    host, port = gateway.address
    await gateway.close()
    with pytest.raises(ConnectionError) as info:
        await get_json(f"https://{host}:{port}/v1/rooms", ca_file=ca_file, timeout_s=2.0)
    assert_sdk_error(info.value)


async def _drain(client: Client) -> int:
    count = 0
    async for _ in client.messages():
        count += 1
    return count
