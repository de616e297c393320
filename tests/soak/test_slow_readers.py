"""The slow-reader attacks against a real gateway process, with an RSS ceiling (issue 21 item 3,
in `make soak`).

A gateway process (SQLite store, the default send budget, patience and grace) holds a 40 MB log
in one group room. Then clients whose flow-control window never opens (they drop every datagram
from the gateway: nothing is ever acknowledged) ask it for as much as they can, all at once:

- ``joins``: one connection with the most sessions it may open (8), each joining the room with an
  empty cursor: replay the whole log;
- ``fetches``: one connection, one session, 100 fetches of 1,000 messages each;
- ``history``: one connection, 50 history pages of 1,000 messages;
- ``everything``: two connections doing all three on every session.

Before the fix this cost +39 MB per replaying session, +403 MB for 100 fetches, +400 MB for 50
history pages (the issue). The gateway's RSS may grow by at most ``RSS_CEILING_MIB`` over its
level with the log loaded, over the attack and the time it takes to cut the sessions and drop
what they left unread; a watcher beside the attackers gets every message published meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import psutil

from bench.gateway import free_udp_port, gateway_process
from gateway.sdk.client import Client, connect
from gateway.server.certs import CertPaths
from gateway.wire import frames as f
from tests.e2e.wtclient import WtClient, wt_connect

ROOM = "group-big"  # a group room: every message stored, so replays, fetches and history read it
BODY = b"x" * 4096
LOG = 10_000  # 40 MB
DURING = 300  # published while the attack lasts
RSS_CEILING_MIB = 96
ATTACK_S = 35.0  # slow_consumer_s (10) + unread_grace_s (10), and more
ATTACKS = ("joins", "fetches", "history", "everything", "everything")


def config(db: Path) -> str:
    return (
        f'[store]\nkind = "sqlite"\npath = "{db}"\n'
        "[core]\nlog_messages_per_shard = 1000\n"  # replays and fetches come from the store
        '[core.sharding]\npolicy = "fixed"\n'
        "[core.limits]\npublish_rate_per_connection_per_s = 1e5\n"
        "publish_burst_per_connection = 1e5\n"
        "publish_rate_per_room_per_s = 1e5\npublish_burst_per_room = 1e5\n"
        "fetch_rate_per_connection_per_s = 1e5\nfetch_burst_per_connection = 1e5\n"
        "history_rate_per_connection_per_s = 1e5\nhistory_burst_per_connection = 1e5\n"
        '[auth]\nmode = "insecure-dev"\n'
    )


async def publish(client: Client, count: int, start: int) -> None:
    for first in range(start, start + count, 100):
        batch = range(first, min(first + 100, start + count))
        await asyncio.gather(*(client.publish(ROOM, b"%08d" % i + BODY) for i in batch))


async def attack(attacker: WtClient, kind: str, shard: int) -> None:
    """Open the sessions ``kind`` asks for, freeze, then ask for everything."""
    sessions = [
        attacker.open_session(f.Hello(client_name=f"slow{i}"))
        for i in range(8 if kind in ("joins", "everything") else 1)
    ]
    for session in sessions:
        assert isinstance(await attacker.next_frame(session, 30.0), f.Welcome)
    if kind == "fetches":  # a fetch needs the room joined: live, nothing replayed
        attacker.send(sessions[0], f.Join(1, ROOM))
        assert isinstance(await attacker.next_frame(sessions[0], 30.0), f.Joined)
    attacker.frozen = True  # from now on it reads (and acknowledges) nothing
    for session in sessions:
        if kind in ("joins", "everything"):
            attacker.send(session, f.Join(1, ROOM, cursor=f.Cursor(0, {}, 0)))
        if kind in ("fetches", "everything"):
            count = 100 if kind == "fetches" else 12
            attacker.send(
                session,
                *(
                    f.Fetch(10 + i, ROOM, shard, 1 + 1000 * (i % 10), 1000 * (i % 10 + 1))
                    for i in range(count)
                ),
            )
    if kind in ("history", "everything"):
        for _ in range(50 if kind == "history" else 10):
            attacker.get(f"/v1/rooms/{ROOM}/messages?limit=1000")


async def test_clients_that_never_read_cost_the_gateway_a_bounded_rss(
    certs: CertPaths, ca_file: Path, tmp_path: Path
) -> None:
    port = free_udp_port()
    url = f"https://127.0.0.1:{port}/v1/chat"
    with gateway_process(
        config(tmp_path / "skein.db"), port=port, certs=certs, admin=True
    ) as gateway:
        process = psutil.Process(gateway.process.pid)
        async with (
            connect(url, name="publisher", ca_file=ca_file, reconnect=False) as publisher,
            connect(url, name="watcher", ca_file=ca_file, reconnect=False) as watcher,
        ):
            joined = await publisher.join(ROOM)
            shard = joined.shard_maps[-1].shards[0]

            async def drain() -> None:  # the publisher's own copies: read, so never too many
                async for _ in publisher.messages():
                    pass

            draining = asyncio.create_task(drain())
            async with asyncio.timeout(300):
                await publish(publisher, LOG, 0)
            await watcher.join(ROOM)  # live from here
            await asyncio.sleep(2.0)
            baseline = process.memory_info().rss
            peak = baseline
            got: list[bytes] = []

            async def watch() -> None:  # it joined live: a last few of the log may come too
                async for event in watcher.messages():
                    if int(event.message.body[:8]) >= LOG:
                        got.append(event.message.body[:8])
                    if len(got) == DURING:
                        return

            watching = asyncio.create_task(watch())
            async with contextlib.AsyncExitStack() as attackers:
                clients = [
                    await attackers.enter_async_context(
                        wt_connect(("127.0.0.1", port), ca_file, idle_timeout_s=120.0)
                    )
                    for _ in ATTACKS
                ]
                async with asyncio.timeout(60):
                    await asyncio.gather(
                        *(attack(c, kind, shard) for c, kind in zip(clients, ATTACKS, strict=True))
                    )
                loop = asyncio.get_running_loop()
                end = loop.time() + ATTACK_S
                publishing = asyncio.create_task(publish(publisher, DURING, LOG))
                while loop.time() < end:
                    peak = max(peak, process.memory_info().rss)
                    await asyncio.sleep(0.25)
                async with asyncio.timeout(60):
                    await publishing
                    await watching
            draining.cancel()
            growth_mib = (peak - baseline) / 2**20
            metrics = await asyncio.to_thread(gateway.metrics)
            cut = metrics["skein_slow_consumer_disconnects_total"]
            print(
                f"slow readers: RSS {baseline / 2**20:.0f} MiB with the log, peak "
                f"+{growth_mib:.1f} MiB under attack; {cut:.0f} sessions cut SLOW_CONSUMER, "
                f"{metrics['skein_unread_released_total']:.0f} released their unread bytes"
            )
            assert growth_mib <= RSS_CEILING_MIB, f"RSS grew {growth_mib:.0f} MiB"
            assert got == [b"%08d" % i for i in range(LOG, LOG + DURING)]
