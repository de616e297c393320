"""The asyncio side of the durable store: group commit on one worker thread.

The server submits the reliable path's messages with :meth:`StoreWriter.submit` and acks each
publisher when its future resolves. A single background task takes *everything* queued since the
last commit (up to ``max_batch`` messages) and hands it to the store as one
:meth:`~gateway.store.base.Store.append`, on the writer's one worker thread; while that commit runs,
the next batch accumulates. So under load one fsync (``fsync="full"``) or one WAL write
(``normal``) covers many messages, and at low load a message waits for at most one commit.

Order: room and epoch records (:meth:`StoreWriter.put_room`, :meth:`StoreWriter.put_epoch`) and
appends are committed in the order they were submitted, so an epoch is durable before any message of
its shards that was submitted after it. Reads (:meth:`StoreWriter.read` and friends) run on the
same thread, between commits, and see every commit whose future has resolved.

Bounds: at most ``max_queue`` messages and ``max_queue_bytes`` of them (bodies plus
:data:`MESSAGE_OVERHEAD_BYTES` each) wait or are being committed; a record or a marks-only
submission counts as one message. Beyond either, :meth:`StoreWriter.submit` refuses at once with
``Rejected(RATE_LIMITED)``: the disk is not keeping up, so the publisher should back off and retry
with the same client message id; nothing blocks the event loop. At most ``max_reads`` reads wait for
the thread; more are refused the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from gateway.errors import ErrorCode, GatewayError, LocalProtocolError, Rejected
from gateway.store.base import Retention, Store
from gateway.store.records import EpochRecord, RoomRecord, StoredMessage, StoreError

__all__ = ["StoreWriter", "WriterStats"]

log = logging.getLogger("skein.store")
P = ParamSpec("P")
T = TypeVar("T")
RECENT_COMMITS = 1024
MESSAGE_OVERHEAD_BYTES = 256  # what a queued message costs beyond its body, roughly


@dataclass(slots=True)
class WriterStats:
    """Counters since the writer started, for metrics.

    ``commit_s_total / commits`` is the mean commit time and ``messages / commits`` the mean group
    size; ``recent_commit_s`` holds the durations (seconds, store time only) of the last
    :data:`RECENT_COMMITS` commits, oldest first.
    """

    submissions: int = 0
    commits: int = 0
    messages: int = 0
    failed_commits: int = 0
    rejected: int = 0
    commit_s_total: float = 0.0
    recent_commit_s: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_COMMITS))


@dataclass(slots=True)
class _Append:
    messages: tuple[StoredMessage, ...]
    high_water: Mapping[tuple[str, int], int]
    future: asyncio.Future[None]
    cost: int  # toward max_queue
    nbytes: int  # toward max_queue_bytes


@dataclass(slots=True)
class _Put:
    record: RoomRecord | EpochRecord
    future: asyncio.Future[None]
    cost: int = 1
    nbytes: int = MESSAGE_OVERHEAD_BYTES


def _append_size(messages: Sequence[StoredMessage]) -> tuple[int, int]:
    """(cost, nbytes) of a submission: each message, or one for a marks-only submission."""
    count = max(1, len(messages))
    return count, sum(len(m.body) for m in messages) + count * MESSAGE_OVERHEAD_BYTES


class StoreWriter:
    """Group commit for a :class:`~gateway.store.base.Store`. See the module docstring.

    After :meth:`start` the writer owns the store: every call to it must go through the writer
    (the store is single-threaded), and :meth:`close` closes it.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 1000,
        max_queue: int = 100_000,
        max_queue_bytes: int = 64 << 20,
        max_reads: int = 256,
    ) -> None:
        if not 1 <= max_batch <= max_queue or max_reads < 1:
            raise LocalProtocolError("need 1 <= max_batch <= max_queue and max_reads >= 1")
        if max_queue_bytes < MESSAGE_OVERHEAD_BYTES:
            raise LocalProtocolError(f"max_queue_bytes must be >= {MESSAGE_OVERHEAD_BYTES}")
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.max_reads = max_reads
        self.stats = WriterStats()
        self._store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skein-store")
        self._queue: deque[_Append | _Put] = deque()
        self._queued = 0  # the cost of everything queued or being committed
        self._queued_bytes = 0
        self._reads = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the commit task on the running loop. Call once, before anything else."""
        if self._task is not None:
            raise LocalProtocolError("the writer is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="skein-store")

    async def close(self) -> None:
        """Commit everything already submitted, then close the store and stop the thread.

        Every future handed out resolves (or fails) before this returns; later submissions and
        reads are refused with ``SHUTTING_DOWN``. Safe to call more than once.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._wake.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            try:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._executor, self._store.close)
            finally:
                self._executor.shutdown(wait=True)
                self._closed.set()

    # ---- writing --------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Messages (and records) waiting for a commit or being committed."""
        return self._queued

    def has_capacity(self, count: int = 1, body_bytes: int = 0) -> bool:
        """Whether a submission of ``count`` messages with bodies of ``body_bytes`` in all would be
        accepted now. Check before sequencing a reliable message, so that a refusal never leaves
        a sequenced but unstored message behind."""
        count = max(1, count)
        nbytes = body_bytes + count * MESSAGE_OVERHEAD_BYTES
        return not self._closing and self._fits(count, nbytes)

    def _fits(self, cost: int, nbytes: int) -> bool:
        return (
            self._queued + cost <= self.max_queue
            and self._queued_bytes + nbytes <= self.max_queue_bytes
        )

    def submit(
        self,
        messages: Sequence[StoredMessage],
        high_water: Mapping[tuple[str, int], int] | None = None,
    ) -> asyncio.Future[None]:
        """Queue ``messages`` and high-water marks for the next group commit; never blocks.

        The future resolves once they are durable (per the store's fsync policy), or fails with
        the commit's error: StoreError (code ``INTERNAL``: the store failed, nothing of this
        submission was stored) or LocalProtocolError (this submission was invalid, e.g. a seq
        not above what its shard stored; other submissions of the same group still commit).
        The caller must await the future or add a done callback. Raises ``Rejected`` at once:
        ``RATE_LIMITED`` when the queue is full, ``SHUTTING_DOWN`` after :meth:`close`.
        A submission is never split; one that could never fit the queue is a LocalProtocolError.
        """
        cost, nbytes = _append_size(messages)
        if cost > self.max_queue or nbytes > self.max_queue_bytes:
            raise LocalProtocolError(f"a submission of {cost} messages, {nbytes} bytes never fits")
        item = _Append(tuple(messages), dict(high_water or {}), self._new_future(), cost, nbytes)
        self._enqueue(item)
        self.stats.submissions += 1
        return item.future

    def put_room(self, record: RoomRecord) -> asyncio.Future[None]:
        """Queue a room record, committed in order with appends. Fails and raises as submit."""
        return self._put(record)

    def put_epoch(self, record: EpochRecord) -> asyncio.Future[None]:
        """Queue a shard map, committed before anything submitted after it. As submit."""
        return self._put(record)

    def _put(self, record: RoomRecord | EpochRecord) -> asyncio.Future[None]:
        item = _Put(record, self._new_future())
        self._enqueue(item)
        return item.future

    def _new_future(self) -> asyncio.Future[None]:
        if self._task is None:
            raise LocalProtocolError("start() the writer before submitting")
        return self._task.get_loop().create_future()

    def _enqueue(self, item: _Append | _Put) -> None:
        if self._closing:
            raise Rejected("the store is shutting down", code=ErrorCode.SHUTTING_DOWN)
        if not self._fits(item.cost, item.nbytes):
            self.stats.rejected += 1
            raise Rejected(
                f"the durable store is behind ({self._queued} messages waiting); retry later",
                code=ErrorCode.RATE_LIMITED,
            )
        self._queue.append(item)
        self._queued += item.cost
        self._queued_bytes += item.nbytes
        self._wake.set()

    def _done(self, item: _Append | _Put, outcome: Exception | None) -> None:
        """Release ``item``'s share of the bounds and resolve its future."""
        self._queued -= item.cost
        self._queued_bytes -= item.nbytes
        _resolve(item.future, outcome)

    # ---- the commit task ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._commit_forever()
        except Exception as exc:  # a bug here: fail whoever waits rather than leave them hanging
            log.exception("the store writer stopped")
            self._closing = True
            self._fail(list(self._queue), exc)
            self._queue.clear()

    async def _commit_forever(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            head = queue[0]
            if isinstance(head, _Put):
                queue.popleft()
                await self._commit_put(head)
            else:
                await self._commit(self._take_batch())

    def _take_batch(self) -> list[_Append]:
        """The appends at the head of the queue, up to ``max_batch`` messages (at least one)."""
        queue = self._queue
        batch: list[_Append] = []
        size = 0
        while queue and isinstance(head := queue[0], _Append):
            if batch and size + len(head.messages) > self.max_batch:
                break
            batch.append(head)
            size += len(head.messages)
            queue.popleft()
        return batch

    async def _commit(self, batch: list[_Append]) -> None:
        messages = [m for item in batch for m in item.messages]
        marks: dict[tuple[str, int], int] = {}
        for item in batch:
            for key, seq in item.high_water.items():
                marks[key] = max(seq, marks.get(key, 0))
        try:
            elapsed = await self._in_thread(_timed, self._store.append, messages, marks)
        except LocalProtocolError as exc:
            if len(batch) > 1:  # one bad submission must not fail the others: commit each alone
                for item in batch:
                    await self._commit([item])
                return
            self._fail(batch, exc)
        except Exception as exc:
            self._fail(batch, exc)
        else:
            stats = self.stats
            stats.commits += 1
            stats.messages += len(messages)
            stats.commit_s_total += elapsed
            stats.recent_commit_s.append(elapsed)
            for item in batch:
                self._done(item, None)

    async def _commit_put(self, item: _Put) -> None:
        record = item.record
        try:
            if isinstance(record, RoomRecord):
                await self._in_thread(self._store.put_room, record)
            else:
                await self._in_thread(self._store.put_epoch, record)
        except Exception as exc:
            self._fail([item], exc)
        else:
            self._done(item, None)

    def _fail(self, items: Sequence[_Append | _Put], exc: Exception) -> None:
        self.stats.failed_commits += 1
        log.warning("store commit of %d submission(s) failed: %r", len(items), exc)
        for item in items:
            error: GatewayError
            if isinstance(exc, LocalProtocolError):
                error = LocalProtocolError(exc.message)
            else:
                error = StoreError(f"store unavailable: {exc}")
            self._done(item, error)

    async def _in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # ---- reading (on the store's thread) --------------------------------------------------------

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` (a call on the store) on the store's thread.

        Raises Rejected: ``RATE_LIMITED`` when ``max_reads`` calls are already waiting,
        ``SHUTTING_DOWN`` after :meth:`close`; and whatever ``fn`` raises.
        """
        if self._closing:
            raise Rejected("the store is shutting down", code=ErrorCode.SHUTTING_DOWN)
        if self._reads >= self.max_reads:
            self.stats.rejected += 1
            raise Rejected("too many store reads waiting; retry later", code=ErrorCode.RATE_LIMITED)
        self._reads += 1
        try:
            return await self._in_thread(fn, *args, **kwargs)
        finally:
            self._reads -= 1

    async def read(
        self, room: str, shard: int, from_seq: int, to_seq: int, limit: int
    ) -> list[StoredMessage]:
        """:meth:`Store.read <gateway.store.base.Store.read>` on the store's thread."""
        return await self.call(self._store.read, room, shard, from_seq, to_seq, limit)

    async def read_after(
        self, room: str, after: Mapping[int, int], limit: int
    ) -> list[StoredMessage]:
        """:meth:`Store.read_after <gateway.store.base.Store.read_after>` (history)."""
        return await self.call(self._store.read_after, room, dict(after), limit)

    async def rooms(self) -> list[RoomRecord]:
        return await self.call(self._store.rooms)

    async def epochs(self, room: str) -> list[EpochRecord]:
        return await self.call(self._store.epochs, room)

    async def high_water(self, room: str) -> dict[int, int]:
        return await self.call(self._store.high_water, room)

    async def trim(self, now_ms: int, retention: Retention, *, chunk_rows: int = 10_000) -> int:
        """Apply retention in commits of at most ``chunk_rows`` deletions, letting group commits
        run between them; return how many messages were dropped."""
        total = 0
        while True:
            dropped = await self.call(self._store.trim, now_ms, retention, max_rows=chunk_rows)
            total += dropped
            if dropped < chunk_rows:
                return total

    @property
    def commit_latency_s(self) -> tuple[float, ...]:
        """Durations of the most recent commits in seconds, oldest first (see WriterStats)."""
        return tuple(self.stats.recent_commit_s)


def _timed(
    append: Callable[[Sequence[StoredMessage], Mapping[tuple[str, int], int]], None],
    messages: Sequence[StoredMessage],
    marks: Mapping[tuple[str, int], int],
) -> float:
    start = time.perf_counter()
    append(messages, marks)
    return time.perf_counter() - start


def _resolve(future: asyncio.Future[None], outcome: Exception | None) -> None:
    if future.done():  # the caller cancelled it; the commit happened (or failed) all the same
        return
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
