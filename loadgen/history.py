"""A room's stored history over HTTP/3 (``GET /v1/rooms/{room}/messages``), read page by page.

Two readers need it: a simulated client whose session the gateway ended (a slow consumer cut with
SLOW_CONSUMER) reads what it missed from its last cursor, as an app would; and ``make soak``
checks that every acknowledged reliable message is in the store after a ``kill -9``. The history
holds reliable messages only (high priority, group rooms): chatter is never stored.

Bounds: pages of at most :data:`PAGE_LIMIT` messages, at most ``max_pages`` of them per read.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from gateway.errors import GatewayError
from gateway.sdk.http import get_json
from gateway.server.http import format_cursor
from gateway.wire.frames import Joined, Priority

__all__ = ["MAX_PAGES", "PAGE_LIMIT", "HistoryError", "Stored", "before_join", "read_history"]

PAGE_LIMIT = 1000  # the endpoint's own maximum
MAX_PAGES = 200


class HistoryError(GatewayError):
    """The history endpoint answered with an error status (or something that is not a page)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message: where the gateway sequenced it, its priority and its body."""

    shard: int
    seq: int
    priority: int
    body: bytes


async def read_history(
    base_url: str,
    room: str,
    after: Mapping[int, int],
    *,
    ca_file: Path | str | None = None,
    verify: bool = True,
    token: str = "",
    timeout_s: float = 15.0,
    max_pages: int = MAX_PAGES,
) -> list[Stored]:
    """Every message of ``room`` stored after the cursor ``after`` (shard -> last seq had; absent
    shards from their start), in commit order, from the gateway at ``base_url``
    (``https://host:port``). ``token`` must allow joining the room when the gateway checks tokens.

    Raises :class:`HistoryError` for an error status, TimeoutError when a page takes longer
    than ``timeout_s`` (connecting included), and what :func:`gateway.sdk.http.get_json` raises
    when the gateway cannot be reached. Stops after ``max_pages`` pages.
    """
    out: list[Stored] = []
    cursor = format_cursor(dict(after))
    for _ in range(max_pages):
        url = (
            f"{base_url}/v1/rooms/{quote(room, safe='')}/messages?after={cursor}&limit={PAGE_LIMIT}"
        )
        async with asyncio.timeout(timeout_s):  # get_json bounds the answer, not the handshake
            status, page = await get_json(
                url, ca_file=ca_file, verify=verify, timeout_s=timeout_s, token=token
            )
        if status != 200 or not isinstance(page, dict):
            raise HistoryError(f"history of {room}: HTTP {status}: {page!r}"[:300])
        messages = page.get("messages") or []
        out.extend(_stored(m) for m in messages)
        if len(messages) < PAGE_LIMIT or page.get("next", cursor) == cursor:
            break
        cursor = str(page["next"])
    return out


def _stored(message: Mapping[str, object]) -> Stored:
    priority = Priority[str(message["priority"]).upper()]
    return Stored(
        shard=int(str(message["shard"])),
        seq=int(str(message["seq"])),
        priority=int(priority),
        body=base64.b64decode(str(message["body"])),
    )


def before_join(joined: Joined, stored: Iterable[Stored]) -> list[Stored]:
    """The ``stored`` messages a session that joined with ``joined`` (a fresh join: live from the
    room's frontier) will not be delivered live: on the current shards up to the frontier (which
    counts only messages already fanned out), on the shards of earlier epochs up to their sealed
    seqs, and on shards older than every map kept. Shards newer than the join are left out:
    their messages arrive live."""
    bound = {shard: seq for m in joined.shard_maps for shard, seq in m.sealed.items()}
    bound.update(joined.frontier)
    oldest_current = min(joined.shard_maps[-1].shards) if joined.shard_maps else 0
    out = []
    for message in stored:
        limit = bound.get(message.shard)
        if (limit is None and message.shard < oldest_current) or (
            limit is not None and message.seq <= limit
        ):
            out.append(message)
    return out
