"""Plain HTTP/3 requests to the gateway (everything that is not a WebTransport session).

- ``GET /v1/rooms``: the rooms this gateway holds: every live room, and the group rooms the
  request's Bearer token may join (a group room's name, ``dm-alice-bob``, may say who talks to
  whom); all of them on a gateway in insecure development mode.
- ``GET /v1/rooms/{room}``: a room's shard map and velocities (404 for a group room the token may
  not join, as for a room that does not exist).
- ``GET /v1/rooms/{room}/messages?after=<cursor>&limit=N``: stored (reliable) messages after a
  cursor (``shard:seq,shard:seq``; empty for the start), in the order they were stored, at most
  N (1..1000), and no more than ``MAX_PAGE_BYTES`` of message bodies (at least one message):
  fetch again from the next cursor. Protobuf (a ServerFrame with a Deliver) unless
  ``Accept: application/json``; the next cursor is in the ``skein-next-cursor`` header (and in
  the JSON body). Each QUIC connection may ask for pages at ``history_rate_per_connection_per_s``
  (burst ``history_burst_per_connection``), one at a time, and not while it has
  ``send_budget_bytes`` or more unread: otherwise 429 with ``retry-after``
  (:class:`ConnectionBudget`).

Routing is a table of (method, pattern) -> handler; a handler may answer later (an awaitable).
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from gateway.core.auth import Principal
from gateway.core.limits import LimitsConfig, TokenBucket
from gateway.errors import GatewayError
from gateway.store.base import next_cursor
from gateway.wire.codec import encode_server_frame
from gateway.wire.frames import Deliver

if TYPE_CHECKING:
    from gateway.server.app import GatewayServer

__all__ = [
    "MAX_PAGE_BYTES",
    "ConnectionBudget",
    "Request",
    "Response",
    "format_cursor",
    "handle_request",
    "parse_cursor",
]

MAX_PAGE_BYTES = 1 << 20  # message bodies per history page; the page's cursor says where to go on
_MESSAGE_OVERHEAD = 64  # a message's envelope, roughly, counted with its body


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


Answer = Response | Awaitable[Response]
Handler = Callable[["GatewayServer", re.Match[str], "Request"], Answer]


class ConnectionBudget:
    """What one QUIC connection may ask of the history endpoint: pages at a rate, one at a time,
    and none while what it was already sent (on any stream) is ``budget_bytes`` or more unread."""

    def __init__(self, limits: LimitsConfig, budget_bytes: int, unread: Callable[[], int]) -> None:
        self._bucket = TokenBucket(
            limits.history_rate_per_connection_per_s, limits.history_burst_per_connection
        )
        self._budget = budget_bytes
        self._unread = unread
        self.reading = False  # a page is being read for this connection

    def refusal(self, now: float) -> Response | None:
        """None if a page may be read now (the caller then sets ``reading`` until it is sent),
        else the 429 to answer with."""
        if not self._bucket.take(now):
            wait = self._bucket.retry_after_s(now)
            return _too_many("too many history requests on this connection", wait)
        if self.reading:
            return _too_many("one history page at a time per connection", 0.1)
        unread = self._unread()
        if unread >= self._budget:
            return _too_many(
                f"{unread} bytes sent to this connection are unread (budget {self._budget})", 0.5
            )
        return None


@dataclass(frozen=True, slots=True)
class Request:
    """What handlers see of a request: its query string and the headers that matter, and its
    connection's allowance (None: unlimited, for tests)."""

    query: str = ""
    accept: str = ""
    authorization: str = ""
    budget: ConnectionBudget | None = None


def _json(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(value, sort_keys=True).encode()
    return Response(status, "application/json", body, headers)


def _too_many(reason: str, wait_s: float) -> Response:
    wait = max(1, math.ceil(wait_s)) if math.isfinite(wait_s) else 60
    return _json(429, {"error": f"{reason}: retry later"}, (("retry-after", str(wait)),))


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


def _bearer(gateway: GatewayServer, request: Request) -> Principal | GatewayError | None:
    """The request's Bearer token checked: its principal, the error that refused it, or None on
    a gateway in insecure development mode (no tokens)."""
    if gateway.authenticator is None:
        return None
    token = request.authorization.removeprefix("Bearer ").strip()
    try:
        return gateway.authenticator.authenticate(token, time.time())
    except GatewayError as exc:
        return exc


def _may_see(gateway: GatewayServer, request: Request, name: str, mode: str) -> bool:
    """Live rooms are listed to anyone; a group room (direct messages, private groups: its name
    alone may say who talks to whom) only to a token that may join it, or with no tokens at
    all (insecure development mode)."""
    if mode != "group":
        return True
    principal = _bearer(gateway, request)
    return principal is None or (isinstance(principal, Principal) and principal.may_join(name))


def _rooms(gateway: GatewayServer, match: re.Match[str], request: Request) -> Answer:
    hub = gateway.hub
    names = hub.room_names(mode="live")
    principal = _bearer(gateway, request)
    groups = hub.room_names(mode="group")
    if principal is None:
        names += groups
    elif isinstance(principal, Principal):
        names += [name for name in groups if principal.may_join(name)]
    return _json(200, {"rooms": sorted(names)})


def _room(gateway: GatewayServer, match: re.Match[str], request: Request) -> Answer:
    name = unquote(match["room"])
    info = gateway.hub.room_info(name, gateway.now())
    if info is None or not _may_see(gateway, request, name, info.mode):
        # the same answer for a hidden room as for none: its existence is not told
        return _json(404, {"error": f"no room {name!r} on this gateway"})
    value = asdict(info)
    value["velocities"] = {str(k): round(v, 3) for k, v in info.velocities.items()}
    value["shards"] = {str(k): v for k, v in info.shards.items()}
    return _json(200, value)


def _history(gateway: GatewayServer, match: re.Match[str], request: Request) -> Answer:
    """Stored messages are readable by whoever may join the room (a Bearer token), or by anyone
    on a gateway in insecure development mode."""
    name = unquote(match["room"])
    if request.budget is not None:  # first: refusals are cheap, a token check is not
        refused = request.budget.refusal(gateway.now())
        if refused is not None:
            return refused
    principal = _bearer(gateway, request)
    if isinstance(principal, GatewayError):
        return _json(401, {"error": f"{principal.message} (send Authorization: Bearer <jwt>)"})
    if principal is not None and not principal.may_join(name):
        return _json(403, {"error": f"your token does not allow reading {name!r}"})
    params = parse_qs(request.query)
    try:
        after = parse_cursor(params.get("after", [""])[0])
        limit = int(params.get("limit", ["100"])[0])
    except ValueError as exc:
        return _json(400, {"error": str(exc)})
    if not 1 <= limit <= 1000:
        return _json(400, {"error": "limit must be 1..1000"})
    as_json = "application/json" in request.accept
    if request.budget is None:
        return _history_page(gateway, name, after, limit, as_json)
    request.budget.reading = True  # now: the next request may come before this one runs
    return _counted(request.budget, _history_page(gateway, name, after, limit, as_json))


async def _counted(budget: ConnectionBudget, page: Awaitable[Response]) -> Response:
    try:
        return await page
    finally:
        budget.reading = False


async def _history_page(
    gateway: GatewayServer, name: str, after: dict[int, int], limit: int, as_json: bool
) -> Response:
    page = await gateway.durability.history(name, after, limit)
    stored = page["messages"]
    size = 0
    for i, m in enumerate(stored):  # cut at MAX_PAGE_BYTES: the cursor then follows the cut
        size += len(m.body) + _MESSAGE_OVERHEAD
        if size > MAX_PAGE_BYTES and i:
            stored = stored[:i]
            page = {"messages": stored, "next": next_cursor(after, stored)}
            break
    cursor = format_cursor(page["next"])
    messages = [m.to_message() for m in stored]
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
    gateway: GatewayServer,
    method: str,
    path: str,
    accept: str = "",
    authorization: str = "",
    *,
    budget: ConnectionBudget | None = None,
) -> Answer:
    """Answer one request, now or later. Unknown paths get 404, other methods 405. ``budget``
    is the asking connection's allowance for history pages."""
    bare, _, query = path.partition("?")
    request = Request(query, accept, authorization, budget)
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
