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
from gateway.core.outputs import Output, Send, SendDatagram
from gateway.core.room import Room, RoomMode
from gateway.core.session import Session
from gateway.core.shard import Entry
from gateway.core.stats import HubStats
from gateway.wire import frames as f
from gateway.wire.codec import deliver_frame, deliver_lz4_frame, encode_deliver, encode_tombstone
from gateway.wire.framing import delimit

__all__ = ["PRIORITY_NAMES", "fan_out_room", "fan_out_shared", "fan_out_shedding"]

PRIORITY_NAMES = {p: p.name.lower() for p in f.Priority}  # stats keys, named once
# In a datagram (at most 1100 bytes), a ServerFrame{deliver} field costs its tag and a length of
# up to 2 bytes around the Deliver, and so does each message field inside the Deliver.
_FRAME_OVERHEAD = _FIELD_OVERHEAD = 3


def fan_out_room(
    room: Room,
    ready: list[Entry],
    arrived: list[float],
    now: float,
    congested: Mapping[int, float],
    sessions: Mapping[int, Session],
    config: CoreConfig,
    stats: HubStats,
    out: list[Output],
) -> None:
    """A room's ``ready`` messages (taken from it, which arrived at ``arrived``) to every
    subscriber: shared batches for those keeping up, in an order that rotates from batch to
    batch, then each ``congested`` connection its own, shedding. Feeds the sharder's velocity."""
    counts: dict[int, int] = {}
    priorities: dict[f.Priority, int] = {}
    for entry in ready:
        m = entry.message
        counts[m.shard] = counts.get(m.shard, 0) + 1
        priorities[m.priority] = priorities.get(m.priority, 0) + 1
    for shard_id, count in counts.items():
        room.policy.observe(shard_id, count, now)
    if not ready:
        return
    room.fanned_out_at = now
    if not room.subscribers:
        return
    everyone = room.fan_out_order()
    behind = [c for c in everyone if c in congested] if congested else []
    served = tuple(c for c in everyone if c not in congested) if behind else everyone
    stats.deliveries += len(ready) * len(served)
    for priority, count in priorities.items():
        stats.delivered[PRIORITY_NAMES[priority]] += count * len(served)
    for at in arrived:
        stats.fanout_wait_seconds.observe(now - at)
    if served:
        live = room.mode is RoomMode.LIVE
        fan_out_shared(room.name, ready, served, sessions, config, stats, out, live=live)
    for conn_id in behind:
        fan_out_shedding(room.name, ready, sessions[conn_id], config, stats, out)


def fan_out_shared(
    room: str,
    ready: list[Entry],
    conn_ids: tuple[int, ...],
    sessions: Mapping[int, Session],
    config: CoreConfig,
    stats: HubStats,
    out: list[Output],
    *,
    live: bool = False,
) -> None:
    """The common case: one encoding (and at most one lz4 compression) for everyone.

    In a ``live`` room, the sessions that negotiated datagrams get the batch's chatter as
    datagrams, sent first, and the rest on the stream: a lost packet then delays only the chatter
    in it, and their clients pass over lost chatter (``Message.chatter_before``).
    """
    chatter = (
        [e.encoded for e in ready if e.message.priority is f.Priority.CHATTER]
        if live and config.chatter_datagram_bytes
        else None
    )
    if chatter:  # the subscribers are looked at only for batches with chatter
        by_datagram = tuple(c for c in conn_ids if sessions[c].datagrams)
        if by_datagram:
            conn_ids = tuple(c for c in conn_ids if not sessions[c].datagrams)
            too_big = _send_datagrams(room, chatter, by_datagram, sessions, config, stats, out)
            rest = [
                e.encoded
                for e in ready
                if e.message.priority is not f.Priority.CHATTER or e.encoded in too_big
            ]
            if rest:
                _send_stream(room, rest, by_datagram, sessions, config, stats, out)
    if conn_ids:
        _send_stream(room, [e.encoded for e in ready], conn_ids, sessions, config, stats, out)


def _send_stream(
    room: str,
    pending: list[bytes],
    conn_ids: tuple[int, ...],
    sessions: Mapping[int, Session],
    config: CoreConfig,
    stats: HubStats,
    out: list[Output],
) -> None:
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
            groups = _by_lz4(conn_ids, sessions)
        plain_ids, lz4_ids = groups
        if plain_ids:
            _send_all(plain_ids, delimit(deliver_frame(deliver)), stats, out)
        if lz4_ids:
            packed = delimit(deliver_lz4_frame(deliver))
            stats.lz4_in += len(deliver)
            stats.lz4_out += len(packed)
            _send_all(lz4_ids, packed, stats, out)


def _send_datagrams(
    room: str,
    chatter: list[bytes],
    conn_ids: tuple[int, ...],
    sessions: Mapping[int, Session],
    config: CoreConfig,
    stats: HubStats,
    out: list[Output],
) -> set[bytes]:
    """Chatter as datagrams of at most ``chatter_datagram_bytes``; returns the messages too big
    for a datagram on their own (they take the stream)."""
    limit = config.chatter_datagram_bytes
    room_bytes = len(encode_deliver(room, ())) + _FRAME_OVERHEAD
    too_big: set[bytes] = set()
    plain_ids, lz4_ids = _by_lz4(conn_ids, sessions)
    for batch in batches(chatter, limit - room_bytes, overhead=_FIELD_OVERHEAD):
        deliver = encode_deliver(room, batch)
        plain = deliver_frame(deliver)
        if len(plain) > limit:  # one message alone, over the limit
            too_big.update(batch)
            continue
        stats.datagram_batches += 1
        stats.datagram_messages += len(batch)
        packed = None
        if lz4_ids and len(deliver) >= config.lz4_min_bytes:
            packed = deliver_lz4_frame(deliver)
            if len(packed) >= len(plain):  # incompressible: lz4 would only add its header
                packed = None
        if packed is None:
            _send_all_datagrams(conn_ids, plain, stats, out)
            continue
        stats.lz4_in += len(deliver)
        stats.lz4_out += len(packed)
        if plain_ids:
            _send_all_datagrams(plain_ids, plain, stats, out)
        _send_all_datagrams(lz4_ids, packed, stats, out)
    return too_big


def _by_lz4(
    conn_ids: tuple[int, ...], sessions: Mapping[int, Session]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``conn_ids`` split into (plain, lz4) by what each session negotiated."""
    return (
        tuple(c for c in conn_ids if not sessions[c].lz4),
        tuple(c for c in conn_ids if sessions[c].lz4),
    )


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


def _send_all_datagrams(
    conn_ids: tuple[int, ...], payload: bytes, stats: HubStats, out: list[Output]
) -> None:
    stats.bytes_out += len(payload) * len(conn_ids)
    out.append(SendDatagram(conn_ids, payload))
