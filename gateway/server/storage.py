"""The server's side of durability: the store, its group-commit writer, restart recovery, reads.

The hub says what must be stored (``Persist``, ``RoomChanged``) and what must be read back
(``StoreRead``); this module does it off the event loop (the writer's thread) and reports back.

A room's record is durable before any of its messages: the writer commits in submission order, so
a new room's record goes before its first messages, and the store refuses messages of a room it
has no record of, so if that record write fails (a full disk) the room's reliable publishes fail
too (``INTERNAL``: not acknowledged; the publisher retries) instead of being stored where a
restart could not find them. A record (or shard map) whose write failed is written again, ahead
of the room's next messages, until it is stored.

A room the hub reclaimed while idle (``RoomReclaimed``) gets its final marks recorded, after every
earlier write of it; a Join of it later (``LoadRoom``) waits for those writes to end, then takes
the room up from the store as a restart does (:func:`~gateway.store.recovery.recover_room`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.core.hub import Hub
from gateway.core.outputs import LoadRoom, Persist, RoomChanged, RoomReclaimed, StoreRead
from gateway.core.room import DEDUPE_WINDOW
from gateway.errors import GatewayError
from gateway.store.base import Store, StoreConfig, next_cursor, open_store
from gateway.store.records import EpochRecord, RoomRecord, StoredMessage
from gateway.store.recovery import RecoveredRoom, recover, recover_room
from gateway.store.writer import StoreWriter
from gateway.wire import frames as f
from gateway.wire.codec import encode_server_frame
from gateway.wire.framing import delimit

__all__ = ["Durability"]

log = logging.getLogger("skein.store")
_READ_PAGE = 1000


def _now_ms() -> int:
    return int(time.time() * 1000)  # wall clock: retention by age outlives restarts


class Durability:
    """Owns the store while the gateway runs. ``await open()``, then the hub's outputs, then
    ``await close()`` (which commits everything submitted)."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.writer: StoreWriter | None = None
        self._trimmer: asyncio.Task[None] | None = None
        # Rooms made by this process whose record is not yet known to be stored (being written,
        # or failed); of those, the ones whose last write failed, to write again before their
        # next message. Shard maps whose write failed, by room and epoch, likewise.
        self._unconfirmed: dict[str, RoomRecord] = {}
        self._failed_rooms: set[str] = set()
        self._failed_epochs: dict[str, dict[int, EpochRecord]] = {}
        # Per room, the last write of its record, a shard map or its final marks still going:
        # taking a reclaimed room up again waits for it.
        self._writing: dict[str, asyncio.Future[None]] = {}
        self._store: Store | None = None

    async def open(self, hub: Hub, now: float) -> int:
        """Open the store, seal every stored room's last epoch, restore the rooms in the hub.

        Returns how many rooms were restored. Raises StoreError if the store can't be opened.
        """
        store = self._store = await asyncio.to_thread(open_store, self.config)
        rooms = await asyncio.to_thread(
            recover, store, dedupe_window=DEDUPE_WINDOW, mode_of=self._mode_of(hub)
        )
        for r in rooms:
            self._restore(hub, r, now)
        cfg = self.config
        self.writer = StoreWriter(
            store,
            max_batch=cfg.max_batch_messages,
            max_queue=cfg.max_queued_messages,
            max_queue_bytes=cfg.max_queued_bytes,
        )
        await self.writer.start()
        self._trimmer = asyncio.get_running_loop().create_task(self._trim_forever())
        return len(rooms)

    @staticmethod
    def _mode_of(hub: Hub) -> Callable[[str], str]:
        def mode_of(room: str) -> str:  # as the hub decides a new room's mode
            return "group" if hub.config.is_group_room(room) else "live"

        return mode_of

    @staticmethod
    def _restore(hub: Hub, r: RecoveredRoom, now: float) -> None:
        hub.restore_room(
            r.room.room,
            incarnation=r.room.incarnation,
            mode=r.room.mode,
            maps=[e.to_map() for e in r.epochs],
            high_water=dict(r.high_water),
            next_shard_id=r.next_shard_id,
            recent=[(p.sender, p.client_msg_id, p.shard, p.seq) for p in r.recent],
            now=now,
        )

    async def close(self) -> None:
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self.writer is not None:
            await self.writer.close()
            self.writer = None

    # ---- writes ---------------------------------------------------------------------------------

    def persist(self, hub: Hub, batch: list[Persist], done: Callable[[], None]) -> None:
        """Group-commit every Persist of a loop turn; tell the hub as each commit ends, then
        call ``done`` (once per submission).

        Rooms whose record is stored share one submission. A room whose record is not yet known
        to be stored gets a submission of its own (the store refuses it if the record is not
        there, and that refusal must not fail the other rooms), preceded by its record again
        when the last write of it failed; a failed shard map is written again the same way.
        """
        assert self.writer is not None
        stamp = _now_ms()
        shared: list[Persist] = []
        alone: dict[str, list[Persist]] = {}
        for p in batch:
            if p.room in self._unconfirmed:
                alone.setdefault(p.room, []).append(p)
            else:
                shared.append(p)
        groups = ([shared] if shared else []) + list(alone.values())
        for group in groups:
            for room in dict.fromkeys(p.room for p in group):
                self._rewrite(room)
            self._submit(hub, group, stamp, done)

    def _submit(self, hub: Hub, batch: list[Persist], stamp: int, done: Callable[[], None]) -> None:
        """One submission for ``batch``; report to the hub when it commits (or fails)."""
        assert self.writer is not None
        messages = [
            StoredMessage.from_message(p.room, e.message, stamp) for p in batch for e in p.entries
        ]
        marks = {
            (p.room, shard): seq for p in batch for shard, seq in hub.high_water(p.room).items()
        }
        try:
            future = self.writer.submit(messages, marks)
        except GatewayError as exc:
            self._report(hub, batch, exc)
            done()
            return
        started = time.monotonic()

        def committed(fut: asyncio.Future[None]) -> None:
            exc = fut.exception()
            if exc is None:
                hub.stats.store_commit_seconds.observe(time.monotonic() - started)
            self._report(hub, batch, exc)
            done()

        future.add_done_callback(committed)

    @staticmethod
    def _report(hub: Hub, batch: list[Persist], exc: BaseException | None) -> None:
        now = asyncio.get_running_loop().time()
        for item in batch:
            if exc is None:
                hub.persisted(item.room, item.entries, now)
            else:
                log.error(
                    "store write failed: %s",
                    exc,
                    extra={"event": "store_failed", "room": item.room},
                )
                hub.persist_failed(item.room, item.entries, str(exc), now)

    def room_changed(self, change: RoomChanged) -> None:
        """Store a new room's record and each epoch it starts (in order with the messages).

        A failed write is logged and remembered: it is written again before the room's next
        messages or shard map (:meth:`persist`), until it is stored."""
        if change.created:
            record = RoomRecord(change.room, change.incarnation, change.mode)
            self._unconfirmed[change.room] = record
            self._put_room(record)
        else:
            self._rewrite(change.room)
        self._put_epoch(EpochRecord.from_map(change.shard_map))

    def _rewrite(self, room: str) -> None:
        """Queue again the room's record and shard maps whose last write failed, if any."""
        if room in self._failed_rooms:
            self._failed_rooms.discard(room)
            self._put_room(self._unconfirmed[room])
        if room in self._failed_epochs:
            for _, epoch in sorted(self._failed_epochs.pop(room).items()):
                self._put_epoch(epoch)

    def _put_room(self, record: RoomRecord) -> None:
        assert self.writer is not None
        try:
            future = self.writer.put_room(record)
        except GatewayError as exc:  # the queue is full or closing: as a failed write
            self._room_written(record.room, exc)
            return
        future.add_done_callback(lambda fut: self._room_written(record.room, fut.exception()))
        self._track(record.room, future)

    def _room_written(self, room: str, exc: BaseException | None) -> None:
        if exc is None:
            self._unconfirmed.pop(room, None)
            self._failed_rooms.discard(room)
            return
        self._failed_rooms.add(room)
        log.error(
            "storing room %s failed: %s; its reliable messages are refused until it is stored",
            room,
            exc,
            extra={"event": "store_failed", "room": room},
        )

    def _put_epoch(self, record: EpochRecord) -> None:
        assert self.writer is not None
        try:
            future = self.writer.put_epoch(record)
        except GatewayError as exc:
            self._epoch_written(record, exc)
            return
        future.add_done_callback(lambda fut: self._epoch_written(record, fut.exception()))
        self._track(record.room, future)

    def _epoch_written(self, record: EpochRecord, exc: BaseException | None) -> None:
        if exc is None:
            return
        self._failed_epochs.setdefault(record.room, {})[record.epoch] = record
        log.error(
            "storing a shard map of room %s failed: %s; it is written again before the room's "
            "next messages",
            record.room,
            exc,
            extra={"event": "store_failed", "room": record.room},
        )

    def _track(self, room: str, future: asyncio.Future[None]) -> None:
        """``future`` is the room's latest write (the writer ends them in submission order)."""
        self._writing[room] = future

        def ended(fut: asyncio.Future[None]) -> None:
            if self._writing.get(room) is fut:
                del self._writing[room]

        future.add_done_callback(ended)

    # ---- reclaimed rooms ------------------------------------------------------------------------

    def reclaimed(self, change: RoomReclaimed) -> None:
        """Record a reclaimed room's final marks (and its record or shard maps again, if their
        last write failed), after every earlier write of it. A failure is logged: the room is
        then sealed at the marks its last commit stored, as after a crash."""
        assert self.writer is not None
        self._rewrite(change.room)
        marks = {(change.room, shard): seq for shard, seq in change.high_water.items()}
        if not marks:
            return
        try:
            future = self.writer.submit([], marks)
        except GatewayError as exc:
            self._marks_written(change.room, exc)
            return
        future.add_done_callback(lambda fut: self._marks_written(change.room, fut.exception()))
        self._track(change.room, future)

    @staticmethod
    def _marks_written(room: str, exc: BaseException | None) -> None:
        if exc is not None:
            log.warning(
                "recording the marks of reclaimed room %s failed: %s",
                room,
                exc,
                extra={"event": "store_failed", "room": room},
            )

    async def load(self, hub: Hub, load: LoadRoom) -> None:
        """Answer a LoadRoom: wait for the room's writes, take it up from the store
        (:func:`recover_room`) and hand it to the hub (``restore_room``, ``room_loaded``), or
        tell the hub it failed (``room_load_failed``). Never raises; the caller pumps after."""
        name = load.room
        loop = asyncio.get_running_loop()
        try:
            assert self.writer is not None and self._store is not None
            writing = self._writing.get(name)
            if writing is not None:
                await asyncio.wait([writing])  # its outcome was handled where it was made
            recovered = await self.writer.call(
                recover_room,
                self._store,
                name,
                dedupe_window=DEDUPE_WINDOW,
                mode_of=self._mode_of(hub),
            )
        except Exception as exc:
            log.error(
                "taking up room %s from the store failed: %s",
                name,
                exc,
                extra={"event": "store_failed", "room": name},
            )
            hub.room_load_failed(name, str(exc), loop.time())
            return
        if recovered is not None:
            # The store is the room's truth now, its record stored (or rebuilt) and sealed.
            self._unconfirmed.pop(name, None)
            self._failed_rooms.discard(name)
            self._failed_epochs.pop(name, None)
            self._restore(hub, recovered, loop.time())
        hub.room_loaded(name, loop.time())

    # ---- reads ----------------------------------------------------------------------------------

    async def serve_read(self, read: StoreRead) -> bytes:
        """The frames answering a StoreRead: stored messages, tombstones for the rest."""
        assert self.writer is not None
        out = []
        lo = read.from_seq
        while lo <= read.to_seq:
            hi = min(read.to_seq, lo + _READ_PAGE - 1)
            stored = {
                m.seq: m.to_message()
                for m in await self.writer.read(read.room, read.shard, lo, hi, _READ_PAGE)
            }
            messages = tuple(
                stored.get(seq)
                or f.Message(read.shard, seq, {}, "", "", f.Priority.CHATTER, b"", shed=True)
                for seq in range(lo, hi + 1)
            )
            frame: f.ServerFrame
            if read.request_id:
                frame = f.Fetched(read.request_id, read.room, read.shard, messages)
            else:
                frame = f.Deliver(read.room, messages)
            out.append(delimit(encode_server_frame(frame)))
            lo = hi + 1
        return b"".join(out)

    async def history(self, room: str, after: Mapping[int, int], limit: int) -> dict[str, Any]:
        """A page of a room's stored messages after ``after``, and the cursor for the next."""
        assert self.writer is not None
        page = await self.writer.read_after(room, after, max(1, min(limit, _READ_PAGE)))
        return {"messages": page, "next": next_cursor(after, page)}

    async def _trim_forever(self) -> None:
        while self.writer is not None:
            await asyncio.sleep(self.config.trim_interval_s)
            with contextlib.suppress(GatewayError):
                removed = await self.writer.trim(_now_ms(), self.config.retention)
                if removed:
                    log.info(
                        "retention trimmed %d messages",
                        removed,
                        extra={"event": "store_trimmed", "count": removed},
                    )
