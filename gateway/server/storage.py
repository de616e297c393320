"""The server's side of durability: the store, its group-commit writer, restart recovery, reads.

The hub says what must be stored (``Persist``, ``RoomChanged``) and what must be read back
(``StoreRead``); this module does it off the event loop (the writer's thread) and reports back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.core.hub import Hub, Persist, RoomChanged, StoreRead
from gateway.core.room import DEDUPE_WINDOW
from gateway.errors import GatewayError
from gateway.store.base import StoreConfig, next_cursor, open_store
from gateway.store.records import EpochRecord, RoomRecord, StoredMessage
from gateway.store.recovery import recover
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

    async def open(self, hub: Hub, now: float) -> int:
        """Open the store, seal every stored room's last epoch, restore the rooms in the hub.

        Returns how many rooms were restored. Raises StoreError if the store can't be opened.
        """
        store = await asyncio.to_thread(open_store, self.config)
        rooms = await asyncio.to_thread(recover, store, dedupe_window=DEDUPE_WINDOW)
        for r in rooms:
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

    async def close(self) -> None:
        if self._trimmer is not None:
            self._trimmer.cancel()
        if self.writer is not None:
            await self.writer.close()
            self.writer = None

    # ---- writes ---------------------------------------------------------------------------------

    def persist(self, hub: Hub, batch: list[Persist], done: Callable[[], None]) -> None:
        """One group-commit submission for every Persist of a loop turn; then tell the hub."""
        assert self.writer is not None
        stamp = _now_ms()
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
        """Store a new room's record and each epoch it starts (in order with the messages)."""
        assert self.writer is not None
        futures = []
        if change.created:
            futures.append(
                self.writer.put_room(RoomRecord(change.room, change.incarnation, change.mode))
            )
        futures.append(self.writer.put_epoch(EpochRecord.from_map(change.shard_map)))
        for fut in futures:
            fut.add_done_callback(_log_failure)

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


def _log_failure(fut: asyncio.Future[None]) -> None:
    if fut.exception() is not None:
        log.error("store write failed: %s", fut.exception(), extra={"event": "store_failed"})
