"""Fan-out: a room's ready messages become Sends, encoded once per batch for every subscriber.

The common case (:func:`fan_out_shared`) encodes each batch once, and compresses it with lz4 at
most once, for every subscriber; a connection over its send budget gets its own batches with
tombstones in place of what is shed (:func:`fan_out_shedding`). Sans-IO: the Sends are appended
to the caller's output list.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.core.batching import MAX_BATCH_BYTES, batches, plan_shedding
from gateway.core.config import CoreConfig
from gateway.core.outputs import Output, Send
from gateway.core.session import Session
from gateway.core.shard import Entry
from gateway.core.stats import HubStats
from gateway.wire import frames as f
from gateway.wire.codec import deliver_frame, deliver_lz4_frame, encode_deliver, encode_tombstone
from gateway.wire.framing import delimit

__all__ = ["PRIORITY_NAMES", "fan_out_shared", "fan_out_shedding"]

PRIORITY_NAMES = {p: p.name.lower() for p in f.Priority}  # stats keys, named once


def fan_out_shared(
    room: str,
    pending: list[bytes],
    conn_ids: tuple[int, ...],
    sessions: Mapping[int, Session],
    config: CoreConfig,
    stats: HubStats,
    out: list[Output],
) -> None:
    """The common case: one encoding (and at most one lz4 compression) for everyone."""
    groups: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (plain, lz4), made once
    for batch in batches(pending, MAX_BATCH_BYTES):
        deliver = encode_deliver(room, batch)
        stats.batches += 1
        stats.batch_messages += len(batch)
        stats.batch_size_messages.observe(len(batch))
        if len(deliver) < config.lz4_min_bytes:
            _send_all(conn_ids, delimit(deliver_frame(deliver)), stats, out)
            continue
        if groups is None:
            groups = (
                tuple(c for c in conn_ids if not sessions[c].lz4),
                tuple(c for c in conn_ids if sessions[c].lz4),
            )
        plain_ids, lz4_ids = groups
        if plain_ids:
            _send_all(plain_ids, delimit(deliver_frame(deliver)), stats, out)
        if lz4_ids:
            packed = delimit(deliver_lz4_frame(deliver))
            stats.lz4_in += len(deliver)
            stats.lz4_out += len(packed)
            _send_all(lz4_ids, packed, stats, out)


def fan_out_shedding(
    room: str,
    ready: list[Entry],
    session: Session,
    config: CoreConfig,
    stats: HubStats,
    out: list[Output],
) -> None:
    """A connection over budget gets tombstones for what is shed: chatter over the budget,
    normal too over twice it, high never (see :func:`plan_shedding`)."""
    keep = plan_shedding(
        [e.message.priority for e in ready], session.backlog, config.send_budget_bytes
    )
    items = []
    for entry, kept in zip(ready, keep, strict=True):
        m = entry.message
        if kept:
            items.append(entry.encoded)
            stats.delivered[PRIORITY_NAMES[m.priority]] += 1
        else:
            items.append(encode_tombstone(m.shard, m.seq))
            session.shed += 1
            stats.shed[PRIORITY_NAMES[m.priority]] += 1
    stats.deliveries += sum(keep)
    for batch in batches(items, MAX_BATCH_BYTES):
        data = delimit(deliver_frame(encode_deliver(room, batch, session.shed)))
        session.shed = 0
        _send_all((session.conn_id,), data, stats, out)


def _send_all(conn_ids: tuple[int, ...], data: bytes, stats: HubStats, out: list[Output]) -> None:
    stats.bytes_out += len(data) * len(conn_ids)
    out.append(Send(conn_ids, data))
