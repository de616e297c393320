"""What a client written from docs/protocol.md alone sees: raw HTTP/3 and hand-encoded frames.

These tests speak to a real gateway over loopback QUIC without the SDK, and build the frames a
careless or hostile client would send byte by byte from the schema (``schemas/skein/v1``), so they
check the protocol as documented rather than as the SDK happens to use it: the HTTP/3 SETTINGS a
strict WebTransport client needs (on both QUIC engines), clocks naming shard 0, an oversized
token, and the request ids that validation errors carry.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bench.gateway import bench_config, gateway_process
from gateway import engine
from gateway.core.auth import AuthConfig
from gateway.engine import (
    H3_ALPN,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    StreamDataReceived,
    quic_connect,
)
from gateway.errors import ErrorCode
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.tokens import mint
from gateway.wire import frames as f
from tests.conftest import server_config
from tests.e2e.rawpb import FETCH, JOIN, PING, PUBLISH, client_frame, clock, pb_bytes, pb_int
from tests.e2e.wtclient import WtClient, WtSession, wt_connect

OTHER = next(name for name in engine.ENGINES if name != engine.ENGINE)
TIMEOUT_S = 20.0
SECRET = "conformance-test-secret-at-least-32-bytes!"

# HTTP/3 (RFC 9114 7.2.4, RFC 9220, RFC 9297, WebTransport draft-02) identifiers.
_CONTROL_STREAM = 0x00
_SETTINGS_FRAME = 0x04
ENABLE_CONNECT_PROTOCOL = 0x08
H3_DATAGRAM = 0x33
ENABLE_WEBTRANSPORT = 0x2B603742


# ---- bytes by hand --------------------------------------------------------------------------------


def quic_varint(data: bytes, at: int) -> tuple[int, int]:
    """A QUIC variable-length integer (RFC 9000 16) at ``at``: its value and where it ends."""
    size = 1 << (data[at] >> 6)
    if at + size > len(data):
        raise IndexError("truncated QUIC varint")
    value = data[at] & 0x3F
    for byte in data[at + 1 : at + size]:
        value = (value << 8) | byte
    return value, at + size


def settings_frame(control: bytes) -> dict[int, int] | None:
    """The SETTINGS of a peer's HTTP/3 control stream (type 0x00, then SETTINGS first), or None
    while its bytes are not all there yet."""
    try:
        stream_type, at = quic_varint(control, 0)
        assert stream_type == _CONTROL_STREAM
        frame_type, at = quic_varint(control, at)
        assert frame_type == _SETTINGS_FRAME, "the control stream must start with SETTINGS"
        length, at = quic_varint(control, at)
        if at + length > len(control):
            return None
        settings: dict[int, int] = {}
        end = at + length
        while at < end:
            key, at = quic_varint(control, at)
            settings[key], at = quic_varint(control, at)
        return settings
    except IndexError:
        return None


# ---- HTTP/3 SETTINGS --------------------------------------------------------------------------------


class ControlStreamReader(QuicConnectionProtocol):
    """A QUIC connection with ALPN h3 and no HTTP/3 layer: it keeps the raw bytes of the
    gateway's unidirectional streams, where its control stream and SETTINGS are."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.uni: dict[int, bytearray] = {}
        self.changed = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 3:  # server uni
            self.uni.setdefault(event.stream_id, bytearray()).extend(event.data)
            self.changed.set()

    async def settings(self) -> dict[int, int]:
        """The gateway's SETTINGS, read off the wire."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            for data in self.uni.values():
                if data[:1] == bytes([_CONTROL_STREAM]) and (found := settings_frame(bytes(data))):
                    return found
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        raise AssertionError(f"no SETTINGS from the gateway; its streams: {self.uni}")


async def read_settings(host: str, port: int, ca_file: Path) -> dict[int, int]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    configuration.verify_mode = ssl.CERT_REQUIRED
    configuration.load_verify_locations(str(ca_file))
    async with quic_connect(
        host, port, configuration=configuration, create_protocol=ControlStreamReader
    ) as client:
        assert isinstance(client, ControlStreamReader)
        return await client.settings()


def assert_webtransport_settings(settings: dict[int, int], engine_name: str) -> None:
    # RFC 9220 3: a server must send SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 before a client may
    # send an extended CONNECT; WebTransport also needs H3 datagrams and its own setting.
    wanted = {ENABLE_CONNECT_PROTOCOL: 1, H3_DATAGRAM: 1, ENABLE_WEBTRANSPORT: 1}
    got = {key: settings.get(key) for key in wanted}
    assert got == wanted, f"a gateway on {engine_name} sent SETTINGS {settings}"


async def test_the_gateway_settings_allow_extended_connect_on_both_engines(
    gateway: GatewayServer, certs: CertPaths
) -> None:
    host, port = gateway.address
    assert_webtransport_settings(await read_settings(host, port, certs.ca_cert), engine.ENGINE)
    with gateway_process(bench_config(), certs=certs, engine=OTHER) as other:
        settings = await read_settings("127.0.0.1", other.port, certs.ca_cert)
    assert_webtransport_settings(settings, OTHER)


# ---- frames a careless client sends ----------------------------------------------------------


async def next_error(client: WtClient, session: WtSession) -> f.Error:
    frame = await client.next_frame(session, TIMEOUT_S)
    assert isinstance(frame, f.Error), frame
    return frame


async def still_answers(client: WtClient, session: WtSession, nonce: int) -> None:
    client.raw(session.frame_stream, client_frame(PING, pb_int(1, nonce)))
    assert await client.next_frame(session, TIMEOUT_S) == f.Pong(nonce)


async def welcomed(client: WtClient, hello: f.Hello | None = None) -> WtSession:
    session = client.open_session(hello)
    frame = await client.next_frame(session, TIMEOUT_S)
    assert isinstance(frame, f.Welcome), frame
    return session


async def test_clocks_naming_shard_0_are_refused_with_the_request_id(
    gateway: GatewayServer, ca_file: Path
) -> None:
    """No room has a shard 0 (ids start at 1): a clock naming it is BAD_VECTOR_CLOCK, in a
    Publish's deps and in a Join's cursor alike, answered with the request's id; the session
    goes on."""
    async with wt_connect(gateway.address, ca_file) as client:
        session = await welcomed(client)
        client.raw(session.frame_stream, client_frame(JOIN, pb_int(1, 1) + pb_bytes(2, "zero")))
        assert isinstance(await client.next_frame(session, TIMEOUT_S), f.Joined)
        publish = (
            pb_int(1, 7) + pb_bytes(2, "zero") + pb_bytes(4, b"x") + pb_bytes(6, clock([0], [1]))
        )
        client.raw(session.frame_stream, client_frame(PUBLISH, publish))
        error = await next_error(client, session)
        assert (error.code, error.request_id, error.fatal) == (
            ErrorCode.BAD_VECTOR_CLOCK,
            7,
            False,
        )
        cursor = pb_bytes(2, clock([0], [3]))
        join = pb_int(1, 8) + pb_bytes(2, "zero") + pb_bytes(3, cursor)
        client.raw(session.frame_stream, client_frame(JOIN, join))
        error = await next_error(client, session)
        assert (error.code, error.request_id, error.fatal) == (
            ErrorCode.BAD_VECTOR_CLOCK,
            8,
            False,
        )
        await still_answers(client, session, 99)


async def test_validation_errors_carry_the_request_id(
    gateway: GatewayServer, ca_file: Path
) -> None:
    """Errors found while decoding and validating a request name it (docs/protocol.md 4.4):
    a client can match every one to what it sent."""
    bad_requests = {
        11: (JOIN, pb_int(1, 11) + pb_bytes(2, "no spaces allowed"), ErrorCode.INVALID_ARGUMENT),
        12: (
            PUBLISH,
            pb_int(1, 12) + pb_bytes(2, "lobby") + pb_int(5, 7),  # priority 7
            ErrorCode.INVALID_ARGUMENT,
        ),
        13: (
            PUBLISH,
            pb_int(1, 13) + pb_bytes(2, "lobby") + pb_bytes(3, "m" * 65),
            ErrorCode.INVALID_ARGUMENT,
        ),
        14: (
            PUBLISH,
            pb_int(1, 14) + pb_bytes(2, "lobby") + pb_bytes(6, clock([1, 2], [1])),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        15: (
            PUBLISH,
            pb_int(1, 15) + pb_bytes(2, "lobby") + pb_bytes(6, clock([1], [0])),
            ErrorCode.BAD_VECTOR_CLOCK,
        ),
        16: (
            FETCH,
            pb_int(1, 16) + pb_bytes(2, "lobby") + pb_int(3, 1) + pb_int(4, 9) + pb_int(5, 3),
            ErrorCode.OUT_OF_RANGE,
        ),
    }
    async with wt_connect(gateway.address, ca_file) as client:
        session = await welcomed(client)
        for request_id, (kind, body, code) in bad_requests.items():
            client.raw(session.frame_stream, client_frame(kind, body))
            error = await next_error(client, session)
            assert (error.request_id, error.code, error.fatal) == (request_id, code, False)
        await still_answers(client, session, 5)


# ---- tokens ---------------------------------------------------------------------------------------


@pytest.fixture
async def big_tokens(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    """A jwt gateway that takes tokens of up to 16 KiB."""
    auth = AuthConfig(hs256_secrets=(SECRET,), dev_secret_file=None, max_token_bytes=16384)
    server = GatewayServer(server_config(certs, auth=auth))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def long_token(pattern_chars: int) -> str:
    """A valid token made long by 2 x 256 room patterns of about ``pattern_chars`` each."""
    rooms = [f"{i:04d}".rjust(pattern_chars, "r") for i in range(256)]
    return mint(sub="big", join=rooms, publish=rooms, ttl_s=600, now=time.time(), secret=SECRET)


async def test_an_oversized_token_is_unauthenticated_and_fatal(
    big_tokens: GatewayServer, ca_file: Path
) -> None:
    """A token over ``auth.max_token_bytes`` gets one answer, whatever its size: a fatal
    UNAUTHENTICATED (a violation), and the gateway ends the session. A token within the limit,
    even one over 8192 characters, is verified as usual."""
    fits = long_token(9)  # about 9,000 characters
    too_big = long_token(24)  # about 18,500
    assert 8192 < len(fits) <= 16384 < len(too_big)
    async with wt_connect(big_tokens.address, ca_file) as client:
        session = client.open_session(f.Hello(token=too_big))
        error = await next_error(client, session)
        assert (error.code, error.request_id, error.fatal) == (ErrorCode.UNAUTHENTICATED, 0, True)
        await asyncio.wait_for(session.ended_by_gateway.wait(), TIMEOUT_S)

        session = await welcomed(client, f.Hello(token=fits))
        await still_answers(client, session, 1)


# ---- packets of connections the gateway does not have ----------------------------------------


async def test_packets_for_connections_the_gateway_does_not_have_are_dropped_quietly(
    gateway: GatewayServer, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a restart, clients' packets of their old connections keep arriving: short headers
    (1-RTT) and late long headers (Handshake, 0-RTT) for connection ids the gateway never
    issued. They are dropped without a word (no traceback, no error), and the gateway serves on."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    host, port = gateway.address
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(host, port)
    )
    try:
        with caplog.at_level("WARNING"):
            for i in range(50):
                dcid = i.to_bytes(8, "big")
                transport.sendto(bytes([0x40 | (i & 0x3)]) + dcid + bytes(60 + i))  # 1-RTT
                # Handshake (0xe0) and 0-RTT (0xd0) long headers, QUIC v1, unknown ids.
                for first in (0xE0, 0xD0):
                    header = bytes([first]) + (1).to_bytes(4, "big") + b"\x08" + dcid + b"\x08"
                    transport.sendto(header + dcid + b"\x40\x40" + bytes(64))
            async with wt_connect(gateway.address, ca_file) as client:
                session = await welcomed(client)
                await still_answers(client, session, 3)
    finally:
        transport.close()
        loop.set_exception_handler(None)
    assert not unhandled, unhandled
    assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
