"""Kill -9 to the first acked publish: how long SDK clients are blind after a gateway crash.

Each run starts a gateway (SQLite store) in its own process, connects a publisher and an idle
subscriber with the SDK's defaults, kills the gateway with SIGKILL and restarts it on the same
port at once (in a thread, so the clients' event loop keeps running). The publisher has published
every ``interval`` since just before the kill without waiting on acks; the figures are the
medians, over runs, of the time from the kill to

- ``noticed``: the publisher dropped the dead connection (the SDK's liveness policy),
- ``first ack``: the first ack of a publish made after the kill,
- ``sub resumed``: the idle subscriber (which sends nothing of its own) was reconnected,

and how long the restarted gateway took to serve. Run:
``python -m bench.dead_gateway --runs 5`` (``SKEIN_QUIC_ENGINE=qh3`` for the other engine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import tempfile
import time
from pathlib import Path

from bench.common import median
from bench.gateway import free_udp_port, gateway_process
from gateway.engine import ENGINE
from gateway.sdk.client import connect
from gateway.sdk.publish import PendingPublish
from gateway.server.certs import ensure_dev_certs
from gateway.wire.frames import Priority

INTERVAL_S = 0.1
RUN_TIMEOUT_S = 60.0


async def one_run(db: Path, certs_dir: Path) -> dict[str, float]:
    certs = ensure_dev_certs(certs_dir)
    config = f'[store]\nkind = "sqlite"\npath = "{db}"\n[auth]\nmode = "insecure-dev"\n'
    port = free_udp_port()
    url = f"https://127.0.0.1:{port}/v1/chat"
    ca = str(certs.ca_cert)
    out: dict[str, float] = {}
    with contextlib.ExitStack() as gateways:
        first = gateways.enter_context(gateway_process(config, port=port, certs=certs))
        async with (
            connect(url, name="bench-pub", ca_file=ca) as pub,
            connect(url, name="bench-sub", ca_file=ca) as sub,
        ):
            await pub.join("crash")
            await sub.join("crash")
            await pub.publish("crash", b"before", priority=Priority.HIGH)
            killed_at = time.monotonic()
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)

            def start_again() -> float:
                gateways.enter_context(gateway_process(config, port=port, certs=certs))
                return time.monotonic() - killed_at

            restart = asyncio.create_task(asyncio.to_thread(start_again))
            pending: list[PendingPublish] = []
            async with asyncio.timeout(RUN_TIMEOUT_S):
                while not any(p.done() for p in pending):
                    pending.append(pub.start_publish("crash", b"x", priority=Priority.HIGH))
                    if "noticed" not in out and pub.stats.dead_links:
                        out["noticed"] = time.monotonic() - killed_at
                    await asyncio.sleep(INTERVAL_S)
                out["first ack"] = time.monotonic() - killed_at
                out.setdefault("noticed", out["first ack"])  # in the last interval: a bound
                out["restart"] = await restart
                for _ in range(int(RUN_TIMEOUT_S / 0.05)):  # bounded; asyncio.timeout too
                    if sub.stats.reconnects >= 1:
                        break
                    await asyncio.sleep(0.05)
                out["sub resumed"] = time.monotonic() - killed_at
            for p in pending:
                await p.wait(RUN_TIMEOUT_S)
    return out


async def main(runs: int) -> dict[str, float]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            result = await one_run(Path(tmp) / f"run{i}.db", Path(tmp) / "certs")
            print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.items()))
            results.append(result)
    summary = {k: median([r[k] for r in results]) for k in results[0]}
    print(f"engine {ENGINE}, medians of {runs} runs: " + json.dumps(summary))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
