"""Where the gateway's CPU goes for one delivered message: sample a hot room and sum by bucket.

The gateway runs in its own process (``skein serve``, either QUIC engine); the subscribers run in a
second process and the publisher in this one, so only the gateway is sampled. After a warm-up the
gateway is measured twice for the same length: once untouched (CPU from /proc, deliveries counted
by the subscribers, UDP datagrams counted by ``perf stat`` where it is allowed) and once under the
profiler. py-spy samples the running process from outside, native frames included, so time
inside OpenSSL, upb or lz4 is seen where it is spent; where ptrace is not allowed, ``--profiler
cprofile`` runs the gateway under cProfile, switched on and off by signals so that start-up and
handshakes stay out of the figures (it slows Python code several times over, so its shares lean
towards Python).

Each sample's time goes to the innermost frame that belongs to a bucket (a Python frame, or a
native frame of a known library; interpreter and libc helpers count for their caller), and the
buckets' shares are scaled to µs per delivery with the untouched CPU per delivery. docs/
performance.md shows the results and what they imply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench.common import machine_info
from bench.gateway import bench_config
from bench.profile_stacks import (
    BUCKETS,
    Profile,
    classify_frame,
    classify_stack,
    read_cprofile,
    read_pyspy_raw,
)

__all__ = ["BUCKETS", "Profile", "classify_frame", "classify_stack", "main", "profile_run"]


# ---- the load: subscribers in a subprocess, the publisher here -----------------------------------


async def _subscribers(url: str, ca: str, count: int) -> None:
    """Worker: ``count`` clients in room ``hot``; prints ``ready``, then the running delivery
    count for every line read on stdin, until stdin closes."""
    from gateway.sdk.client import connect

    got = 0
    ready = asyncio.Semaphore(0)

    async def one(i: int) -> None:
        nonlocal got
        async with connect(url, name=f"sub{i}", ca_file=ca) as client:
            await client.join("hot")
            ready.release()
            async for _ in client.messages():
                got += 1

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    for _ in range(count):
        await ready.acquire()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(got, flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True)
class _Subscribers:
    proc: asyncio.subprocess.Process

    async def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"count\n")
        await self.proc.stdin.drain()
        return int(await asyncio.wait_for(self.proc.stdout.readline(), 60))


@contextlib.asynccontextmanager
async def _subscriber_process(url: str, ca: str, count: int) -> AsyncIterator[_Subscribers]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SKEIN_QUIC_ENGINE": "aioquic"}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.profile", "_subscribers", url, ca, str(count)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30 + count)
        if line.strip() != b"ready":
            raise RuntimeError(f"the subscribers did not start: {line!r}")
        yield _Subscribers(proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _publish(url: str, ca: str, rate_per_s: float, size: int, stop: asyncio.Event) -> int:
    """Publish ``size``-byte chatter to ``hot`` at ``rate_per_s`` until ``stop``; returns how many
    were acked. Up to 64 publishes wait for their acks at once, so the rate holds even when the
    gateway acks at its next tick."""
    from gateway.sdk.client import connect
    from gateway.wire.frames import Priority

    words = b"goal what a match did you see that lol the keeper was asleep again ref come on "
    filler = (words * (size // len(words) + 1))[:size]
    in_flight = asyncio.Semaphore(64)
    acked = sent = 0

    async def one(body: bytes) -> None:
        nonlocal acked
        try:
            await pub.publish("hot", body, priority=Priority.CHATTER)
            acked += 1
        finally:
            in_flight.release()

    async with connect(url, name="publisher", ca_file=ca) as pub:
        await pub.join("hot")
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        while not stop.is_set():
            await in_flight.acquire()
            task = asyncio.create_task(one((b"%08d " % sent + filler)[:size]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            delay = start + sent / rate_per_s - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return acked


# ---- the gateway, in its own process -------------------------------------------------------------


@dataclass(slots=True)
class _Gateway:
    proc: subprocess.Popen[bytes]
    url: str

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)


def _cprofile_gateway(out: str, argv: list[str]) -> int:
    """Worker: ``skein`` with ``argv`` under cProfile, enabled by SIGUSR1 and written to ``out``
    (and disabled) by SIGUSR2, so only the measured window is profiled."""
    import cProfile

    from gateway.cli import main as skein

    prof = cProfile.Profile()

    def stop(*_: object) -> None:
        prof.disable()
        prof.dump_stats(f"{out}.part")
        os.replace(f"{out}.part", out)  # the driver waits for the file: let it appear whole

    signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
    signal.signal(signal.SIGUSR2, stop)
    return skein(argv)


@contextlib.contextmanager
def _gateway(opts: Options, workdir: Path, cprofile_out: Path | None) -> Iterator[_Gateway]:
    """``skein serve`` on a free port with the benchmark settings; SIGINT (a clean stop) on exit."""
    from gateway.server.certs import ensure_dev_certs

    certs = ensure_dev_certs(Path("certs"))
    config = workdir / "gateway.toml"
    config.write_text(
        bench_config(core=f"tick_ms = {opts.tick_ms}\nlz4_min_bytes = {opts.lz4_min_bytes}")
    )
    serve = ["serve", "--insecure-dev", "--config", str(config), "--port", "0"]
    serve += ["--admin-port", "-1", "--log-level", "warning", "--quic-engine", opts.engine]
    serve += ["--cert", str(certs.cert), "--key", str(certs.key)]
    head = [sys.executable, "-m"]
    head += (
        ["gateway.cli"]
        if cprofile_out is None
        else ["bench.profile", "_cprofile", str(cprofile_out)]
    )
    log = workdir / "gateway.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SKEIN_QUIC_ENGINE": opts.engine}
    with log.open("wb") as sink:
        proc = subprocess.Popen([*head, *serve], stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        port = _wait_serving(proc, log, timeout_s=60)
        yield _Gateway(proc, f"https://127.0.0.1:{port}/v1/chat")
    except BaseException:
        print(f"the gateway's log ends:\n{log.read_text()[-4000:]}", file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def _wait_serving(proc: subprocess.Popen[bytes], log: Path, *, timeout_s: float) -> int:
    """The port from the gateway's ``serving HTTP/3 on HOST:PORT`` line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if "serving HTTP/3 on " in line:
                return int(
                    line.split("serving HTTP/3 on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1]
                )
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"the gateway did not start in {timeout_s:.0f} s:\n{log.read_text()}")


# ---- one run -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What to load the gateway with and how to sample it."""

    engine: str = "aioquic"
    profiler: str = "py-spy"
    subscribers: int = 150
    rate_per_s: float = 20.0
    size_bytes: int = 100
    tick_ms: float = 10.0
    lz4_min_bytes: int = 512
    warmup_s: float = 3.0
    seconds: float = 10.0
    windows: int = 5
    sample_per_s: int = 250
    raw_out: Path | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """The gateway over one measured stretch of the run."""

    seconds: float
    cpu_s: float
    deliveries: int

    @property
    def us_per_delivery(self) -> float:
        return self.cpu_s / max(1, self.deliveries) * 1e6

    def summary(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 3),
            "gateway_cpu_s": round(self.cpu_s, 3),
            "gateway_cpu_pct": round(100 * self.cpu_s / self.seconds, 1),
            "deliveries": self.deliveries,
            "deliveries_per_s": round(self.deliveries / self.seconds, 1),
            "us_per_delivery": round(self.us_per_delivery, 2),
        }


async def _measure(gw: _Gateway, subs: _Subscribers, during: Callable[[], Any]) -> Window:
    count0, cpu0, t0 = await subs.count(), gw.cpu_seconds(), time.monotonic()
    await during()
    count1, cpu1, t1 = await subs.count(), gw.cpu_seconds(), time.monotonic()
    return Window(t1 - t0, cpu1 - cpu0, count1 - count0)


async def _pyspy(pid: int, opts: Options, out: Path) -> None:
    exe = Path(sys.executable).with_name("py-spy")
    flags = f"record --pid {pid} --native --format raw --rate {opts.sample_per_s} --duration"
    cmd = [str(exe if exe.exists() else "py-spy"), *flags.split()]
    cmd += [str(max(1, round(opts.seconds))), "--output", str(out)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(proc.communicate(), opts.seconds + 60)
    if proc.returncode != 0 or not _written(out):
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {output.decode(errors='replace')}")


@contextlib.asynccontextmanager
async def _datagram_counter(pid: int) -> AsyncIterator[dict[str, int]]:
    """Count the gateway's UDP system calls inside the block with ``perf stat`` on kernel
    tracepoints: ``recvfrom`` (one datagram each, both engines), ``sendto`` (one datagram each)
    and ``sendmmsg`` (up to 1,024 datagrams each: the gateway batches a loop turn's sends, see
    gateway/server/sendmany.py; its /metrics count the datagrams). The dict is filled when the
    block ends; it stays empty where perf is missing or not allowed."""
    found: dict[str, int] = {}
    perf = shutil.which("perf")
    if perf is None:
        yield found
        return
    events = {
        "sendto": "syscalls:sys_enter_sendto",
        "sendmmsg": "syscalls:sys_enter_sendmmsg",
        "recvfrom (datagrams received)": "syscalls:sys_enter_recvfrom",
    }
    proc = await asyncio.create_subprocess_exec(
        *(perf, "stat", "-x", ",", "-e", ",".join(events.values()), "-p", str(pid)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield found
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)  # perf prints its counts when interrupted
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        for line in err.decode(errors="replace").splitlines():
            count, _, event, *_ = [*line.split(","), "", ""]
            for name, wanted in events.items():
                if event == wanted and count.isdigit():
                    found[name] = int(count)


def _written(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


async def _cprofile_window(pid: int, opts: Options, out: Path) -> None:
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(opts.seconds)
    os.kill(pid, signal.SIGUSR2)
    for _ in range(100):  # the gateway writes it between two steps of its loop: wait a little
        if _written(out):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the gateway wrote no cProfile output")


async def _run(
    opts: Options, workdir: Path, ca: str
) -> tuple[list[Window], Window, Profile, dict[str, int]]:
    out = workdir / ("pyspy.txt" if opts.profiler == "py-spy" else "cprofile.prof")
    with _gateway(opts, workdir, out if opts.profiler == "cprofile" else None) as gw:
        async with _subscriber_process(gw.url, ca, opts.subscribers) as subs:
            stop = asyncio.Event()
            publisher = asyncio.create_task(
                _publish(gw.url, ca, opts.rate_per_s, opts.size_bytes, stop)
            )
            try:
                await asyncio.sleep(opts.warmup_s)
                step = opts.seconds / opts.windows
                async with _datagram_counter(gw.proc.pid) as counts:
                    plain = [
                        await _measure(gw, subs, lambda: asyncio.sleep(step))
                        for _ in range(opts.windows)
                    ]
                sampler = _pyspy if opts.profiler == "py-spy" else _cprofile_window
                sampled = await _measure(gw, subs, lambda: sampler(gw.proc.pid, opts, out))
            finally:
                stop.set()
                await asyncio.wait_for(publisher, 30)
    if opts.profiler == "py-spy":
        with out.open() as lines:
            profile = read_pyspy_raw(lines)
        if opts.raw_out is not None:
            opts.raw_out.write_text(out.read_text())
    else:
        profile = read_cprofile(out)
    return plain, sampled, profile, counts


def profile_run(opts: Options) -> dict[str, Any]:
    """Run the hot room once with ``opts``; the result as :func:`main` writes it to JSON."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="skein-profile-") as tmp:
        ca = str(Path("certs/ca.pem").resolve())
        plain, sampled, profile, datagrams = asyncio.run(_run(opts, Path(tmp), ca))
    total = profile.total or 1.0
    # The whole untouched stretch, not a median of its windows: when a starved subscriber process
    # reports late, deliveries slide from one window into the next, and only their sum is right.
    whole = Window(*(sum(getattr(w, k) for w in plain) for k in ("seconds", "cpu_s", "deliveries")))
    us = whole.us_per_delivery
    buckets = [
        {
            "bucket": name,
            "share_pct": round(100 * profile.buckets[name] / total, 2),
            "us_per_delivery": round(us * profile.buckets[name] / total, 2),
            "samples": round(profile.buckets[name], 4),
        }
        for name in BUCKETS
    ]
    top = [
        {"function": label, "share_pct": round(100 * weight / total, 2)}
        for label, weight in profile.functions.most_common(30)
    ]
    return {
        "engine": opts.engine,
        "profiler": opts.profiler,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "offered_per_s": opts.rate_per_s * opts.subscribers,
        "unprofiled": whole.summary(),
        "unprofiled_windows": [w.summary() for w in plain],
        "profiled": sampled.summary(),
        "datagrams_per_delivery": {  # over the untouched windows, when perf can count them
            k: round(v / max(1, sum(w.deliveries for w in plain)), 3) for k, v in datagrams.items()
        },
        "samples": round(profile.total, 4),
        "idle_samples": round(profile.idle, 4),
        "buckets": buckets,
        "top_functions": top,
        "paths": {  # cProfile keeps no stacks, so only py-spy says where work started
            k: round(100 * v / total, 2)
            for k, v in profile.paths.most_common()
            if opts.profiler == "py-spy"
        },
        "machine": machine_info(),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # others' work too
        "command": "python -m bench.profile " + " ".join(sys.argv[1:]),
        "finished": time.time(),
    }


def render(result: dict[str, Any], console: Console) -> None:
    """The bucket table and the hottest functions."""
    plain, sampled = result["unprofiled"], result["profiled"]
    console.print(
        f"[bold]gateway CPU per delivery, {result['engine']}: {plain['us_per_delivery']:.1f} µs"
        f"[/bold] (windows {_spread(result['unprofiled_windows'])} µs; "
        f"{plain['deliveries_per_s']:,.0f} deliveries/s of {result['offered_per_s']:,.0f} offered, "
        f"gateway CPU {plain['gateway_cpu_pct']:.0f}%)"
    )
    unit, digits = ("samples", 0) if result["profiler"] == "py-spy" else ("s", 2)
    datagrams = result["datagrams_per_delivery"]
    if datagrams:
        console.print(
            "UDP system calls per delivery: "
            + ", ".join(f"{v:.2f} {k}" for k, v in datagrams.items())
        )
    console.print(
        f"shares from {result['profiler']}: {result['samples']:,.{digits}f} {unit} busy "
        f"({result['idle_samples']:,.{digits}f} waiting left out); under it: "
        f"{sampled['us_per_delivery']:.1f} µs per delivery; load average "
        + " -> ".join(f"{x:.1f}" for x in result["load_avg_1m"])
    )
    table = Table("bucket", "% of gateway CPU", "µs per delivery")
    for row in result["buckets"]:
        table.add_row(row["bucket"], f"{row['share_pct']:.1f}", f"{row['us_per_delivery']:.1f}")
    console.print(table)
    if result["paths"]:
        paths = Table("started by", "% of gateway CPU", title="where the work started")
        for path, share in result["paths"].items():
            paths.add_row(path, f"{share:.1f}")
        console.print(paths)
    hot = Table("bucket | innermost classified function", "%", title="hottest functions")
    for row in result["top_functions"][:15]:
        hot.add_row(row["function"], f"{row['share_pct']:.1f}")
    console.print(hot)


def _spread(windows: list[dict[str, float]]) -> str:
    values = sorted(w["us_per_delivery"] for w in windows)
    return f"{values[0]:.0f}-{values[-1]:.0f}"


def _write(path: Path, result: dict[str, Any]) -> None:
    """Keep one run per engine in ``path`` (a later run of the same engine replaces it)."""
    runs: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            runs = dict(json.loads(path.read_text())["runs"])
    runs[result["engine"]] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2, ensure_ascii=False) + "\n")


_FLAGS = {  # Options field: what its flag means
    "engine": "the gateway's QUIC engine",
    "profiler": "py-spy (samples from outside; needs ptrace) or cprofile (inside the gateway)",
    "subscribers": "clients in the hot room",
    "rate_per_s": "messages published per second",
    "size_bytes": "body size of each message",
    "tick_ms": "the gateway's batching tick",
    "lz4_min_bytes": "batches this large are also sent lz4-compressed (1000000000: never)",
    "warmup_s": "load before the first measured window",
    "seconds": "how long the gateway is measured untouched, then profiled",
    "windows": "the untouched stretch is cut in this many windows, to show how steady it was",
    "sample_per_s": "py-spy samples per second",
}
_CHOICES = {"engine": ["aioquic", "qh3"], "profiler": ["py-spy", "cprofile"]}
# Flags renamed when rates became ``_per_s`` everywhere: the old spelling is still accepted.
_OLD_FLAGS = {"rate_per_s": "--rate-hz", "sample_per_s": "--sample-hz"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Options()
    for name, text in _FLAGS.items():
        default = getattr(defaults, name)
        flags = ["--" + name.replace("_", "-")]
        old = _OLD_FLAGS.get(name)
        if old:
            flags.append(old)
            text += f"; {old}: its old name, deprecated"
        kind, choices = type(default), _CHOICES.get(name)
        p.add_argument(
            *flags,
            dest=name,
            type=kind,
            choices=choices,
            default=default,
            help=f"{text} ({default})",
        )
    p.add_argument("--raw-out", type=Path, help="keep py-spy's collapsed stacks in this file")
    p.add_argument("--text-out", type=Path, help="also write the tables to this file, as text")
    p.add_argument(
        "--out", type=Path, default=Path("bench/profile.json"), help="one run per engine"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_subscribers"]:
        asyncio.run(_subscribers(argv[1], argv[2], int(argv[3])))
        return 0
    if argv[:1] == ["_cprofile"]:
        return _cprofile_gateway(argv[1], argv[2:])
    args = _parser().parse_args(argv)
    opts = Options(**{k: v for k, v in vars(args).items() if k not in ("out", "text_out")})
    console = Console(record=args.text_out is not None, width=130 if args.text_out else None)
    with console.status(f"profiling the gateway ({opts.engine}, {opts.profiler}) ..."):
        result = profile_run(opts)
    render(result, console)
    if args.text_out is not None:
        args.text_out.write_text(f"$ {result['command']}\n" + console.export_text())
    _write(args.out, result)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
