"""What every benchmark client process shares, whatever it speaks (:mod:`bench.swarm` for Skein,
:mod:`bench.nats_swarm` for NATS): the tally of what its subscribers saw, the paced publishing
schedule, how subscribers are spread over rooms, and the stdin/stdout command loop that
:mod:`bench.load` drives.

The command protocol is one command a line on stdin, one JSON object a line on stdout per
command, in order; a command that fails answers ``{"error": "..."}`` instead of ending the process.
End of input ends the process (after ``on_exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from loadgen.payload import Payload, decode_body, encode_body
from loadgen.stats import encode, new_histogram, record_us

__all__ = [
    "OPEN_ROUNDS",
    "ClientProcess",
    "Command",
    "Paced",
    "Tally",
    "await_line",
    "body",
    "missing_rooms",
    "open_missing",
    "record_latency",
    "room_names",
    "serve",
    "serve_process",
    "supervised",
]

Command = Callable[..., Awaitable[dict[str, Any]]]


def room_names(base: str, rooms: int) -> list[str]:
    """The names of ``rooms`` rooms: ``[base]`` for one room (the hot room the single-room suites
    use), else ``base-0 .. base-(rooms-1)``. Valid as Skein room names and as NATS subjects."""
    if rooms < 1:
        raise ValueError(f"rooms must be >= 1, got {rooms}")
    return [base] if rooms == 1 else [f"{base}-{k}" for k in range(rooms)]


def missing_rooms(first: int, count: int, rooms: int, live: Sequence[int]) -> list[int]:
    """The room of each subscriber still to open. A process holds the subscribers with global
    indices ``first .. first+count-1``; subscriber ``i`` belongs in room ``i % rooms`` (so the
    fleet's subscribers spread evenly over the rooms whatever the split between processes);
    ``live`` is the room of each live subscriber. Returns one room index per subscriber missing,
    ascending."""
    want = Counter((first + i) % rooms for i in range(count))
    want.subtract(Counter(live))
    return sorted(room for room, n in want.items() for _ in range(max(0, n)))


@dataclass(slots=True)
class Tally:
    """What a process's sessions saw since the last reset."""

    messages: int = 0  # delivered (tombstones not counted)
    tombstones: int = 0  # deliveries the server shed: a tombstone came instead
    batches: int = 0  # Deliver frames (Skein) or messages (NATS: no batches)
    acks: int = 0
    errors: int = 0  # Error frames (Skein) or client-side errors (NATS)
    lost: int = 0  # live sessions the server (or the network) ended
    latency: Any = field(default_factory=new_histogram)  # microseconds, sampled sessions only
    since_ns: int = field(default_factory=time.monotonic_ns)

    def as_json(self) -> dict[str, Any]:
        """The counters, the latency HDR-encoded, and the seconds they were counted over (by
        this process's clock: a busy parent reading late does not stretch the window)."""
        out: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__slots__
            if name not in ("latency", "since_ns")
        }
        out["latency"] = encode(self.latency)
        out["elapsed_s"] = (time.monotonic_ns() - self.since_ns) / 1e9
        return out


def record_latency(tally: Tally, message_body: bytes, now_ns: int) -> None:
    """Record the latency of a benchmark body received at ``now_ns`` (from the time its
    publisher meant to send it; every process on the machine shares CLOCK_MONOTONIC). Bodies that
    are not benchmark payloads are ignored."""
    sent = decode_body(message_body)
    if sent is not None:
        record_us(tally.latency, (now_ns - sent.intended_ns) / 1000)


def body(index: int, intended_ns: int, size: int) -> bytes:
    """Message ``index``'s body: the loadgen payload (its intended send time) padded to ``size``."""
    return encode_body(Payload(intended_ns, 0, index + 1), size)


Emit = Callable[[list[tuple[int, int]]], Awaitable[None]]


class Paced:
    """Calls ``emit`` with the messages that came due, as ``(index, intended_ns)`` for index
    0, 1, 2, ... at ``rate_per_s``, until :meth:`stop`; woken late, it emits every message that came
    due in one call, each still stamped with the time it was due (no coordinated omission)."""

    def __init__(self, rate_per_s: float, emit: Emit) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        self.sent = 0
        self.worst_lag_ns = 0  # the most it fell behind its schedule
        self.prefix = os.urandom(4).hex()  # distinct client message ids per run
        self._emit = emit
        self._period_ns = 1e9 / rate_per_s
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        period_ns = self._period_ns
        start = time.monotonic_ns()
        while True:
            now = time.monotonic_ns()
            due = int((now - start) / period_ns) + 1
            if due > self.sent:
                self.worst_lag_ns = max(self.worst_lag_ns, now - start - int(self.sent * period_ns))
                batch = [(i, start + int(i * period_ns)) for i in range(self.sent, due)]
                self.sent = due
                await self._emit(batch)
            wake = start + self.sent * period_ns
            await asyncio.sleep(max(0.0, (wake - time.monotonic_ns()) / 1e9))

    async def stop(self) -> None:
        """Cancel the schedule and wait until it stopped."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class ClientProcess(Protocol):
    """What a client process (a Skein swarm or a NATS swarm) answers on its command line."""

    @property
    def open(self) -> Command: ...
    @property
    def reset(self) -> Command: ...
    @property
    def snap(self) -> Command: ...
    @property
    def close(self) -> Command: ...
    @property
    def publish(self) -> Command: ...
    @property
    def stop(self) -> Command: ...


async def serve_process(swarm: ClientProcess) -> None:
    """Answer the fleet's commands (open, reset, snap, close, publish, stop) from stdin until it
    ends, then close ``swarm``."""
    commands: dict[str, Command] = {
        "open": swarm.open,
        "reset": swarm.reset,
        "snap": swarm.snap,
        "close": swarm.close,
        "publish": swarm.publish,
        "stop": swarm.stop,
    }
    await serve(commands, swarm.close)


def await_line(
    proc: subprocess.Popen[str],
    output: MutableSequence[str],
    marker: str,
    what: str,
    timeout_s: float,
) -> None:
    """Read ``proc``'s output into ``output`` until a line holds ``marker``. Raises RuntimeError
    (with the last output) if ``what`` exits first or does not get there within ``timeout_s``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        output.append(line)
        if marker in line:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{''.join(output)}")
    raise RuntimeError(f"{what} did not start in time:\n{''.join(output)}")


T = TypeVar("T")
OPEN_ROUNDS = 3  # a client whose handshake failed is tried again this many rounds


async def open_missing(
    live: list[T],
    room_of: Callable[[T], int],
    opened: int,
    first: int,
    count: int,
    rooms: int,
    one: Callable[[int, int], Awaitable[T]],
) -> tuple[int, dict[str, Any]]:
    """Open clients with ``one(index, room_index)`` until ``count`` are live (appended to
    ``live``), each in its room (:func:`missing_rooms`), for at most ``OPEN_ROUNDS`` rounds: one
    lost Initial should not sink a benchmark of a thousand. ``opened`` counts clients ever
    opened (their indexes). Returns the new ``opened`` and the reply to the ``open`` command."""
    failed: list[BaseException] = []
    for _ in range(OPEN_ROUNDS):
        need = missing_rooms(first, count, rooms, [room_of(c) for c in live])
        if not need:
            break
        base, opened = opened, opened + len(need)
        results = await asyncio.gather(
            *(one(base + i, r) for i, r in enumerate(need)), return_exceptions=True
        )
        live += [r for r in results if not isinstance(r, BaseException)]
        failed = [r for r in results if isinstance(r, BaseException)]
    note = repr(failed[0]) if failed else ""
    return opened, {"live": len(live), "failed": len(failed), "note": note}


class Logged(Protocol):
    """A server process's kept output and how many error lines it wrote."""

    @property
    def output(self) -> MutableSequence[str]: ...

    errors_logged: int


@contextlib.contextmanager
def supervised(
    proc: subprocess.Popen[str],
    logged: Logged,
    ready: str,
    what: str,
    timeout_s: float,
    is_error: Callable[[str], bool],
) -> Iterator[None]:
    """Wait until ``proc`` prints a line holding ``ready`` (see :func:`await_line`), keep reading
    its output into ``logged`` (counting ``is_error`` lines) in a thread, and terminate it
    (kill after 10 s) when the block ends, however it ends."""

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            logged.output.append(line)
            if is_error(line):
                logged.errors_logged += 1

    try:
        await_line(proc, logged.output, ready, what, timeout_s)
        threading.Thread(target=pump, daemon=True).start()
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def serve(commands: dict[str, Command], on_exit: Callable[[], Awaitable[Any]]) -> None:
    """Answer commands from stdin until it ends, then await ``on_exit()``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        name, *args = line.decode().split()
        try:
            reply = await commands[name](*args)
        except Exception as exc:  # the benchmark reads the failure instead of hanging
            reply = {"error": repr(exc)}
        print(json.dumps(reply), flush=True)
    await on_exit()
