"""Plain HTTP/3 requests to the gateway (everything that is not a WebTransport session).

- ``GET /v1/rooms``: the rooms this gateway holds.
- ``GET /v1/rooms/{room}``: a room's shard map and velocities.

Answers are JSON. Routing is a table of (method, pattern) -> handler.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

if TYPE_CHECKING:
    from gateway.server.app import GatewayServer

__all__ = ["Response", "handle_request"]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes


def _json(status: int, value: Any) -> Response:
    return Response(status, "application/json", json.dumps(value, sort_keys=True).encode())


def _rooms(gateway: GatewayServer, match: re.Match[str], accept: str) -> Response:
    return _json(200, {"rooms": gateway.hub.room_names()})


def _room(gateway: GatewayServer, match: re.Match[str], accept: str) -> Response:
    name = unquote(match["room"])
    info = gateway.hub.room_info(name, gateway.now())
    if info is None:
        return _json(404, {"error": f"no room {name!r} on this gateway"})
    value = asdict(info)
    value["velocities"] = {str(k): round(v, 3) for k, v in info.velocities.items()}
    value["shards"] = {str(k): v for k, v in info.shards.items()}
    return _json(200, value)


_ROUTES: list[
    tuple[str, re.Pattern[str], Callable[[GatewayServer, re.Match[str], str], Response]]
] = [
    ("GET", re.compile(r"/v1/rooms"), _rooms),
    ("GET", re.compile(r"/v1/rooms/(?P<room>[^/?]+)"), _room),
]


def handle_request(gateway: GatewayServer, method: str, path: str, accept: str) -> Response:
    """Answer one request. Unknown paths get 404, known paths with another method 405."""
    bare = path.split("?", 1)[0]
    allowed = False
    for route_method, pattern, handler in _ROUTES:
        match = pattern.fullmatch(bare)
        if match is None:
            continue
        if route_method == method:
            return handler(gateway, match, accept)
        allowed = True
    if allowed:
        return _json(405, {"error": f"{method} is not allowed on {bare}"})
    return _json(404, {"error": f"nothing at {bare}"})
