"""A gateway stand-in for tests/store/test_crash.py: store acked batches until killed.

    python crash_writer.py DB MODE

Appends batches of three messages to room ``crash`` shard 1, using even seqs only (odd seqs play
chatter, never stored), and after each batch is durable prints its seqs on one line, flushed: a
printed seq is an acked one. MODE ``store`` appends directly; MODE ``writer`` runs eight concurrent
publishers through a StoreWriter (group commit). Bounded: stops after 60 s or 200,000 batches.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from gateway.store.records import EpochRecord, RoomRecord, StoredMessage
from gateway.store.sqlite import SqliteStore
from gateway.store.writer import StoreWriter

ROOM = "crash"
MAX_BATCHES = 200_000
DEADLINE_S = 60.0


def batch(first_seq: int) -> list[StoredMessage]:
    return [
        StoredMessage(ROOM, 1, seq, {}, "w", f"m{seq}", 3, b"x" * 100, int(time.time() * 1000))
        for seq in range(first_seq, first_seq + 6, 2)
    ]


def run_store(store: SqliteStore) -> None:
    deadline = time.monotonic() + DEADLINE_S
    for i in range(MAX_BATCHES):
        if time.monotonic() > deadline:
            return
        messages = batch(6 * i + 2)
        store.append(messages, {(ROOM, 1): messages[-1].seq + 1})
        print(*(m.seq for m in messages), flush=True)


async def run_writer(store: SqliteStore) -> None:
    writer = StoreWriter(store, max_batch=64)
    await writer.start()
    deadline = time.monotonic() + DEADLINE_S
    next_batch = 0

    async def publisher() -> None:
        nonlocal next_batch
        while next_batch < MAX_BATCHES and time.monotonic() < deadline:
            messages = batch(6 * next_batch + 2)  # taken and submitted without yielding: in order
            next_batch += 1
            await writer.submit(messages, {(ROOM, 1): messages[-1].seq + 1})
            print(*(m.seq for m in messages), flush=True)

    await asyncio.gather(*(publisher() for _ in range(8)))
    await writer.close()


def main() -> None:
    path, mode = Path(sys.argv[1]), sys.argv[2]
    store = SqliteStore(path, fsync="normal")
    store.put_room(RoomRecord(ROOM, 4242, "group"))
    store.put_epoch(EpochRecord(ROOM, 1, (1,), {}, 0))
    if mode == "store":
        run_store(store)
    else:
        asyncio.run(run_writer(store))


if __name__ == "__main__":
    main()
