"""A handshake flood against a gateway at its default limits (issue 21 item 6), measured.

One socket sends real QUIC Initials (each a new connection id, never answered) at
``--rate-per-s`` for ``--flood-s``. Meanwhile ``--clients`` established clients in one room
exchange messages (``--talkers`` of them publish 10/s each, every client receives everything),
and a newcomer connects and joins every 0.5 s. Reported: the established clients' delivery
latency (p50/p99) during the flood, the newcomers' time from connect to Joined (median, and how
many did not get in within 15 s), the gateway's RSS growth, and the gateway's admission counts.

    python -m bench.flood --retry auto            # this tree's gateway
    python -m bench.flood --retry auto --gateway-tree /tmp/skein-before   # another tree's

``--gateway-tree`` runs the gateway from another checkout (``git archive <commit> | tar -x``), to
measure "before" with the same clients and flood. The Initials are made once (1-2 ms each) and
cached in ``/tmp``: each gateway run is fresh, so their connection ids are new to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import pickle
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import percentile
from bench.gateway import RunningGateway, gateway_process

NEWCOMER_TIMEOUT_S = 15.0
NEWCOMER_EVERY_S = 0.5
TALK_RATE_PER_S = 10.0


def config(retry: str) -> str:
    """The gateway's defaults but for the store (memory), auth (insecure-dev) and ``retry``."""
    return (
        f'[core.limits]\nretry = "{retry}"\n[store]\nkind = "memory"\n'
        '[auth]\nmode = "insecure-dev"\n'
    )


def _make_initials(count: int) -> list[bytes]:
    from gateway.engine import H3_ALPN, QuicConfiguration, QuicConnection

    configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True, verify_mode=0)
    out: list[bytes] = []
    for _ in range(count):
        client = QuicConnection(configuration=configuration)
        client.connect(("127.0.0.1", 4433), now=time.monotonic())
        out.extend(data for data, _ in client.datagrams_to_send(now=time.monotonic()))
    return out


def initials(count: int, engine: str) -> list[bytes]:
    """``count`` connections' first Initials (cached per engine and count, made on 2 cores)."""
    cache = Path(f"/tmp/skein-flood-initials-{engine}-{count}.pickle")
    if cache.exists():
        loaded: list[bytes] = pickle.loads(cache.read_bytes())
        return loaded
    with multiprocessing.Pool(2) as pool:
        parts = pool.map(_make_initials, [count // 2, count - count // 2])
    made = [datagram for part in parts for datagram in part]
    cache.write_bytes(pickle.dumps(made))
    return made


def flood(port: int, datagrams: list[bytes], rate_per_s: float, out: Any) -> None:
    """Send ``datagrams`` to ``port`` at ``rate_per_s`` (bursts every 10 ms) from one socket;
    put how many Retry packets came back on ``out`` (a multiprocessing queue)."""
    retries = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        started = time.monotonic()
        for i, datagram in enumerate(datagrams):
            sock.sendto(datagram, ("127.0.0.1", port))
            if i % 15 == 14:
                retries += _retries(sock)
                time.sleep(max(0.0, started + (i + 1) / rate_per_s - time.monotonic()))
        time.sleep(1.0)
        retries += _retries(sock)
    out.put(retries)


def _retries(sock: socket.socket) -> int:
    count = 0
    for _ in range(10_000):
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return count
        count += len(data) > 5 and data[0] & 0xB0 == 0xB0  # long header, type Retry
    return count


async def _established(
    gw: RunningGateway, clients: int, talkers: int, ready: asyncio.Event, stop: asyncio.Event
) -> list[float]:
    """Delivery latencies (s) from ``ready`` (all joined) until ``stop``, every client's copy."""
    from gateway.sdk.client import connect

    latencies: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        group = [
            await stack.enter_async_context(
                connect(gw.url, ca_file=gw.ca_file, name=f"e{i}", reconnect=False)
            )
            for i in range(clients)
        ]
        for client in group:
            await client.join("lobby")
        ready.set()

        async def receive(client: Any) -> None:
            async for event in client.messages():
                latencies.append(time.monotonic() - float(event.message.body.decode()))

        async def talk(client: Any) -> None:
            while not stop.is_set():
                await client.publish("lobby", f"{time.monotonic():.6f}".encode())
                await asyncio.sleep(1 / TALK_RATE_PER_S)

        receivers = [asyncio.create_task(receive(c)) for c in group]
        await asyncio.gather(*(talk(c) for c in group[:talkers]))
        await asyncio.sleep(1.0)  # the last messages arrive
        for task in receivers:
            task.cancel()
    return latencies


async def _newcomers(gw: RunningGateway, stop: asyncio.Event) -> list[float | None]:
    """Connect-to-Joined times of a newcomer every NEWCOMER_EVERY_S (None: not within the
    timeout)."""
    from gateway.sdk.client import connect

    async def one(i: int) -> float | None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(NEWCOMER_TIMEOUT_S):
                async with connect(
                    gw.url, ca_file=gw.ca_file, name=f"n{i}", reconnect=False
                ) as client:
                    await client.join("lobby")
                    return time.monotonic() - started
        except Exception:  # a newcomer that did not get in, for any reason
            return None

    tasks = []
    for i in range(10_000):
        if stop.is_set():
            break
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(NEWCOMER_EVERY_S)
    return list(await asyncio.gather(*tasks))


async def _run(
    gw: RunningGateway, args: argparse.Namespace, datagrams: list[bytes]
) -> dict[str, Any]:
    ready, stop = asyncio.Event(), asyncio.Event()
    established = asyncio.create_task(_established(gw, args.clients, args.talkers, ready, stop))
    async with asyncio.timeout(60):
        await ready.wait()
    await asyncio.sleep(1.0)  # talking before the flood
    rss_before = gw.rss_bytes()
    results: Any = multiprocessing.Queue()
    flooder = multiprocessing.Process(
        target=flood, args=(gw.port, datagrams, args.rate_per_s, results)
    )
    flooder.start()
    newcomers = asyncio.create_task(_newcomers(gw, stop))
    rss_peak = rss_before
    deadline = time.monotonic() + args.flood_s + 30
    while flooder.is_alive() and time.monotonic() < deadline:
        rss_peak = max(rss_peak, gw.rss_bytes())
        await asyncio.sleep(0.25)
    stop.set()
    flooder.join(10)
    latencies = await established
    joined = await newcomers
    got_in = [t for t in joined if t is not None]
    metrics = gw.metrics()
    return {
        "retry": args.retry,
        "gateway_tree": args.gateway_tree or "this",
        "engine": gw.engine,
        "established_deliveries": len(latencies),
        "established_p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "established_p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "newcomers": len(joined),
        "newcomers_in": len(got_in),
        "newcomer_median_s": round(statistics.median(got_in), 3) if got_in else None,
        "rss_growth_mb": round((rss_peak - rss_before) / 1e6, 1),
        "retry_packets_seen_by_flooder": results.get(timeout=10),
        "admissions": {
            json.loads(k)["outcome"]: v
            for k, v in _labelled(gw, "skein_handshake_admissions_total").items()
        },
        "overload_episodes": metrics.get("skein_overload_episodes_total"),
    }


def _labelled(gw: RunningGateway, family: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == family:
                out[json.dumps(sample.labels)] = sample.value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--retry", choices=("off", "always", "auto"), default="auto")
    parser.add_argument("--gateway-tree", default=None, help="run the gateway from this tree")
    parser.add_argument("--rate-per-s", type=float, default=1500.0)
    parser.add_argument("--flood-s", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--talkers", type=int, default=4)
    parser.add_argument("--engine", default=os.environ.get("SKEIN_QUIC_ENGINE", "aioquic"))
    args = parser.parse_args(argv)
    datagrams = initials(int(args.rate_per_s * args.flood_s), args.engine)
    with gateway_process(
        config(args.retry), engine=args.engine, admin=True, code_dir=args.gateway_tree
    ) as gw:
        report = asyncio.run(_run(gw, args, datagrams))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
