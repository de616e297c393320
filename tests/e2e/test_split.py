"""A room splits while several clients publish and read; all end with the same reconciled order."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gateway.core.config import CoreConfig
from gateway.core.sharder import ShardingConfig
from gateway.sdk.client import Client, connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from tests.conftest import GENEROUS, chat_url, server_config

CLIENTS = 4
PER_CLIENT = 150
TIMEOUT_S = 60.0

HOT = ShardingConfig(
    split_above_per_s=40,
    split_after_s=0.3,
    merge_below_per_s=5,
    merge_after_s=30.0,
    cooldown_s=0.4,
    max_shards=4,
    velocity_tau_s=0.2,
)


async def publish(client: Client, name: str) -> None:
    for i in range(PER_CLIENT):
        await client.publish("stadium", f"{name}-{i}".encode())
        await asyncio.sleep(0.005)


async def drain(client: Client, total: int) -> list[bytes]:
    bodies: list[bytes] = []

    async def run() -> None:
        async for event in client.messages():
            bodies.append(event.message.body)
            if len(bodies) == total:
                return

    await asyncio.wait_for(run(), TIMEOUT_S)
    return bodies


async def test_room_splits_under_load_and_clients_converge(certs: CertPaths, ca_file: Path) -> None:
    server = GatewayServer(
        server_config(certs, CoreConfig(tick_ms=5, sharding=HOT, limits=GENEROUS))
    )
    await server.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(server.close)
        clients = [
            await stack.enter_async_context(
                connect(chat_url(server), name=f"fan{i}", ca_file=ca_file)
            )
            for i in range(CLIENTS)
        ]
        for c in clients:
            await c.join("stadium")
        total = CLIENTS * PER_CLIENT
        readers = [asyncio.create_task(drain(c, total)) for c in clients]
        await asyncio.gather(*(publish(c, f"fan{i}") for i, c in enumerate(clients)))
        streams = await asyncio.gather(*readers)

        info = server.hub.room_info("stadium", server.now())
        assert info is not None and info.epoch > 1, "the room never split"
        assert server.hub.stats.splits >= 1
        for c in clients:
            assert c.stats.shard_maps >= 1  # the new map arrived in-band

        for i, bodies in enumerate(streams):  # every message once; each sender's in its order
            assert sorted(bodies) == sorted(
                f"fan{j}-{k}".encode() for j in range(CLIENTS) for k in range(PER_CLIENT)
            )
            for j in range(CLIENTS):
                mine = [b for b in bodies if b.startswith(f"fan{j}-".encode())]
                assert mine == [f"fan{j}-{k}".encode() for k in range(PER_CLIENT)], (i, j)

        orders = [
            [(m.shard, m.seq) for m in c.session.reconciler("stadium").ordered()] for c in clients
        ]
        assert all(len(o) == total for o in orders)
        assert all(o == orders[0] for o in orders), "clients disagree on the reconciled order"
