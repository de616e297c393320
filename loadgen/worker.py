"""A worker process: runs its share of the clients on one event loop and reports to the runner.

The runner starts each worker with :func:`worker_entry` (multiprocessing, spawn context) and a
:class:`WorkerSpec`, then they talk over a pipe in phases (messages are ``(kind, value)`` tuples):

==============================  =================================================================
worker -> runner                runner -> worker
==============================  =================================================================
``progress`` {counter: int}     (every ``progress_interval_s``, all along)
``ready`` {connected, failed,   once every client has connected and joined (or failed to)
errors}
                                ``go`` start_ns: publishing and handoffs start at ``start_ns``
``published`` Expected         acked publishes per room by priority, and the numbers of the acked
                                reliable ones per room and publisher, once all are settled
                                ``expect`` Expected: the same over all workers
``result`` Snapshot             after draining (until every client has what it should, or
                                ``drain_s``) and closing every client
``error`` traceback             if anything escaped; the worker then exits
                                ``stop``: the run is abandoned (instead of ``go`` or ``expect``)
==============================  =================================================================

Every room is joined by all its members before anyone publishes, so each member of a room should
receive every acked publish to it: that is the loss check (by count per priority, and for reliable
messages by identity: see :class:`loadgen.context.Expected`). A worker whose pipe closes (the runner
went away) stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from loadgen.auth import TokenSource
from loadgen.context import DEFAULT_RELIABLE_ROOMS, Expected, SimContext, resolve_target
from loadgen.scenario import Scenario
from loadgen.schedule import HandoffMode, RoomPicker, client_rng
from loadgen.sim import SimClient
from loadgen.stats import Recorder

__all__ = ["WorkerSpec", "worker_entry"]

MAX_ERRORS_REPORTED = 5
CONNECT_ATTEMPTS = 3
CONNECT_RETRY_S = 0.5  # backoff before attempt n+1: n times this
DRAIN_SETTLE_S = 5.0
_PROGRESS_KEYS = (
    "connected",
    "connect_failed",
    "delivered",
    "publish_failed",
    "migrate_ok",
    "migrate_failed",
    "reconnect_ok",
    "reconnect_failed",
    "duplicates",
    "order_violations",
    "stalls",
    "comebacks",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSpec:
    """One worker's share of a run: the global ``indices`` of its clients, and how to run them
    (``tokens`` and ``reliable_rooms``: see :class:`loadgen.context.SimContext`)."""

    worker_id: int
    scenario: Scenario
    indices: tuple[int, ...]
    target_url: str
    mode: HandoffMode
    run_id: str
    bucket_s: float
    connect_concurrency: int
    client_options: dict[str, Any] = field(default_factory=dict)
    tokens: TokenSource | None = None
    reliable_rooms: tuple[str, ...] = DEFAULT_RELIABLE_ROOMS
    progress_interval_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.indices or self.connect_concurrency < 1 or self.bucket_s <= 0:
            raise ValueError("a worker needs clients, connect_concurrency >= 1 and bucket_s > 0")


class _Stopped(Exception):
    """The runner sent ``stop``: the run is abandoned (clients are still closed cleanly)."""


def _raise_fd_limit() -> None:
    """Each client holds a socket, and a relay three more: lift the soft limit to the hard one."""
    try:
        import resource
    except ImportError:  # not on Unix: nothing to do
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_entry(conn: Connection, spec: WorkerSpec) -> None:
    """The worker process's main: run the phases, report, exit."""
    # Every failure is counted and reported; the SDK's own log lines would only garble the display.
    logging.getLogger("skein").setLevel(logging.CRITICAL)
    _raise_fd_limit()
    try:
        asyncio.run(_Worker(spec, conn).run())
    except (EOFError, BrokenPipeError, KeyboardInterrupt, _Stopped):
        pass  # the runner gave up, is gone or interrupted us: nobody to report to
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Worker:
    def __init__(self, spec: WorkerSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        self.recorder = Recorder(origin_ns=0, bucket_s=spec.bucket_s)
        self.sims: list[SimClient] = []
        self.errors: list[str] = []
        self.phase = "connecting"

    def _send(self, kind: str, value: Any) -> None:
        self.conn.send((kind, value))

    async def _receive(self, kind: str) -> Any:
        message = await asyncio.to_thread(self.conn.recv)
        if isinstance(message, tuple) and message[0] == "stop":
            raise _Stopped
        if not isinstance(message, tuple) or message[0] != kind:
            raise RuntimeError(f"worker {self.spec.worker_id}: expected {kind!r}, got {message!r}")
        return message[1]

    async def run(self) -> None:
        spec, scenario = self.spec, self.spec.scenario
        target = resolve_target(spec.target_url)
        ctx = SimContext(
            scenario=scenario,
            target=target,
            mode=spec.mode,
            run_id=spec.run_id,
            client_options=spec.client_options,
            recorder=self.recorder,
            profiles=scenario.paths.profiles(),
            tokens=spec.tokens,
            reliable_rooms=spec.reliable_rooms,
        )
        progress = asyncio.get_running_loop().create_task(self._progress())
        try:
            await self._bounded([partial(self._connect, ctx, i) for i in spec.indices])
            counters = self.recorder.counters
            self._send(
                "ready",
                {
                    "connected": counters["connected"],
                    "failed": counters["connect_failed"],
                    "errors": self.errors,
                },
            )
            start_ns = int(await self._receive("go"))
            self.recorder.origin_ns = start_ns
            self.phase = "running"
            end_ns = start_ns + int(scenario.duration_s * 1e9)
            await asyncio.gather(*(sim.run(start_ns, end_ns) for sim in self.sims))
            self.phase = "draining"
            self._send("published", self._published())
            expected: Expected = await self._receive("expect")
            await self._drain(expected, time.monotonic() + scenario.drain_s)
            for sim in self.sims:
                sim.account(expected)
            self.phase = "closing"
            await self._bounded([sim.stop for sim in self.sims])
        finally:
            progress.cancel()
            for sim in self.sims:
                await sim.stop()
        self._send("result", self.recorder.snapshot())

    async def _bounded(self, jobs: list[Callable[[], Awaitable[None]]]) -> None:
        """Run ``jobs`` with at most ``connect_concurrency`` at a time."""
        gate = asyncio.Semaphore(self.spec.connect_concurrency)

        async def one(job: Callable[[], Awaitable[None]]) -> None:
            async with gate:
                await job()

        await asyncio.gather(*(one(job) for job in jobs))

    async def _connect(self, ctx: SimContext, index: int) -> None:
        """Connect client ``index`` and join its rooms, trying up to CONNECT_ATTEMPTS times (as
        an app would); retries and failures are counted and the first errors kept."""
        scenario, counters = ctx.scenario, self.recorder.counters
        ranks = RoomPicker(scenario.rooms).ranks(client_rng(scenario.seed, index, "rooms"))
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            sim = SimClient(ctx, index, attempt=attempt)
            try:
                await sim.start(ranks)
            except Exception as exc:  # any way of failing to connect counts; the run goes on
                if len(self.errors) < MAX_ERRORS_REPORTED:
                    self.errors.append(f"client {index}, attempt {attempt}: {exc!r}")
                if attempt == CONNECT_ATTEMPTS:
                    counters["connect_failed"] += 1
                    return
                counters["connect_retries"] += 1
                await asyncio.sleep(CONNECT_RETRY_S * attempt)
                continue
            counters["connected"] += 1
            self.sims.append(sim)
            return

    def _published(self) -> Expected:
        totals: dict[str, list[int]] = {}
        reliable: dict[str, dict[int, list[int]]] = {}
        for sim in self.sims:
            for room, counts in sim.acked.items():
                total = totals.setdefault(room, [0, 0, 0])
                for i, count in enumerate(counts):
                    total[i] += count
            for room, numbers in sim.acked_reliable.items():
                if numbers:
                    reliable.setdefault(room, {})[sim.index] = list(numbers)
        return Expected(totals, reliable)

    async def _drain(self, expected: Expected, deadline: float) -> None:
        """Wait until every client has every message it should, or until ``deadline``; or, once
        every client still there has every reliable message, until nothing more has arrived for
        :data:`DRAIN_SETTLE_S` (what is missing then is gone: chatter and normal messages shed,
        or fanned out by a gateway that crashed before storing anything about them)."""
        last, since = -1, time.monotonic()
        while (now := time.monotonic()) < deadline:
            missing = sum(sim.missing(expected) for sim in self.sims)
            if missing == 0:
                return
            if missing != last:
                last, since = missing, now
            elif now - since >= DRAIN_SETTLE_S and not any(
                sim.unreceived(expected) for sim in self.sims if not sim.gone
            ):
                return
            await asyncio.sleep(0.1)

    async def _progress(self) -> None:
        counters = self.recorder.counters
        while True:
            report: dict[str, Any] = {key: counters[key] for key in _PROGRESS_KEYS}
            report["published"] = sum(v for k, v in counters.items() if k.startswith("published:"))
            report["acked"] = sum(v for k, v in counters.items() if k.startswith("acked:"))
            report["handoffs"] = sum(v for k, v in counters.items() if k.startswith("handoff:"))
            report["phase"] = self.phase
            self._send("progress", report)
            await asyncio.sleep(self.spec.progress_interval_s)
