"""Run a scenario: spawn the worker processes, drive them through the phases, merge what they saw.

:func:`run_load` is a coroutine and never blocks its loop (a gateway may share it, as in the tests):
each worker's pipe is read by a small thread that hands messages to the loop. The phases and the
messages are described in :mod:`loadgen.worker`. Bounds: each worker sends at most four control
messages (kept in a queue sized for them) and a stream of progress reports of which only the latest
per worker is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from loadgen.auth import TokenSource
from loadgen.context import DEFAULT_RELIABLE_ROOMS, Expected
from loadgen.results import build_summary
from loadgen.sampler import Sample, Sampler
from loadgen.scenario import Scenario
from loadgen.schedule import HandoffMode
from loadgen.stats import Merged, Snapshot, merge, timeline_bucket_s
from loadgen.worker import WorkerSpec, worker_entry

__all__ = ["DEFAULT_TARGET", "LoadgenError", "Progress", "RunOptions", "RunResult", "run_load"]

DEFAULT_TARGET = "https://127.0.0.1:4433/v1/chat"
GO_LEAD_S = 0.5  # "go" names a start this far ahead, so every worker starts at the same instant
JOIN_TIMEOUT_S = 10.0  # for a worker process to exit after its result
MAX_CONNECT_ERRORS = 10  # connect errors quoted in the results (all are counted)


class LoadgenError(GatewayError):
    """The run could not be carried out (no client connected, a worker failed or timed out)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to run a scenario. ``workers`` processes share the clients (at most one per client);
    ``gateway_pid`` is sampled for CPU and RSS if given; ``connect_timeout_s`` bounds the connect
    phase (default: 60 s plus 50 ms per client); ``request_timeout_s`` is each client's SDK
    request timeout (connects, joins, publishes, migrations); ``idle_timeout_s`` its QUIC idle
    timeout; ``keepalive_s`` and ``dead_after_s`` its liveness policy (probe after that long
    without a packet from the gateway; drop the connection when what it sent had no answer for
    that long: how soon it notices a gateway that died without a word, see
    ``gateway/sdk/liveness.py``). ``tokens``: where clients' tokens come from (None: no token, for a
    gateway in insecure-dev mode). ``reliable_rooms``: rooms where every message is reliable (the
    gateway's ``core.group_rooms``), checked by identity like high-priority messages."""

    target_url: str = DEFAULT_TARGET
    ca_file: Path | None = None
    verify: bool = True
    workers: int = 1
    mode: HandoffMode = "scenario"
    gateway_pid: int | None = None
    connect_timeout_s: float | None = None
    request_timeout_s: float = 15.0
    idle_timeout_s: float = 30.0
    keepalive_s: float = 5.0
    dead_after_s: float = 3.0
    tokens: TokenSource | None = None
    reliable_rooms: tuple[str, ...] = DEFAULT_RELIABLE_ROOMS
    label: str = ""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        for name in ("request_timeout_s", "idle_timeout_s", "keepalive_s", "dead_after_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")


@dataclass(frozen=True, slots=True)
class Progress:
    """What the live display shows: the phase, summed worker counters and the latest sample."""

    phase: str
    elapsed_s: float
    counters: dict[str, int]
    sample: Sample | None


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run: ``summary`` is JSON-ready (see :func:`loadgen.results.build_summary`); ``merged``
    holds the histograms for plots; ``samples`` the CPU/RSS series; ``expected`` what was acked
    (per room, and the reliable messages by publisher and number)."""

    label: str
    summary: dict[str, Any]
    merged: Merged
    samples: tuple[Sample, ...]
    expected: Expected = field(default_factory=Expected)


class _Workers:
    """The worker processes, their pipes and the threads reading them."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        self.loop = asyncio.get_running_loop()
        self.control: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=8 * len(specs))
        self.progress: dict[int, dict[str, Any]] = {}
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for spec in specs:
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=worker_entry,
                args=(theirs, spec),
                daemon=True,
                name=f"loadgen-w{spec.worker_id}",
            )
            process.start()
            theirs.close()
            self.conns.append(ours)
            self.processes.append(process)
            threading.Thread(target=self._read, args=(spec.worker_id, ours), daemon=True).start()

    def _read(self, worker: int, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = ("exited", None)
            if message[0] == "progress":
                self.progress[worker] = message[1]  # latest wins
                continue
            try:
                self.loop.call_soon_threadsafe(self.control.put_nowait, (worker, message))
            except RuntimeError:  # the loop is closed: the run is over, nobody is listening
                return
            if message[0] in ("exited", "error", "result"):
                return

    def send(self, message: tuple[str, Any]) -> None:
        for conn in self.conns:
            conn.send(message)

    def stop(self) -> None:
        """Tell every worker the run is abandoned (those waiting for a phase close and exit)."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))

    async def gather(self, kind: str, timeout_s: float) -> list[Any]:
        """One ``kind`` message from every worker, in worker order. Raises LoadgenError."""
        got: dict[int, Any] = {}
        try:
            async with asyncio.timeout(timeout_s):
                while len(got) < len(self.conns):
                    worker, (what, value) = await self.control.get()
                    if what == "error":
                        raise LoadgenError(f"loadgen worker {worker} failed:\n{value}")
                    if what != kind:
                        raise LoadgenError(
                            f"loadgen worker {worker}: {what} while waiting for {kind}"
                        )
                    got[worker] = value
        except TimeoutError:
            missing = sorted(set(range(len(self.conns))) - set(got))
            raise LoadgenError(
                f"workers {missing} sent no {kind!r} within {timeout_s:.0f} s"
            ) from None
        return [got[i] for i in sorted(got)]

    def summed_progress(self) -> tuple[str, dict[str, int]]:
        reports = list(self.progress.values())
        total: Counter[str] = Counter()
        for report in reports:
            total.update({k: v for k, v in report.items() if isinstance(v, int)})
        phases = [str(r.get("phase", "")) for r in reports]
        return (min(phases, key=_PHASES.index) if phases else "starting"), dict(total)

    async def close(self) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        for process in self.processes:
            await asyncio.to_thread(process.join, max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                await asyncio.to_thread(process.join, 2.0)
            if process.is_alive():
                process.kill()
        for conn in self.conns:
            conn.close()


_PHASES = ["starting", "connecting", "running", "draining", "closing", ""]


def _specs(scenario: Scenario, options: RunOptions, run_id: str) -> list[WorkerSpec]:
    count = min(options.workers, scenario.clients)
    bucket_s = timeline_bucket_s(scenario.duration_s)
    client_options: dict[str, Any] = {
        "verify": options.verify,
        "request_timeout_s": options.request_timeout_s,
        "idle_timeout_s": options.idle_timeout_s,
        "keepalive_s": options.keepalive_s,
        "dead_after_s": options.dead_after_s,
    }
    if options.ca_file is not None:
        client_options["ca_file"] = str(options.ca_file)
    return [
        WorkerSpec(
            worker_id=w,
            scenario=scenario,
            indices=tuple(range(w, scenario.clients, count)),
            target_url=options.target_url,
            mode=options.mode,
            run_id=run_id,
            bucket_s=bucket_s,
            connect_concurrency=max(1, scenario.connect_concurrency // count),
            client_options=client_options,
            tokens=options.tokens,
            reliable_rooms=options.reliable_rooms,
        )
        for w in range(count)
    ]


def _merge_expected(parts: list[Expected]) -> Expected:
    """The workers' acked publishes together (each publisher lives in one worker)."""
    totals: dict[str, list[int]] = {}
    reliable: dict[str, dict[int, list[int]]] = {}
    for part in parts:
        for room, counts in part.counts.items():
            total = totals.setdefault(room, [0, 0, 0])
            for i, count in enumerate(counts):
                total[i] += count
        for room, by_publisher in part.reliable.items():
            reliable.setdefault(room, {}).update(by_publisher)
    return Expected(totals, reliable)


async def run_load(
    scenario: Scenario,
    options: RunOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunResult:
    """Run ``scenario`` against ``options.target_url`` and return what was measured.

    Raises :class:`LoadgenError` if no client could connect, a worker failed, or a phase overran
    its timeout; the workers are stopped in every case. ``on_progress`` is called about four times
    a second from the loop (for a live display).
    """
    run_id = secrets.token_hex(3)
    specs = _specs(scenario, options, run_id)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    origin = time.monotonic()
    workers = _Workers(specs)
    sampler = Sampler(options.gateway_pid, [p.pid for p in workers.processes if p.pid])
    tasks = [asyncio.get_running_loop().create_task(sampler.run())]
    if on_progress is not None:
        tasks.append(
            asyncio.get_running_loop().create_task(_report(workers, sampler, origin, on_progress))
        )
    try:
        connect_s = options.connect_timeout_s or 60.0 + 0.05 * scenario.clients
        ready = await workers.gather("ready", connect_s)
        connected = sum(r["connected"] for r in ready)
        if connected == 0:
            errors = "; ".join(e for r in ready for e in r["errors"][:2])
            raise LoadgenError(f"no client could connect to {options.target_url}: {errors}")
        workers.send(("go", time.monotonic_ns() + int(GO_LEAD_S * 1e9)))
        run_started_s = time.monotonic() - origin + GO_LEAD_S
        run_s = GO_LEAD_S + scenario.duration_s + 60.0  # publishes settle within their timeouts
        expected = _merge_expected(await workers.gather("published", run_s))
        workers.send(("expect", expected))
        snapshots: list[Snapshot] = await workers.gather("result", scenario.drain_s + 60.0)
    except BaseException:
        workers.stop()
        raise
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await workers.close()
    merged = merge(snapshots)
    summary = build_summary(
        label=options.label or options.mode,
        mode=options.mode,
        scenario=scenario,
        merged=merged,
        samples=sampler.samples,
        gateway_pid=options.gateway_pid,
        workers=len(specs),
        started_at=started_at,
        wall_s=time.monotonic() - origin,
        run_started_s=run_started_s,
        connect_errors=[e for r in ready for e in r["errors"]][:MAX_CONNECT_ERRORS],
    )
    return RunResult(summary["label"], summary, merged, tuple(sampler.samples), expected)


async def _report(
    workers: _Workers, sampler: Sampler, origin: float, on_progress: Callable[[Progress], None]
) -> None:
    while True:
        phase, counters = workers.summed_progress()
        on_progress(Progress(phase, time.monotonic() - origin, counters, sampler.latest))
        await asyncio.sleep(0.25)
