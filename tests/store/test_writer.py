"""StoreWriter: group commit, durability before resolution, bounds, draining on close."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.errors import ErrorCode, LocalProtocolError, Rejected
from gateway.store.base import Retention
from gateway.store.memory import MemoryStore
from gateway.store.records import EpochRecord, RoomRecord, StoreError
from gateway.store.sqlite import SqliteStore
from gateway.store.writer import MESSAGE_OVERHEAD_BYTES, StoreWriter
from tests.store.factories import ROOMS, msg, with_rooms


async def started(store: SqliteStore | MemoryStore, **kw: int) -> StoreWriter:
    """A started writer on ``store``, which holds the records of the factories' rooms."""
    writer = StoreWriter(with_rooms(store), **kw)
    await writer.start()
    return writer


async def test_concurrent_submits_share_commits(tmp_path: Path) -> None:
    writer = await started(SqliteStore(tmp_path / "s.db"), max_batch=100)
    try:
        # All queued before the commit task runs: it must take them 100 at a time.
        futures = [writer.submit([msg(s)], {("lobby", 1): s}) for s in range(1, 251)]
        await asyncio.gather(*futures)
        assert writer.stats.submissions == 250
        assert writer.stats.commits == 3
        assert writer.stats.messages == 250
        assert len(writer.commit_latency_s) == 3
        assert await writer.high_water("lobby") == {1: 250}
        history = await writer.read_after("lobby", {}, 1000)
        assert [m.seq for m in history] == list(range(1, 251))
    finally:
        await writer.close()


async def test_submits_keep_arriving_during_commits_and_are_grouped(tmp_path: Path) -> None:
    writer = await started(SqliteStore(tmp_path / "s.db"))
    try:
        pending = []
        for s in range(1, 301):
            pending.append(writer.submit([msg(s)]))
            if s % 7 == 0:
                await asyncio.sleep(0)  # let the writer start commits mid-stream
        await asyncio.gather(*pending)
        assert writer.stats.commits < 300
        assert writer.queued == 0
    finally:
        await writer.close()


async def test_a_resolved_future_means_another_connection_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    writer = await started(SqliteStore(path))
    try:
        await writer.put_room(RoomRecord("lobby", 99, "group"))
        await writer.submit([msg(1), msg(2)], {("lobby", 1): 3})
        other = SqliteStore(path)  # a second connection sees only what was committed
        try:
            assert [m.seq for m in other.read("lobby", 1, 1, 10, 10)] == [1, 2]
            assert other.rooms()[0] == RoomRecord("lobby", 99, "group")  # replaced
            assert other.high_water("lobby") == {1: 3}
        finally:
            other.close()
    finally:
        await writer.close()


async def test_a_full_queue_refuses_at_once_without_blocking() -> None:
    writer = await started(MemoryStore(), max_batch=5, max_queue=10)
    try:
        futures = [writer.submit([msg(s)]) for s in range(1, 11)]
        assert not writer.has_capacity()
        with pytest.raises(Rejected) as info:
            writer.submit([msg(11)])
        assert info.value.code is ErrorCode.RATE_LIMITED
        with pytest.raises(Rejected):
            writer.put_epoch(EpochRecord("lobby", 1, (1,), {}, 0))
        assert writer.stats.rejected == 2
        with pytest.raises(LocalProtocolError):
            writer.submit([msg(s) for s in range(100, 111)])  # could never fit
        await asyncio.gather(*futures)
        assert writer.has_capacity(10)
        await writer.submit([msg(11)])
    finally:
        await writer.close()


async def test_close_drains_everything_submitted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    writer = await started(SqliteStore(path), max_batch=16)
    futures = [writer.submit([msg(s)]) for s in range(1, 101)]
    futures[5].cancel()  # a caller that stopped waiting: its message is stored all the same
    await writer.close()
    assert all(f.done() for f in futures)
    assert all(f.exception() is None for f in futures if not f.cancelled())
    with pytest.raises(Rejected) as info:
        writer.submit([msg(101)])
    assert info.value.code is ErrorCode.SHUTTING_DOWN
    with pytest.raises(Rejected):
        await writer.rooms()
    await writer.close()  # again: harmless
    store = SqliteStore(path)
    try:
        assert len(store.read("lobby", 1, 1, 1000, 1000)) == 100
    finally:
        store.close()


async def test_a_bad_submission_fails_alone() -> None:
    writer = await started(MemoryStore())
    try:
        first = writer.submit([msg(1)])
        duplicate = writer.submit([msg(1)])
        later = writer.submit([msg(2)])
        await first
        with pytest.raises(LocalProtocolError):
            await duplicate
        await later
        assert [m.seq for m in await writer.read("lobby", 1, 1, 10, 10)] == [1, 2]
        assert writer.queued == 0
    finally:
        await writer.close()


async def test_a_store_failure_fails_the_group_with_internal_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as raw:  # a row the store's bookkeeping doesn't know: a real failure
        raw.execute(
            "INSERT INTO messages (room, shard, seq, stored_at_ms, record) VALUES ('lobby', 1, 7, 0, x'01')"
        )
    raw.close()
    writer = await started(SqliteStore(path))
    try:
        innocent = writer.submit([msg(1, shard=2)])
        clash = writer.submit([msg(7)])
        for future in (innocent, clash):
            with pytest.raises(StoreError) as info:
                await future
            assert info.value.code is ErrorCode.INTERNAL
        assert writer.stats.failed_commits == 1
        await writer.submit([msg(1, shard=2), msg(8)])
        assert [m.shard for m in await writer.read_after("lobby", {1: 7}, 10)] == [2, 1]
    finally:
        await writer.close()


async def test_records_and_appends_commit_in_submission_order() -> None:
    writer = await started(MemoryStore())
    try:
        epoch = writer.put_epoch(EpochRecord("lobby", 2, (3, 4), {1: 5}, 5))
        append = writer.submit([msg(1, shard=3)])
        order: list[str] = []
        epoch.add_done_callback(lambda _: order.append("epoch"))
        append.add_done_callback(lambda _: order.append("append"))
        await asyncio.gather(epoch, append)
        assert order == ["epoch", "append"]
        assert [e.epoch for e in await writer.epochs("lobby")] == [2]
    finally:
        await writer.close()


async def test_reads_beyond_the_bound_are_refused() -> None:
    writer = await started(MemoryStore(), max_reads=2)
    try:
        tasks = [asyncio.create_task(writer.rooms()) for _ in range(2)]
        await asyncio.sleep(0)  # both are now waiting for the store thread
        with pytest.raises(Rejected) as info:
            await writer.rooms()
        assert info.value.code is ErrorCode.RATE_LIMITED
        done = await asyncio.gather(*tasks)
        assert [[r.room for r in rooms] for rooms in done] == [list(ROOMS), list(ROOMS)]
    finally:
        await writer.close()


async def test_trim_runs_in_chunks_on_the_store_thread() -> None:
    writer = await started(MemoryStore())
    try:
        await writer.submit([msg(s, at_ms=s) for s in range(1, 26)])
        assert await writer.trim(60_000, Retention(max_age_s=1.0), chunk_rows=10) == 25
        assert await writer.read("lobby", 1, 1, 100, 100) == []
    finally:
        await writer.close()


async def test_submitting_before_start_is_a_local_error() -> None:
    writer = StoreWriter(MemoryStore())
    with pytest.raises(LocalProtocolError):
        writer.submit([msg(1)])
    await writer.close()


async def test_queued_bytes_are_bounded_too() -> None:
    per_message = 100 + MESSAGE_OVERHEAD_BYTES
    writer = await started(MemoryStore(), max_queue_bytes=4 * per_message)
    try:
        futures = [writer.submit([msg(s, body=b"b" * 100)]) for s in range(1, 5)]
        assert writer.has_capacity(1, 0) is False
        with pytest.raises(Rejected) as info:
            writer.submit([msg(5, body=b"b")])
        assert info.value.code is ErrorCode.RATE_LIMITED
        with pytest.raises(LocalProtocolError):
            writer.submit([msg(9, body=b"b" * 4 * per_message)])  # could never fit
        await asyncio.gather(*futures)
        assert writer.has_capacity(4, 400)
    finally:
        await writer.close()
