"""What a restarted gateway resumes from: each stored room, sealed and moved to a fresh epoch.

Chatter is never stored, so after a crash no shard can be trusted to continue its seqs exactly.
Instead nothing is ever renumbered: every shard of a room's last stored epoch is sealed at its
high-water mark (the last seq it is known to have assigned), and the room starts a new epoch with
shard ids above every id it ever used, exactly as a split or merge would. Clients see one more
epoch change; their cursors (same incarnation) stay valid, and the gap between what they hold and
the sealed seqs is what they fetch from history.

Reliable messages are exact: they go out only after they (and a high-water mark at or above their
seq) are stored. Chatter is fanned out without waiting for the store, so clients may have seen
seqs of a shard above the mark it is sealed at; the gateway drops clock entries for sealed shards
unchecked (``Room._own_deps``), and those seqs are simply gone with the crash, as chatter may be.
A shard map may reach clients before its epoch is stored: the gaps below cover that.

Recovery never wedges a room. A room the store holds messages, marks or shard maps of but no
record of (an orphan: left by a gateway from before :meth:`~gateway.store.base.Store.append`
required records, when a room's record write failed on a full disk) is rebuilt: a new record
(a fresh incarnation, so clients start it afresh), a shard map of its stored shards if it has
none, and the usual restart epoch above every shard id and seq the store knows.

A room reclaimed while idle (:mod:`gateway.core.reclaim`) is taken up again the same way, alone,
when a Join names it (:func:`recover_room`): its final marks were recorded when it was reclaimed,
so its shards are sealed exactly where they stopped.

The retry window is read newest first across the whole room (:meth:`Store.read_before
<gateway.store.base.Store.read_before>`), so every publish a running gateway would still recognise
as a retry (the newest ``dedupe_window`` with a client id) is recognised after a restart too.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.errors import LocalProtocolError
from gateway.store.base import MAX_READ_LIMIT, Store, prev_cursor
from gateway.store.records import EpochRecord, RoomRecord

__all__ = [
    "REBUILT_SHARDS_MAX",
    "RESTART_EPOCH_GAP",
    "RESTART_ID_GAP",
    "RecentPublish",
    "RecoveredRoom",
    "rebuild_orphan",
    "recent_publishes",
    "recover",
    "recover_room",
    "restart_epoch",
]

# An unstored epoch is at most one reshard (reshards are cooldown_s apart, commits take ms) with
# at most max_shards new ids; these gaps exceed both with room to spare (clocks allow 1024 entries).
RESTART_EPOCH_GAP = 16
RESTART_ID_GAP = 1024
# An orphan's rebuilt shard map names at most this many of its newest stored shards (a shard map's
# sealed clock is bounded); older shards stay in history (read_after) but can't be fetched by seq.
REBUILT_SHARDS_MAX = 64
# The retry window's read gives up after this many stored messages per window slot: a room whose
# publishes mostly carry no client id does not make a restart read its whole history.
_SCAN_PER_SLOT = 4

log = logging.getLogger("skein.store")


@dataclass(frozen=True, slots=True)
class RecentPublish:
    """A stored publish for the retry window: who sent it, their id for it, where it went."""

    sender: str
    client_msg_id: str
    shard: int
    seq: int


@dataclass(frozen=True, slots=True)
class RecoveredRoom:
    """One room as a restarted gateway takes it up.

    ``epochs`` are its retained shard maps, oldest first, ending with the restart epoch (already
    stored) whose shards the room sequences from now on, each from seq 1. ``high_water`` is the
    marks as they were found (the sealed shards' last seqs among them). ``next_shard_id`` is the
    first id the room may give a new shard. ``recent`` is the room's retry window as the store
    knows it: its newest stored publishes, so that a publish acked (or stored, its ack lost) just
    before the crash and retried after it is acked again rather than stored twice.
    """

    room: RoomRecord
    epochs: tuple[EpochRecord, ...]
    high_water: Mapping[int, int]
    next_shard_id: int
    recent: tuple[RecentPublish, ...] = ()

    @property
    def current(self) -> EpochRecord:
        return self.epochs[-1]


def restart_epoch(
    room: str,
    epochs: Sequence[EpochRecord],
    high_water: Mapping[int, int],
    shard_count: int | None = None,
) -> EpochRecord:
    """The epoch after ``epochs[-1]`` that a restart starts: its shards sealed at their marks.

    ``sealed`` holds the last epoch's shards with a mark above 0, ``base_sum`` grows by their sum
    (as ``Room.reshard`` does), and the new shards (``shard_count`` of them; by default as many as
    the last epoch had, else 1) take ids above every shard id in ``epochs`` and ``high_water``.
    With no epoch stored the room starts with nothing sealed.

    The epoch number and the shard ids leave a gap (``RESTART_EPOCH_GAP``, ``RESTART_ID_GAP``)
    above everything stored: a reshard's ShardMap reaches clients before its epoch record is
    committed, so a crash in that window can leave clients knowing one epoch (and up to
    ``max_shards`` shard ids) the store never heard of. The gap keeps the restart epoch from
    reusing that epoch's number or ids, which clients would take as a contradiction.
    """
    last = epochs[-1] if epochs else None
    count = shard_count or (len(last.shards) if last else 1)
    if count < 1:
        raise LocalProtocolError(f"a restart epoch needs at least one shard, got {count}")
    known = [s for e in epochs for s in e.shards] + list(high_water)
    first = max(known, default=0) + RESTART_ID_GAP
    if last is None:
        return EpochRecord(room, RESTART_EPOCH_GAP, tuple(range(first, first + count)), {}, 0)
    sealed = {s: high_water[s] for s in last.shards if high_water.get(s, 0) > 0}
    return EpochRecord(
        room,
        last.epoch + RESTART_EPOCH_GAP,
        tuple(range(first, first + count)),
        sealed,
        last.base_sum + sum(sealed.values()),
    )


def _live(room: str) -> str:
    return "live"


def recover(
    store: Store,
    *,
    shard_count: int | None = None,
    dedupe_window: int = 0,
    mode_of: Callable[[str], str] = _live,
) -> list[RecoveredRoom]:
    """Seal every stored room's last epoch and store its restart epoch; return the rooms, each
    with up to ``dedupe_window`` of its newest stored publishes (``recent``).

    Every room :meth:`~gateway.store.base.Store.known_rooms` names comes back, orphans included:
    an orphan is rebuilt (:func:`rebuild_orphan`) with the mode ``mode_of(room)`` gives (the
    gateway's ``group_rooms`` rule) and a one-shard restart epoch unless ``shard_count`` says.

    Call once at startup, before the gateway takes traffic and before a
    :class:`~gateway.store.writer.StoreWriter` owns ``store`` (or through ``writer.call``). Each
    restart epoch (and rebuilt record) is stored, durable, before this returns, so a second crash
    seals it in turn. Rooms are in name order. Raises StoreError if the store fails.
    """
    records = {r.room: r for r in store.rooms()}
    return [
        _take_up(store, name, records.get(name), shard_count, dedupe_window, mode_of)
        for name in store.known_rooms()
    ]


def recover_room(
    store: Store,
    room: str,
    *,
    shard_count: int | None = None,
    dedupe_window: int = 0,
    mode_of: Callable[[str], str] = _live,
) -> RecoveredRoom | None:
    """:func:`recover` for one room (one reclaimed while idle, taken up again for a Join): its
    last epoch sealed and its restart epoch stored, or None if the store holds nothing of it
    (no record, shard map or mark: a new room). Call it on the store's thread
    (``writer.call``) once every write of the room that was submitted has ended, so that it
    reads the room's final marks. Raises StoreError if the store fails."""
    record = store.room(room)
    if record is None and not store.epochs(room) and not store.high_water(room):
        return None
    return _take_up(store, room, record, shard_count, dedupe_window, mode_of)


def _take_up(
    store: Store,
    name: str,
    record: RoomRecord | None,
    shard_count: int | None,
    dedupe_window: int,
    mode_of: Callable[[str], str],
) -> RecoveredRoom:
    epochs = store.epochs(name)
    marks = store.high_water(name)
    count = shard_count
    if record is None:
        record, epochs = rebuild_orphan(store, name, epochs, marks, mode_of(name))
        count = shard_count or 1
    new = restart_epoch(name, epochs, marks, count)
    store.put_epoch(new)
    recent = recent_publishes(store, name, dedupe_window)
    return RecoveredRoom(record, (*epochs, new), marks, max(new.shards) + 1, recent)


def rebuild_orphan(
    store: Store, room: str, epochs: Sequence[EpochRecord], high_water: Mapping[int, int], mode: str
) -> tuple[RoomRecord, list[EpochRecord]]:
    """Store a record for a room the store has state of but no record; return it and the room's
    shard maps: its stored ones, or (with none) one made of its newest stored shards (at most
    :data:`REBUILT_SHARDS_MAX`, nothing sealed), stored too, so the restart epoch seals them at
    their marks and no seq of theirs is ever assigned again.

    The incarnation is new (the lost record's is unknown): clients holding cursors of the room
    replay it from the start and are told it was reset, which loses nothing stored.
    """
    record = RoomRecord(room, secrets.randbits(63) or 1, mode)
    log.warning(
        "room %s has stored messages but no record: rebuilt as a %s room (new incarnation)",
        room,
        mode,
        extra={"event": "room_rebuilt", "room": room},
    )
    kept = list(epochs)
    if not kept and high_water:
        shards = tuple(sorted(high_water)[-REBUILT_SHARDS_MAX:])
        kept = [EpochRecord(room, 1, shards, {}, 0)]
        store.put_epoch(kept[0])
    store.put_room(record)
    return record, kept


def recent_publishes(store: Store, room: str, window: int) -> tuple[RecentPublish, ...]:
    """The room's newest stored publishes with a client id, at most ``window``, oldest first.

    Read newest first in commit order across all of the room's shards, whatever epoch or restart
    they belong to, page by page (:meth:`~gateway.store.base.Store.read_before`), until
    ``window`` are found, the room's messages run out, or ``window * 4`` messages were read.
    """
    if window < 1:
        return ()
    found: list[RecentPublish] = []
    before: dict[int, int] = {}
    budget = window * _SCAN_PER_SLOT
    while len(found) < window and budget > 0:
        page = store.read_before(room, before, min(MAX_READ_LIMIT, budget))
        for m in page:
            if m.client_msg_id:
                found.append(RecentPublish(m.sender, m.client_msg_id, m.shard, m.seq))
                if len(found) == window:
                    break
        if len(page) < min(MAX_READ_LIMIT, budget):
            break
        budget -= len(page)
        before = prev_cursor(before, page)
    found.reverse()
    return tuple(found)
