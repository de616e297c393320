"""The Skein client SDK. Its public face is this package::

    from gateway.sdk import ClientConfig, connect

    async with connect("https://127.0.0.1:4433/v1/chat", name="alice", ca_file="certs/ca.pem") as c:
        await c.join("lobby")
        await c.publish("lobby", b"hello")
        async for event in c.messages():
            print(event.message.sender, event.message.body)

Every name in ``__all__`` is supported; the modules under it (``client``, ``session``,
``reconcile``, ``liveness``, ``publish``, ``http``) may change. The names are loaded on first
use (PEP 562), so ``import gateway.sdk`` imports no QUIC engine: ``SKEIN_QUIC_ENGINE`` may still
be set after it, and the sans-IO modules (``gateway.sdk.session``) import no networking at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.errors import (
        ConnectionLost,
        ErrorCode,
        GatewayError,
        LocalProtocolError,
        RemoteProtocolError,
        ServerError,
    )
    from gateway.sdk.client import Client, ClientConfig, ClientStats, connect
    from gateway.sdk.publish import PendingPublish, PublishTimeout, PublishWithdrawn
    from gateway.sdk.session import (
        ChatterLostEvent,
        ClientSession,
        MessageEvent,
        MissedEvent,
        RoomResetEvent,
        SessionEvent,
        ShardMapEvent,
        SkippedEvent,
    )
    from gateway.wire.frames import Message, Priority

__all__ = [
    "ChatterLostEvent",
    "Client",
    "ClientConfig",
    "ClientSession",
    "ClientStats",
    "ConnectionLost",
    "ErrorCode",
    "GatewayError",
    "LocalProtocolError",
    "Message",
    "MessageEvent",
    "MissedEvent",
    "PendingPublish",
    "Priority",
    "PublishTimeout",
    "PublishWithdrawn",
    "RemoteProtocolError",
    "RoomResetEvent",
    "ServerError",
    "SessionEvent",
    "ShardMapEvent",
    "SkippedEvent",
    "connect",
]

# Where each public name lives. tests/test_packaging.py checks this covers __all__ exactly.
_HOMES = {
    "Client": "gateway.sdk.client",
    "ClientConfig": "gateway.sdk.client",
    "ClientStats": "gateway.sdk.client",
    "connect": "gateway.sdk.client",
    "ClientSession": "gateway.sdk.session",
    "SessionEvent": "gateway.sdk.session",
    "MessageEvent": "gateway.sdk.session",
    "ShardMapEvent": "gateway.sdk.session",
    "SkippedEvent": "gateway.sdk.session",
    "ChatterLostEvent": "gateway.sdk.session",
    "MissedEvent": "gateway.sdk.session",
    "RoomResetEvent": "gateway.sdk.session",
    "PendingPublish": "gateway.sdk.publish",
    "PublishTimeout": "gateway.sdk.publish",
    "PublishWithdrawn": "gateway.sdk.publish",
    "ConnectionLost": "gateway.errors",
    "ErrorCode": "gateway.errors",
    "GatewayError": "gateway.errors",
    "LocalProtocolError": "gateway.errors",
    "RemoteProtocolError": "gateway.errors",
    "ServerError": "gateway.errors",
    "Message": "gateway.wire.frames",
    "Priority": "gateway.wire.frames",
}


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use and keep it here. Raises AttributeError
    for any other name, as a module does."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
