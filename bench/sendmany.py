"""Micro-benchmark: one ``sendto`` per datagram vs ``sendmmsg`` batches (gateway/server/sendmany.py).

``python -m bench.sendmany`` sends 200 datagrams of 150 bytes, each to its own loopback receiver
(one tick's fan-out to 200 connections), 2,000 times per run, and prints the microseconds per
datagram of:

- ``sendto loop``: ``sock.sendto`` per datagram, as asyncio's transport does underneath;
- ``send_many``: :func:`gateway.server.sendmany.send_many` (one ``sendmmsg`` per 1,024);
- ``asyncio transport``: ``transport.sendto`` per datagram, then one loop turn (the gateway
  without batching, ``SKEIN_SENDMMSG=0``);
- ``BatchingTransport``: the same through :class:`~gateway.server.sendmany.BatchingTransport`,
  whose flush runs in that loop turn (the gateway as it runs now).

Each figure is the median of ``--runs`` runs; the runs interleave the methods (run 1: A B C D,
run 2: B C D A, ...) so a change in the machine's load falls on all of them. Only the sending is
timed: receivers are drained every 50 rounds, outside the clock, so loopback never drops (the
line "delivered" checks it). On loopback the sending system call also does the receiving socket's
kernel work, the same for every method, so the ratios understate what batching saves on a NIC.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
from collections.abc import Callable, Coroutine
from contextlib import ExitStack
from typing import Any

from bench.common import machine_info, median
from gateway.server.sendmany import HAVE_SENDMMSG, BatchingTransport, Datagram, send_many

DRAIN_EVERY = 50  # rounds between drains: 50 datagrams per receiver fit its default buffer

Method = Callable[[list[Datagram]], Coroutine[Any, Any, None]]


class _Sink(asyncio.DatagramProtocol):
    pass


def _drain(receivers: list[socket.socket], buffer: bytearray) -> int:
    got = 0
    for r in receivers:
        while True:
            try:
                r.recv_into(buffer)
            except BlockingIOError:
                break
            got += 1
    return got


async def _measure(
    method: Method, datagrams: list[Datagram], rounds: int, receivers: list[socket.socket]
) -> tuple[float, int]:
    """Seconds spent sending ``rounds`` times, and how many datagrams arrived."""
    buffer = bytearray(2048)
    elapsed = 0.0
    received = 0
    for i in range(rounds):
        start = time.perf_counter()
        await method(datagrams)
        elapsed += time.perf_counter() - start
        if (i + 1) % DRAIN_EVERY == 0:
            received += _drain(receivers, buffer)
    received += _drain(receivers, buffer)
    return elapsed, received


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    with ExitStack() as stack:
        receivers = []
        for _ in range(args.receivers):
            r = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            r.bind(("127.0.0.1", 0))
            r.setblocking(False)
            receivers.append(r)
        payload = b"x" * args.size
        datagrams: list[Datagram] = [
            (payload, receivers[i % len(receivers)].getsockname()) for i in range(args.datagrams)
        ]
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(_Sink, local_addr=("127.0.0.1", 0))
        stack.callback(transport.close)
        batching = BatchingTransport(transport)

        async def sendto_loop(batch: list[Datagram]) -> None:
            sendto = sock.sendto
            for data, addr in batch:
                sendto(data, addr)

        async def send_many_call(batch: list[Datagram]) -> None:
            if send_many(sock, batch) != len(batch):
                raise RuntimeError("the kernel refused datagrams: the figure would be wrong")

        async def asyncio_transport(batch: list[Datagram]) -> None:
            sendto = transport.sendto
            for data, addr in batch:
                sendto(data, addr)
            await asyncio.sleep(0)

        async def batching_transport(batch: list[Datagram]) -> None:
            sendto = batching.sendto
            for data, addr in batch:
                sendto(data, addr)
            await asyncio.sleep(0)  # the flush runs in this loop turn

        methods: dict[str, Method] = {
            "sendto loop": sendto_loop,
            "send_many": send_many_call,
            "asyncio transport": asyncio_transport,
            "BatchingTransport": batching_transport,
        }
        names = list(methods)
        per_datagram: dict[str, list[float]] = {name: [] for name in names}
        delivered: dict[str, int] = dict.fromkeys(names, 0)
        sent = args.datagrams * args.rounds
        for run in range(args.runs):
            for name in names[run % len(names) :] + names[: run % len(names)]:
                elapsed, received = await _measure(methods[name], datagrams, args.rounds, receivers)
                per_datagram[name].append(elapsed / sent * 1e6)
                delivered[name] += received

    info = machine_info()
    print(
        f"{args.datagrams} datagrams of {args.size} B to {args.receivers} loopback receivers, "
        f"{args.rounds} times; median of {args.runs} interleaved runs; "
        f"sendmmsg extension: {'yes' if HAVE_SENDMMSG else 'NO (send_many is a sendto loop)'}"
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {info['cpu']}, {info['cores']} cores, load average at the end {load}")
    print(f"{'method':<20} {'µs/datagram':>12} {'runs (µs)':>40} {'delivered':>10}")
    for name in names:
        runs = ", ".join(f"{v:.2f}" for v in per_datagram[name])
        share = delivered[name] / (sent * args.runs)
        print(f"{name:<20} {median(per_datagram[name]):>12.2f} {runs:>40} {share:>10.1%}")
    base, batched = median(per_datagram["sendto loop"]), median(per_datagram["send_many"])
    via_asyncio = median(per_datagram["asyncio transport"])
    via_batching = median(per_datagram["BatchingTransport"])
    print(f"sendto loop / send_many: {base / batched:.2f}x")
    print(f"asyncio transport / BatchingTransport: {via_asyncio / via_batching:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sendmany", description=__doc__)
    parser.add_argument("--datagrams", type=int, default=200, help="datagrams per round")
    parser.add_argument("--receivers", type=int, default=200, help="loopback receivers")
    parser.add_argument("--size", type=int, default=150, help="bytes per datagram")
    parser.add_argument("--rounds", type=int, default=2000, help="rounds per run and method")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs (median)")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
