"""How bench/profile.py reads a profile: stack samples (py-spy raw output, or cProfile stats)
summed into buckets by the innermost frame that belongs to one (a Python frame, or a native frame
of a known library; interpreter and libc helpers count for their caller)."""

from __future__ import annotations

import collections
import pstats
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CRYPTO = "QUIC packets + crypto (aioquic)"
NATIVE = "QUIC native core (qh3, not split)"
ENGINE = "QUIC/H3 engine, other Python"
PROTOBUF = "protobuf"
LZ4 = "lz4"
IO = "asyncio + socket I/O"
SKEIN = "Skein (gateway.*)"
OTHER = "other (interpreter, GC, stdlib)"
BUCKETS = (CRYPTO, NATIVE, ENGINE, PROTOBUF, LZ4, IO, SKEIN, OTHER)

# (bucket, substrings of a frame's file or library): the first match wins, so specific first.
# fmt: off
PY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (CRYPTO, ("aioquic/quic/packet_builder", "aioquic/quic/crypto", "aioquic/_crypto",
              "aioquic/quic/recovery", "aioquic/quic/congestion", "cryptography/")),
    (ENGINE, ("aioquic/", "qh3/", "gateway/engine.py")),  # Skein's engine seam counts as engine
    (PROTOBUF, ("gateway/wire/_pb", "google/protobuf", "google/_upb")),
    (LZ4, ("lz4/",)),
    (IO, ("asyncio/", "selectors.py", "socket.py")),
    (SKEIN, ("gateway/", "bench/")),
)
LIB_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (CRYPTO, ("libcrypto", "libssl", "cryptography", "_rust")),
    (NATIVE, ("_hazmat",)),  # stripped: packets, crypto, recovery, streams can't be told apart
    (ENGINE, ("aioquic/_buffer", "aioquic._buffer", "_buffer.abi3")),
    (PROTOBUF, ("_upb", "_message.abi3")),
    (LZ4, ("lz4",)),
    (IO, ("_asyncio", "_socket", "socketmodule.c", "select")),
)
# fmt: on
# Where a sample's work started (the first frame, from the root, naming one of these): the event
# loop's callbacks that every delivery's CPU comes from.
PATHS = (
    ("fan-out tick: hub, encode, QUIC send", ("._on_timer", "._pump")),
    ("receive: ACKs (and publishes)", ("._read_ready", ".datagram_received")),
    ("QUIC timers", ("._handle_timer",)),
    ("send soon after a receive", ("transmit",)),
)
# Native functions that are a bucket wherever they live (libc's system calls, the GC).
IO_FUNCTIONS = ("sendto", "sendmsg", "recvfrom", "recvmsg", "sock_send", "sock_recv")
# A sample with one of these native frames is a thread waiting (the event loop in epoll_wait, an
# idle executor thread on its queue's lock): py-spy keeps such samples when it unwinds native
# stacks, so they are counted apart, as idle, and left out of every share.
IDLE_FUNCTIONS = frozenset(
    {"epoll_wait", "poll", "select", "PyThread_acquire_lock_timed", "pthread_cond_wait"}
    | {"pthread_cond_timedwait", "sem_wait", "sem_timedwait", "sem_clockwait", "clock_nanosleep"}
)
GC_FUNCTIONS = ("gc_collect", "collect_with_callback", "_PyObject_GC_Link", "visit_decref")
# cProfile's names of the same waits (it times them in wall-clock time).
CPROFILE_IDLE = ("of 'select.epoll'", "of 'select.", "of '_thread.lock'", "time.sleep")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a sampled stack: ``function`` in ``where`` (a Python file or a native lib)."""

    function: str
    where: str

    @property
    def native(self) -> bool:
        return not self.where.endswith(".py")


def parse_frame(text: str) -> Frame:
    """``"send (aioquic/quic/connection.py:123)"`` or ``"EVP_Cipher (libcrypto.so.3)"``; line
    numbers are dropped, so a function's samples add up whatever line they were on."""
    function, _, rest = text.rpartition(" (")
    if not function:
        return Frame(text, "")
    where = rest.rstrip(")")
    path, _, line = where.rpartition(":")
    return Frame(function, path if path and line.isdigit() else where)


def classify_frame(frame: Frame) -> str | None:
    """The bucket a frame's own time belongs to, or None for a helper that counts for its caller
    (the interpreter loop, allocation, memcpy: work done on behalf of the frame above)."""
    if frame.native:
        where, fn = frame.where.lower(), frame.function
        if any(fn.startswith(g) or fn == g for g in GC_FUNCTIONS):
            return OTHER
        for bucket, needles in LIB_RULES:
            if any(needle in where for needle in needles):
                return bucket
        if any(fn.lstrip("_").startswith(w) for w in IO_FUNCTIONS):
            return IO
        return None
    for bucket, needles in PY_RULES:
        if any(needle in frame.where for needle in needles):
            return bucket
    return OTHER


def classify_stack(frames: list[Frame]) -> tuple[str, Frame | None]:
    """The bucket of the innermost classifiable frame (``frames`` root first), and that frame."""
    for frame in reversed(frames):
        bucket = classify_frame(frame)
        if bucket is not None:
            return bucket, frame
    return OTHER, None


@dataclass(slots=True)
class Profile:
    """Samples summed per bucket and per innermost classified function."""

    buckets: collections.Counter[str] = field(default_factory=collections.Counter)
    functions: collections.Counter[str] = field(default_factory=collections.Counter)
    paths: collections.Counter[str] = field(default_factory=collections.Counter)
    idle: float = 0.0

    @property
    def total(self) -> float:
        return float(sum(self.buckets.values()))

    def add(self, frames: list[Frame], weight: float) -> None:
        bucket, frame = classify_stack(frames)
        self.buckets[bucket] += weight  # type: ignore[assignment]
        if frame is None:
            label = "?"
        elif frame.function.startswith("0x"):  # a stripped library: one line for all of it
            label = f"(unnamed code) ({_short(frame.where)})"
        elif frame.where == frame.function:  # cProfile's name of a C function says it all
            label = frame.function
        else:
            label = f"{frame.function} ({_short(frame.where)})"
        self.functions[f"{bucket} | {label}"] += weight  # type: ignore[assignment]
        self.paths[_path(frames)] += weight  # type: ignore[assignment]


def _path(frames: list[Frame]) -> str:
    for frame in frames:
        for path, markers in PATHS:
            if any(m in frame.function for m in markers):
                return path
    return "other"


def _short(where: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where.rsplit("/", 1)[-1]


def read_pyspy_raw(lines: Iterable[str]) -> Profile:
    """Collapsed stacks (``a;b;c 12``) as ``py-spy record --format raw`` writes them."""
    profile = Profile()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not (stack and count.isdigit()):
            continue
        frames = [parse_frame(t) for t in stack.split(";")]
        if any(fr.native and fr.function in IDLE_FUNCTIONS for fr in frames):
            profile.idle += float(count)
        else:
            profile.add(frames, float(count))
    return profile


def read_cprofile(path: Path) -> Profile:
    """Self time (``tottime``) of every function in a cProfile dump. C functions are named by
    cProfile (``<method 'sendto' of '_socket.socket' objects>``) and classified by that name;
    a helper (``len``, ``list.append``) counts for its callers, split as cProfile recorded."""
    profile = Profile()
    stats: dict[tuple[str, int, str], tuple[Any, ...]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    for key, (_cc, _nc, tottime, _ct, callers) in stats.items():
        frame = _cprofile_frame(key)
        if any(wait in frame.function for wait in CPROFILE_IDLE):
            profile.idle += tottime
        elif classify_frame(frame) is not None or not callers:
            profile.add([frame], tottime)
        else:
            for caller, (_ccc, _ncc, caller_tt, _cct) in callers.items():
                profile.add([_cprofile_frame(caller), frame], caller_tt)
    return profile


def _cprofile_frame(key: tuple[str, int, str]) -> Frame:
    filename, _line, name = key
    # A C function (file "~") is known by its name, which says its module ('_socket.socket').
    return Frame(name, name if filename == "~" else filename)
