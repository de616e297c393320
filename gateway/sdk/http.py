"""A minimal HTTP/3 GET for the gateway's JSON endpoints (``skein rooms``, ``skein top``)."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any, cast
from urllib.parse import SplitResult, urlsplit

from gateway.engine import (
    ENGINE_ERRORS,
    H3_ALPN,
    DataReceived,
    H3Connection,
    HeadersReceived,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    quic_connect,
)
from gateway.errors import ConnectionLost

__all__ = ["get_json"]


class _GetProtocol(QuicConnectionProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.status = 0
        self.body = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.status = int(dict(h3_event.headers).get(b":status", b"0"))
                ended = h3_event.stream_ended
            elif isinstance(h3_event, DataReceived):
                self.body += h3_event.data
                ended = h3_event.stream_ended
            else:
                continue
            if ended and not self.done.done():
                self.done.set_result(None)


async def get_json(
    url: str,
    *,
    ca_file: Path | str | None = None,
    verify: bool = True,
    timeout_s: float = 10.0,
    token: str = "",
) -> tuple[int, Any]:
    """GET ``url`` over HTTP/3 and return (status, decoded JSON body). ``token`` goes as
    ``Authorization: Bearer`` (the history endpoint needs one unless the gateway is insecure).

    ``timeout_s`` bounds the QUIC handshake and, once connected, the answer. Raises
    ConnectionLost (a ConnectionError) if no handshake completes in time or the connection closes
    before the answer, TimeoutError if the answer takes longer; never a QUIC engine's own
    exception."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host)
    if not verify:
        config.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        config.load_verify_locations(str(ca_file))
    connection = quic_connect(host, port, configuration=config, create_protocol=_GetProtocol)
    try:
        try:
            proto = await asyncio.wait_for(connection.__aenter__(), timeout_s)
        except TimeoutError as exc:
            raise ConnectionLost(
                f"GET {url}: no QUIC handshake within {timeout_s:g} s: is the gateway running "
                "there, and does UDP reach it?"
            ) from exc
        try:
            return await _request(
                cast(_GetProtocol, proto), parts, f"{host}:{port}", token, timeout_s
            )
        finally:
            await connection.__aexit__(None, None, None)
    except ENGINE_ERRORS as exc:
        if isinstance(exc, ConnectionLost):
            raise
        raise ConnectionLost(f"GET {url}: the connection failed or closed ({exc})") from exc


async def _request(
    protocol: _GetProtocol, parts: SplitResult, authority: str, token: str, timeout_s: float
) -> tuple[int, Any]:
    stream_id = protocol._quic.get_next_available_stream_id()
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    protocol.h3.send_headers(
        stream_id,
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"accept", b"application/json"),
            *([(b"authorization", f"Bearer {token}".encode())] if token else []),
        ],
        end_stream=True,
    )
    protocol.transmit()
    await asyncio.wait_for(protocol.done, timeout_s)
    return protocol.status, json.loads(bytes(protocol.body) or b"null")
