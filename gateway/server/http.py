"""Plain HTTP/3 requests to the gateway (everything that is not a WebTransport session).

- ``GET /v1/rooms``: the rooms this gateway holds.
- ``GET /v1/rooms/{room}``: a room's shard map and velocities.
- ``GET /v1/rooms/{room}/messages?after=<cursor>&limit=N``: stored (reliable) messages after a
  cursor (``shard:seq,shard:seq``; empty for the start), in the order they were stored, at most
  N (1..1000). Protobuf (a ServerFrame with a Deliver) unless ``Accept: application/json``; the
  next cursor is in the ``skein-next-cursor`` header (and in the JSON body).

Routing is a table of (method, pattern) -> handler; a handler may answer later (an awaitable).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from gateway.errors import GatewayError
from gateway.wire.codec import encode_server_frame
from gateway.wire.frames import Deliver

if TYPE_CHECKING:
    from gateway.server.app import GatewayServer

__all__ = ["Request", "Response", "format_cursor", "handle_request", "parse_cursor"]


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Answer = Response | Awaitable[Response]
Handler = Callable[["GatewayServer", re.Match[str], "Request"], Answer]


@dataclass(frozen=True, slots=True)
class Request:
    """What handlers see of a request: its query string and the headers that matter."""

    query: str = ""
    accept: str = ""
    authorization: str = ""


def _json(status: int, value: Any) -> Response:
    return Response(status, "application/json", json.dumps(value, sort_keys=True).encode())


def parse_cursor(text: str) -> dict[int, int]:
    """``"3:17,4:9"`` -> ``{3: 17, 4: 9}``. Raises ValueError saying what is wrong."""
    cursor: dict[int, int] = {}
    for part in filter(None, text.split(",")):
        shard, _, seq = part.partition(":")
        if not (shard.isdigit() and seq.isdigit()):
            raise ValueError(f"bad cursor entry {part!r}: use shard:seq,shard:seq")
        cursor[int(shard)] = int(seq)
    return cursor


def format_cursor(cursor: dict[int, int]) -> str:
    return ",".join(f"{shard}:{seq}" for shard, seq in sorted(cursor.items()))


def _rooms(gateway: GatewayServer, match: re.Match[str], request: Request) -> Answer:
    return _json(200, {"rooms": gateway.hub.room_names()})


def _room(gateway: GatewayServer, match: re.Match[str], request: Request) -> Answer:
    name = unquote(match["room"])
    info = gateway.hub.room_info(name, gateway.now())
    if info is None:
        return _json(404, {"error": f"no room {name!r} on this gateway"})
    value = asdict(info)
    value["velocities"] = {str(k): round(v, 3) for k, v in info.velocities.items()}
    value["shards"] = {str(k): v for k, v in info.shards.items()}
    return _json(200, value)


def _history(gateway: GatewayServer, match: re.Match[str], request: Request) -> Answer:
    """Stored messages are readable by whoever may join the room (a Bearer token), or by anyone
    on a gateway in insecure development mode."""
    name = unquote(match["room"])
    if gateway.authenticator is not None:
        token = request.authorization.removeprefix("Bearer ").strip()
        try:
            principal = gateway.authenticator.authenticate(token, time.time())
        except GatewayError as exc:
            return _json(401, {"error": f"{exc.message} (send Authorization: Bearer <jwt>)"})
        if not principal.may_join(name):
            return _json(403, {"error": f"your token does not allow reading {name!r}"})
    params = parse_qs(request.query)
    try:
        after = parse_cursor(params.get("after", [""])[0])
        limit = int(params.get("limit", ["100"])[0])
    except ValueError as exc:
        return _json(400, {"error": str(exc)})
    if not 1 <= limit <= 1000:
        return _json(400, {"error": "limit must be 1..1000"})
    return _history_page(gateway, name, after, limit, "application/json" in request.accept)


async def _history_page(
    gateway: GatewayServer, name: str, after: dict[int, int], limit: int, as_json: bool
) -> Response:
    page = await gateway.durability.history(name, after, limit)
    cursor = format_cursor(page["next"])
    messages = [m.to_message() for m in page["messages"]]
    if as_json:
        return _json(
            200,
            {
                "room": name,
                "next": cursor,
                "messages": [
                    {
                        "shard": m.shard,
                        "seq": m.seq,
                        "sender": m.sender,
                        "client_msg_id": m.client_msg_id,
                        "priority": m.priority.name.lower(),
                        "deps": {str(k): v for k, v in m.deps.items()},
                        "body": base64.b64encode(m.body).decode(),
                    }
                    for m in messages
                ],
            },
        )
    body = encode_server_frame(Deliver(name, tuple(messages)))
    return Response(200, "application/x-protobuf", body, (("skein-next-cursor", cursor),))


_ROUTES: list[tuple[str, re.Pattern[str], Handler]] = [
    ("GET", re.compile(r"/v1/rooms"), _rooms),
    ("GET", re.compile(r"/v1/rooms/(?P<room>[^/?]+)"), _room),
    ("GET", re.compile(r"/v1/rooms/(?P<room>[^/?]+)/messages"), _history),
]


def handle_request(
    gateway: GatewayServer, method: str, path: str, accept: str = "", authorization: str = ""
) -> Answer:
    """Answer one request, now or later. Unknown paths get 404, other methods 405."""
    bare, _, query = path.partition("?")
    request = Request(query, accept, authorization)
    allowed = False
    for route_method, pattern, handler in _ROUTES:
        match = pattern.fullmatch(bare)
        if match is None:
            continue
        if route_method == method:
            return handler(gateway, match, request)
        allowed = True
    if allowed:
        return _json(405, {"error": f"{method} is not allowed on {bare}"})
    return _json(404, {"error": f"nothing at {bare}"})
