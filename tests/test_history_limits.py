"""The history endpoint's per-connection limits (issue 21 item 3): a request rate, one page at a
time, none while the connection has a budget's worth unread, and pages cut at MAX_PAGE_BYTES with
a cursor that goes on from the cut. Driven without QUIC: a stand-in gateway and store."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from gateway.core.limits import LimitsConfig
from gateway.server import http
from gateway.store.base import next_cursor
from gateway.store.records import StoredMessage
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame

LIMITS = dataclasses.replace(
    LimitsConfig(), history_rate_per_connection_per_s=1.0, history_burst_per_connection=3.0
)


class Store:
    """Stands in for the server's Durability: ``history`` reads a list of stored messages."""

    def __init__(self, messages: list[StoredMessage]) -> None:
        self.messages = messages

    async def history(self, room: str, after: dict[int, int], limit: int) -> dict[str, Any]:
        page = [m for m in self.messages if m.seq > after.get(m.shard, 0)][:limit]
        return {"messages": page, "next": next_cursor(after, page)}


class Gateway:
    authenticator = None

    def __init__(self, messages: list[StoredMessage]) -> None:
        self.durability = Store(messages)
        self.clock = 0.0

    def now(self) -> float:
        return self.clock


def stored(count: int, body_bytes: int) -> list[StoredMessage]:
    return [
        StoredMessage.from_message(
            "r", f.Message(1, seq, {}, "alice", f"m{seq}", f.Priority.HIGH, b"x" * body_bytes), 0
        )
        for seq in range(1, count + 1)
    ]


def answer(gateway: Gateway, budget: http.ConnectionBudget, after: str = "") -> http.Response:
    result = http.handle_request(
        gateway,  # type: ignore[arg-type]
        "GET",
        f"/v1/rooms/r/messages?limit=1000&after={after}",
        budget=budget,
    )
    if isinstance(result, http.Response):
        return result
    return asyncio.run(_wait(result))


async def _wait(result: Any) -> http.Response:
    response: http.Response = await result
    return response


def test_a_connection_gets_its_burst_then_429_with_retry_after() -> None:
    gateway = Gateway(stored(3, 10))
    budget = http.ConnectionBudget(LIMITS, 64 * 1024, lambda: 0)
    statuses = [answer(gateway, budget).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = answer(gateway, budget)
    assert dict(refused.headers)["retry-after"] == "1"
    gateway.clock = 1.0  # a token a second
    assert answer(gateway, budget).status == 200


def test_no_page_while_one_is_being_read_or_the_connection_has_a_budget_unread() -> None:
    gateway = Gateway(stored(3, 10))
    unread = [0]
    roomy = dataclasses.replace(LIMITS, history_burst_per_connection=100.0)
    budget = http.ConnectionBudget(roomy, 1000, lambda: unread[0])
    first = http.handle_request(gateway, "GET", "/v1/rooms/r/messages", budget=budget)  # type: ignore[arg-type]
    assert not isinstance(first, http.Response)  # being read
    assert answer(gateway, budget).status == 429  # one at a time
    asyncio.run(_wait(first))
    unread[0] = 1000
    assert answer(gateway, budget).status == 429  # a budget's worth unread
    unread[0] = 999
    assert answer(gateway, budget).status == 200


def test_pages_stop_at_max_page_bytes_and_the_cursor_goes_on_from_there() -> None:
    gateway = Gateway(stored(40, 100_000))  # 4 MB of bodies
    budget = http.ConnectionBudget(
        dataclasses.replace(LIMITS, history_burst_per_connection=100.0), 1 << 30, lambda: 0
    )
    seqs: list[int] = []
    after = ""
    for _ in range(10):
        response = answer(gateway, budget, after)
        assert response.status == 200 and len(response.body) <= http.MAX_PAGE_BYTES + 100_000
        deliver = decode_server_frame(response.body)
        assert isinstance(deliver, f.Deliver)
        if not deliver.messages:
            break
        seqs += [m.seq for m in deliver.messages]
        after = dict(response.headers)["skein-next-cursor"]
    assert seqs == list(range(1, 41))  # every message once, in order, over several pages
