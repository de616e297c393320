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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.errors import LocalProtocolError
from gateway.store.base import Store
from gateway.store.records import EpochRecord, RoomRecord

__all__ = [
    "RESTART_EPOCH_GAP",
    "RESTART_ID_GAP",
    "RecentPublish",
    "RecoveredRoom",
    "recent_publishes",
    "recover",
    "restart_epoch",
]

# An unstored epoch is at most one reshard (reshards are cooldown_s apart, commits take ms) with
# at most max_shards new ids; these gaps exceed both with room to spare (clocks allow 1024 entries).
RESTART_EPOCH_GAP = 16
RESTART_ID_GAP = 1024


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


def recover(
    store: Store, *, shard_count: int | None = None, dedupe_window: int = 0
) -> list[RecoveredRoom]:
    """Seal every stored room's last epoch and store its restart epoch; return the rooms, each
    with up to ``dedupe_window`` of its newest stored publishes (``recent``).

    Call once at startup, before the gateway takes traffic and before a
    :class:`~gateway.store.writer.StoreWriter` owns ``store`` (or through ``writer.call``). Each
    restart epoch is stored (durable) before this returns, so a second crash seals it in turn.
    Rooms are in name order. Raises StoreError if the store fails.
    """
    recovered = []
    for record in store.rooms():
        epochs = store.epochs(record.room)
        marks = store.high_water(record.room)
        new = restart_epoch(record.room, epochs, marks, shard_count)
        store.put_epoch(new)
        recent = recent_publishes(store, record.room, epochs, marks, dedupe_window)
        recovered.append(RecoveredRoom(record, (*epochs, new), marks, max(new.shards) + 1, recent))
    return recovered


def recent_publishes(
    store: Store,
    room: str,
    epochs: Sequence[EpochRecord],
    high_water: Mapping[int, int],
    window: int,
) -> tuple[RecentPublish, ...]:
    """The newest stored publishes with a client id, at most ``window``: the tail of every shard
    of the last two stored epochs (a retry may follow a reshard), shared evenly among them."""
    shards = sorted({s for e in epochs[-2:] for s in e.shards if high_water.get(s, 0) > 0})
    if not shards or window < 1:
        return ()
    per_shard = max(1, window // len(shards))
    recent = []
    for shard in shards:
        last = high_water[shard]
        for m in store.read(room, shard, max(1, last - per_shard + 1), last, per_shard):
            if m.client_msg_id:
                recent.append(RecentPublish(m.sender, m.client_msg_id, m.shard, m.seq))
    return tuple(recent)
