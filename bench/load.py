"""Drive a hot room (or many rooms) at a fixed load and measure what the gateway does with it.

A :class:`Fleet` is a few :mod:`bench.swarm` processes holding the subscribers, plus one more
that publishes; all of them run the client QUIC engine (qh3 by default: its native packet core
takes the least CPU from the gateway on the shared cores). The subscribers are in one room
(:data:`ROOM`) or spread evenly over ``rooms`` rooms, and the publisher publishes ``rate_per_s``
into each. :func:`measure` runs the publisher at a fixed rate, lets the rooms warm up, then
measures a steady window: the server's CPU time from /proc, the deliveries the subscribers
counted, the latency the sampled subscribers saw, what the server shed (from its /metrics) and
how busy the clients were (so a reader can tell whether the clients, not the server, were the
limit).

The server is anything that offers :class:`Server`: the gateway (:class:`RunningGateway`), or
a peer measured the same way (:mod:`bench.natsd`, with :mod:`bench.nats_swarm` clients that
answer the same commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import psutil

from bench.common import median
from bench.gateway import RunningGateway, bench_config, gateway_process
from loadgen.stats import Summary, encode, merge_encoded

__all__ = [
    "FULL",
    "QUICK",
    "ROOM",
    "Fleet",
    "Measurement",
    "Server",
    "Tallies",
    "Timing",
    "Window",
    "fleet",
    "gateway_config",
    "in_hot_room",
    "measure",
    "measure_window",
    "medians",
    "repeat",
    "summary_note",
]

T = TypeVar("T")

ROOM = "hot"
BODY_BYTES = 100
CLIENT_ENGINE = "qh3"
SAMPLED_PER_PROCESS = 4  # sessions per process that decode in full and record latency
REPLY_TIMEOUT_S = 300.0
QUIET_S = 0.5  # the room is drained once no delivery arrived for this long


@dataclass(frozen=True, slots=True)
class Timing:
    """How long each measurement is, and how many make a median."""

    runs: int
    warmup_s: float
    window_s: float


FULL = Timing(runs=3, warmup_s=2.0, window_s=5.0)
QUICK = Timing(runs=1, warmup_s=0.5, window_s=1.5)  # checks the suite works, not how fast


class Server(Protocol):
    """What :func:`measure` reads from the server under test."""

    @property
    def url(self) -> str:
        """Where clients connect (the command word the client processes get)."""
        ...

    @property
    def ca_file(self) -> str:
        """The CA file clients verify the server with ("-" when there is none)."""
        ...

    @property
    def errors_logged(self) -> int:
        """Error lines the server has logged so far."""
        ...

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        ...

    def cpu_wait_seconds(self) -> float:
        """How long the server has been runnable but waiting for a core, so far."""
        ...

    def udp_drops(self) -> int:
        """Datagrams the kernel dropped at the server's sockets so far (0 over TCP)."""
        ...

    def metrics(self) -> dict[str, float]:
        """Counters by the gateway's Prometheus names (blocking: call it in a thread)."""
        ...


def gateway_config(core: str = "") -> str:
    """The benchmark gateway, with ``core`` lines for its [core] table. The QUIC idle timeout
    is long: subscribers sit idle between measurements and send no keep-alives."""
    return bench_config(core=core, server="idle_timeout_s = 300.0\n")


class _Child:
    """One swarm process and its command line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ps = psutil.Process(proc.pid)

    async def ask(self, *words: object) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), REPLY_TIMEOUT_S)
        if not line:
            raise RuntimeError(f"a swarm process exited ({self.proc.returncode}) on {words[0]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"swarm {words[0]} failed: {reply['error']}")
        return reply

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _spawn(engine: str, module: str) -> _Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "SKEIN_QUIC_ENGINE": engine},
    )
    return _Child(proc)


@dataclass(frozen=True, slots=True)
class Tallies:
    """The subscribers' counters summed over processes, the latency merged exactly."""

    messages: int
    tombstones: int
    batches: int
    errors: int
    lost: int
    latency: Summary
    messages_per_s: float  # each process's count over its own window, summed
    udp_drops: int  # datagrams the subscribers' sockets dropped
    histogram: str = ""  # the merged latency histogram, HDR-encoded (to merge windows exactly)


class Fleet:
    """Subscriber processes (each with its share of ``subscribers``) and a publisher process;
    the subscribers spread evenly over ``rooms`` rooms (:func:`bench.clientproc.room_names`),
    about ``sampled`` per process recording latency."""

    def __init__(
        self,
        subs: list[_Child],
        publisher: _Child,
        subscribers: int,
        rooms: int = 1,
        sampled: int = SAMPLED_PER_PROCESS,
    ) -> None:
        self.subs = subs
        self.publisher = publisher
        self.subscribers = subscribers
        self.rooms = rooms
        self.sampled = sampled
        self.url = self.ca = ""

    async def open(self, gw: Server) -> None:
        """Connect (or top up) every subscriber to ``gw``. Raises if some can't be opened."""
        self.url, self.ca = gw.url, gw.ca_file
        shares = _shares(self.subscribers, len(self.subs))
        firsts = [sum(shares[:i]) for i in range(len(shares))]
        every = max(1, math.ceil(self.subscribers / len(self.subs) / self.sampled))
        replies = await asyncio.gather(
            *(
                child.ask("open", self.url, self.ca, ROOM, share, every, self.rooms, first)
                for child, share, first in zip(self.subs, shares, firsts, strict=True)
            )
        )
        live = sum(r["live"] for r in replies)
        if live < self.subscribers:
            notes = "; ".join(r["note"] for r in replies if r["note"])
            raise RuntimeError(f"only {live} of {self.subscribers} subscribers joined: {notes}")

    async def reset(self) -> None:
        await asyncio.gather(*(child.ask("reset") for child in self.subs))

    async def snap(self) -> Tallies:
        replies = await asyncio.gather(*(child.ask("snap") for child in self.subs))
        latency = merge_encoded(r["latency"] for r in replies)

        def total(name: str) -> int:
            return sum(int(r[name]) for r in replies)

        return Tallies(
            total("messages"),
            total("tombstones"),
            total("batches"),
            total("errors"),
            total("lost"),
            Summary.of(latency),
            sum(r["messages"] / max(1e-9, r["elapsed_s"]) for r in replies),
            total("udp_drops"),
            encode(latency),
        )

    async def publish(self, rate_per_s: float) -> None:
        """Start publishing at ``rate_per_s`` into each room; returns once the publisher joined."""
        await self.publisher.ask(
            "publish", self.url, self.ca, ROOM, rate_per_s, BODY_BYTES, self.rooms
        )

    async def stop_publishing(self) -> dict[str, Any]:
        """Stop; returns what the publisher sent, what was acked and its worst lag."""
        return await self.publisher.ask("stop")

    def cpu_seconds(self) -> float:
        """CPU time of every client process (subscribers and publisher) so far."""
        return sum(self.cpu_by_process())

    def cpu_by_process(self) -> list[float]:
        """CPU time of each client process so far: the subscribers', then the publisher's."""
        return [child.cpu_seconds() for child in (*self.subs, self.publisher)]

    async def first_delivery(self, limit_s: float = 30.0) -> None:
        """Wait until a subscriber has been delivered something since the last reset."""
        await self.reset()
        for _ in range(round(limit_s / 0.02)):
            if (await self.snap()).messages:
                return
            await asyncio.sleep(0.02)

    async def quiesce(self, limit_s: float = 15.0) -> None:
        """Wait until deliveries stop (what an overloaded run left queued has drained)."""
        deadline = time.monotonic() + limit_s
        last = -1
        while time.monotonic() < deadline:
            count = (await self.snap()).messages
            if count == last:
                return
            last = count
            await asyncio.sleep(QUIET_S)


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


@contextlib.asynccontextmanager
async def fleet(
    subscribers: int,
    processes: int,
    *,
    engine: str = CLIENT_ENGINE,
    rooms: int = 1,
    module: str = "bench.swarm",
    sampled_per_process: int = SAMPLED_PER_PROCESS,
) -> AsyncIterator[Fleet]:
    """Start the client processes (``python -m module``, which answers the commands of
    :mod:`bench.swarm`); stop them on exit. ``open(gw)`` connects the subscribers."""
    processes = max(1, min(processes, subscribers))
    children = await asyncio.gather(*(_spawn(engine, module) for _ in range(processes + 1)))
    try:
        yield Fleet(list(children[:-1]), children[-1], subscribers, rooms, sampled_per_process)
    finally:
        await asyncio.gather(*(child.stop() for child in children))


@dataclass(frozen=True, slots=True)
class Measurement:
    """One steady window at a fixed load. Rates are per second of the window."""

    subscribers: int
    rate_per_s: float
    window_s: float
    offered_per_s: float  # rate x subscribers
    delivered_per_s: float  # counted by the subscribers
    cpu_us_per_delivery: float  # the gateway's CPU / deliveries counted
    gateway_cpu_percent: float  # of one core
    gateway_wait_percent: float  # runnable but waiting for a core (the machine was busy)
    load_avg_1m: float  # the machine's load average at the end of the window (2 cores: > 2 is busy)
    clients_cpu_percent: float  # all client processes together, of one core
    gateway_deliveries_per_s: float  # as the gateway counts them (its /metrics)
    shed: int  # deliveries the gateway shed (tombstones sent instead), in the window
    tombstones: int  # tombstones the subscribers counted
    slow_consumer_disconnects: int
    gateway_udp_drops: int  # datagrams the kernel dropped at the gateway's full socket buffer
    subscriber_udp_drops: int  # and at the subscribers' sockets
    sessions_lost: int
    errors: int
    gateway_errors_logged: int  # error lines in the gateway's log during the window
    publish_lag_ms_max: float  # how far the publisher fell behind its own schedule
    published: int
    acked: int
    latency: dict[str, float | int]  # loadgen Summary of the sampled subscribers, ms
    rooms: int = 1  # the subscribers spread over this many rooms, rate_per_s into each
    busiest_client_cpu_percent: float = 0.0  # the busiest single client process, of one core

    @property
    def achieved(self) -> float:
        """Delivered / offered."""
        return self.delivered_per_s / self.offered_per_s if self.offered_per_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "achieved": round(self.achieved, 4)}


@dataclass(frozen=True, slots=True)
class Window:
    """What was read at the start and the end of a measurement window."""

    elapsed_s: float
    tallies: Tallies
    gateway_cpu_s: float
    gateway_wait_s: float
    clients_cpu_s: tuple[float, ...]  # each client process's
    gateway_udp_drops: int
    gateway_errors_logged: int
    metrics: tuple[dict[str, float], dict[str, float]]

    def delta(self, name: str) -> int:
        """How much a gateway counter (summed over its labels) grew in the window."""
        before, after = self.metrics
        return int(after.get(name, 0.0) - before.get(name, 0.0))


async def measure_window(gw: Server, swarm: Fleet, window_s: float) -> Window:
    """Read the server and the fleet, wait ``window_s``, read them again: what happened in
    between (the fleet's tallies are reset at the start). The load must already be running."""
    metrics0 = await asyncio.to_thread(gw.metrics)
    await swarm.reset()
    cpu0, clients0, t0 = gw.cpu_seconds(), swarm.cpu_by_process(), time.monotonic()
    drops0, wait0, logged0 = gw.udp_drops(), gw.cpu_wait_seconds(), gw.errors_logged
    await asyncio.sleep(window_s)
    tallies = await swarm.snap()
    cpu1, clients1, t1 = gw.cpu_seconds(), swarm.cpu_by_process(), time.monotonic()
    drops1, wait1 = gw.udp_drops(), gw.cpu_wait_seconds()
    metrics1 = await asyncio.to_thread(gw.metrics)
    return Window(
        t1 - t0,
        tallies,
        cpu1 - cpu0,
        wait1 - wait0,
        tuple(b - a for a, b in zip(clients0, clients1, strict=True)),
        drops1 - drops0,
        gw.errors_logged - logged0,
        (metrics0, metrics1),
    )


async def measure(
    gw: Server, swarm: Fleet, rate_per_s: float, *, warmup_s: float, window_s: float
) -> Measurement:
    """Publish at ``rate_per_s`` into each of the fleet's rooms; measure a window of ``window_s``
    after ``warmup_s``; stop and wait for the rooms to drain. The fleet must be open on ``gw``.
    Offered deliveries are ``rate_per_s`` x subscribers (each subscriber is in one room)."""
    await swarm.open(gw)  # tops up sessions an earlier overload cost
    await swarm.publish(rate_per_s)
    try:
        await swarm.first_delivery()
        await asyncio.sleep(warmup_s)
        window = await measure_window(gw, swarm, window_s)
    finally:
        published = await swarm.stop_publishing()
    await swarm.quiesce()
    elapsed, tallies = window.elapsed_s, window.tallies
    return Measurement(
        subscribers=swarm.subscribers,
        rate_per_s=rate_per_s,
        window_s=round(elapsed, 3),
        offered_per_s=rate_per_s * swarm.subscribers,
        delivered_per_s=tallies.messages_per_s,
        cpu_us_per_delivery=window.gateway_cpu_s / max(1, tallies.messages) * 1e6,
        gateway_cpu_percent=window.gateway_cpu_s / elapsed * 100,
        gateway_wait_percent=window.gateway_wait_s / elapsed * 100,
        load_avg_1m=os.getloadavg()[0],
        clients_cpu_percent=sum(window.clients_cpu_s) / elapsed * 100,
        gateway_deliveries_per_s=window.delta("skein_deliveries_total") / elapsed,
        shed=window.delta("skein_shed_messages_total"),
        tombstones=tallies.tombstones,
        slow_consumer_disconnects=window.delta("skein_slow_consumer_disconnects_total"),
        gateway_udp_drops=window.gateway_udp_drops,
        subscriber_udp_drops=tallies.udp_drops,
        sessions_lost=tallies.lost,
        errors=tallies.errors,
        gateway_errors_logged=window.gateway_errors_logged,
        publish_lag_ms_max=float(published["lag_ms_max"]),
        published=int(published["sent"]),
        acked=int(published["acked"]),
        latency=tallies.latency.as_dict(),
        rooms=swarm.rooms,
        busiest_client_cpu_percent=max(window.clients_cpu_s) / elapsed * 100,
    )


def medians(runs: Sequence[Measurement]) -> dict[str, float]:
    """The median of each number over ``runs`` (latency percentiles included, as ``p99_ms``...)."""
    keys = (
        "delivered_per_s",
        "gateway_deliveries_per_s",
        "cpu_us_per_delivery",
        "gateway_cpu_percent",
        "gateway_wait_percent",
        "load_avg_1m",
        "clients_cpu_percent",
        "busiest_client_cpu_percent",
        "gateway_udp_drops",
        "shed",
        "publish_lag_ms_max",
    )
    out = {key: median([float(getattr(run, key)) for run in runs]) for key in keys}
    out["achieved"] = median([run.achieved for run in runs])
    for name in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
        out[name] = median([float(run.latency[name]) for run in runs])
    return out


async def repeat(gw: Server, swarm: Fleet, rate_per_s: float, timing: Timing) -> list[Measurement]:
    """``timing.runs`` measurements at ``rate_per_s``, one after the other."""
    return [
        await measure(gw, swarm, rate_per_s, warmup_s=timing.warmup_s, window_s=timing.window_s)
        for _ in range(timing.runs)
    ]


def in_hot_room(
    engine: str,
    subscribers: int,
    work: Callable[[RunningGateway, Fleet], Awaitable[T]],
    *,
    core: str = "",
    rooms: int = 1,
    processes: int | None = None,
    sampled_per_process: int = SAMPLED_PER_PROCESS,
) -> T:
    """Start a gateway with the QUIC ``engine`` and ``subscribers`` light subscribers in its hot
    room, or spread over ``rooms`` rooms (over ``processes`` client processes; by default 2, 4
    from 250 subscribers; about ``sampled_per_process`` of each recording latency), run
    ``work(gateway, fleet)``, stop everything and return what ``work`` returned."""
    processes = processes or (2 if subscribers < 250 else 4)

    async def run(gw: RunningGateway) -> T:
        async with fleet(
            subscribers, processes, rooms=rooms, sampled_per_process=sampled_per_process
        ) as swarm:
            await swarm.open(gw)
            return await work(gw, swarm)

    with gateway_process(gateway_config(core), engine=engine, admin=True) as gw:
        try:
            return asyncio.run(run(gw))
        except Exception as exc:
            raise RuntimeError(f"{exc}; the gateway said:\n{gw.last_output()}") from exc


def summary_note(runs: Sequence[Measurement]) -> str:
    """One line saying how the figure was measured and what the load did (medians)."""
    m = medians(runs)
    first = runs[0]
    rooms = f" in {first.rooms} rooms" if first.rooms > 1 else ""
    return (
        f"median of {len(runs)} x {first.window_s:.0f} s; {first.subscribers} subscribers{rooms} x "
        f"{first.rate_per_s:g} msgs/s, {BODY_BYTES} B: delivered {m['delivered_per_s']:,.0f}/s of "
        f"{first.offered_per_s:,.0f}/s offered ({m['achieved']:.0%}); gateway CPU "
        f"{m['gateway_cpu_percent']:.0f}% of a core (+{m['gateway_wait_percent']:.0f}% waiting "
        f"for one), clients {m['clients_cpu_percent']:.0f}%, load {m['load_avg_1m']:.1f}; shed "
        f"{m['shed']:,.0f}, p99 {m['p99_ms']:,.0f} ms"
    )
