"""The chat page in real headless Chromium against a live gateway, with SDK clients in the room.

The page loads over plain HTTP from the admin port, opens WebTransport to the QUIC port pinning
the dev certificate with serverCertificateHashes, and speaks protobuf frames; the tests drive it
through its own form and buttons and read what it shows.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import shutil
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

from gateway.core.config import CoreConfig
from gateway.core.sharder import ShardingConfig
from gateway.sdk.client import Client, connect
from gateway.sdk.reconcile import Reconciler
from gateway.sdk.session import MessageEvent
from gateway.store.base import StoreConfig
from gateway.wire import frames as f
from tests.browser.cdp import Browser
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import StartGateway, page_url
from tests.conftest import GENEROUS, chat_url

TIMEOUT_S = 60.0
FIXED_TWO = CoreConfig(sharding=ShardingConfig(policy="fixed", min_shards=2))
# Thresholds low enough that two SDK clients publishing flat out split the room (tests/e2e).
HOT = ShardingConfig(
    split_above_per_s=20,
    split_after_s=0.3,
    merge_below_per_s=5,
    merge_after_s=30.0,
    cooldown_s=0.4,
    max_shards=4,
    velocity_tau_s=0.2,
)


async def collect(client: Client, count: int) -> list[MessageEvent]:
    out: list[MessageEvent] = []

    async def run() -> None:
        async for event in client.messages():
            out.append(event)
            if len(out) == count:
                return

    await asyncio.wait_for(run(), TIMEOUT_S)
    return out


def save_screenshot(png: bytes, tmp_path: Path) -> Path:
    """Write the PNG into tmp_path (and to $SKEIN_BROWSER_SCREENSHOT if set, for people)."""
    path = tmp_path / "browser.png"
    path.write_bytes(png)
    wanted = os.environ.get("SKEIN_BROWSER_SCREENSHOT")
    if wanted:
        Path(wanted).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, wanted)
    return path


async def test_browser_and_sdk_client_chat_both_ways(
    start_gateway: StartGateway, browser: Browser, ca_file: Path, tmp_path: Path
) -> None:
    web, sdk_name, rounds = "webby", "sdk-sam", 6
    # Two shards, and the two senders on different ones: the page's publishes carry real deps
    # and its display order depends on the vector clocks, not on one shard's seqs.
    assert zlib.crc32(web.encode()) % 2 != zlib.crc32(sdk_name.encode()) % 2
    server = await start_gateway(FIXED_TWO)
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server))
    await page.connect(web, "lobby")

    async with connect(chat_url(server), name=sdk_name, ca_file=ca_file) as sdk:
        await sdk.join("lobby")
        received = asyncio.create_task(collect(sdk, 2 * rounds))
        for i in range(rounds):
            await page.send(f"hello from the browser {i}")
            await sdk.publish("lobby", f"hello from the SDK {i}".encode())
        events = await received
        shown = await page.wait_shown(2 * rounds)

        # Both directions, by content, each sender's messages in its own order.
        bodies = [e.message.body.decode() for e in events]
        assert [b for b in bodies if "browser" in b] == [
            f"hello from the browser {i}" for i in range(rounds)
        ]
        assert {e.message.sender for e in events} == {web, sdk_name}
        assert {e.message.shard for e in events} == {1, 2}
        assert sorted(s.body for s in shown) == sorted(bodies)
        # The page shows the reconciled order: the same keys the SDK computed, sorted.
        by_key = sorted(events, key=lambda e: e.key)
        assert [s.key for s in shown] == [e.key for e in by_key]
        assert [(s.sender, s.body) for s in shown] == [
            (e.message.sender, e.message.body.decode()) for e in by_key
        ]

        # Disconnect, miss a few messages, reconnect: the page resumes from its cursor.
        await page.disconnect()
        away = [f"while you were away {i}" for i in range(3)]
        for body in away:
            await sdk.publish("lobby", body.encode())
        await page.reconnect()
        shown = await page.wait_shown(2 * rounds + len(away))
        assert [s.body for s in shown[-len(away) :]] == away  # causally last, so shown last
        assert len({s.key for s in shown}) == len(shown)  # the replay's duplicates were dropped
        back = asyncio.create_task(collect(sdk, len(away) + 1))
        await page.send("back again")
        assert (await back)[-1].message.body == b"back again"
        await page.wait_shown(2 * rounds + len(away) + 1)

    path = save_screenshot(await page.page.screenshot(), tmp_path)
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 500
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20, "the screenshot is (nearly) blank"
    assert path.stat().st_size > 10_000


async def test_the_page_takes_live_chatter_as_datagrams(
    start_gateway: StartGateway, browser: Browser, ca_file: Path
) -> None:
    server = await start_gateway(CoreConfig())
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server))
    await page.connect("webby", "lobby")
    # The SDK client asks for no datagrams: every datagram the gateway sends goes to the page.
    async with connect(chat_url(server), name="sam", ca_file=ca_file, capabilities=()) as sdk:
        await sdk.join("lobby")
        bodies = [f"chatter {i}" for i in range(5)]
        for body in bodies:
            await sdk.publish("lobby", body.encode(), priority=f.Priority.CHATTER)
            await asyncio.sleep(0.05)  # one Deliver each (an idle room sends at once)
        shown = await page.wait_shown(len(bodies))
    assert [s.body for s in shown] == bodies
    assert server.counters["datagrams_sent"] >= len(bodies)
    assert server.counters["datagrams_on_stream"] == 0


async def test_page_loaded_as_localhost_reaches_the_gateway(
    start_gateway: StartGateway, browser: Browser, ca_file: Path
) -> None:
    """Chromium resolves localhost to ::1 first for QUIC; the page must use the gateway's
    address (from /v1/cert-hash), not its own host name, to reach a gateway on 127.0.0.1."""
    server = await start_gateway(CoreConfig())
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server, host="localhost"))
    await page.connect("local", "lobby")
    async with connect(chat_url(server), name="sdk", ca_file=ca_file) as sdk:
        await sdk.join("lobby")
        await sdk.publish("lobby", b"can you hear me?")
        assert [s.body for s in await page.wait_shown(1)] == ["can you hear me?"]


async def test_page_shows_the_connection_state(
    start_gateway: StartGateway, browser: Browser
) -> None:
    server = await start_gateway(CoreConfig())
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server))
    assert await page.state() == "idle"
    await page.connect("stateful", "lobby")
    assert await page.page.evaluate("!document.getElementById('send').disabled")
    await server.close()  # gateway shutdown: QUIC closes with 0x100 "gateway shutting down"
    await page.wait("document.getElementById('state').dataset.state === 'closed'")
    label = await page.page.evaluate("document.getElementById('state').textContent")
    assert label.startswith("closed: ")
    assert await page.page.evaluate("document.getElementById('send').disabled")


async def test_page_starts_afresh_when_a_restarted_gateway_lost_the_room(
    start_gateway: StartGateway, browser: Browser
) -> None:
    first = await start_gateway(CoreConfig())
    assert first.admin is not None
    page = ChatPage(await browser.new_page())
    await page.open(page_url(first))
    await page.connect("phoenix", "lobby")
    await page.send("before the restart")
    await page.wait_shown(1)
    await first.close()
    await page.wait("document.getElementById('state').dataset.state === 'closed'")

    # The same ports, so the open page finds the new gateway; with a memory store the room is new.
    await start_gateway(
        CoreConfig(),
        port=first.address[1],
        admin_port=first.admin.address[1],
        store=StoreConfig(kind="memory"),
    )
    await page.reconnect()
    await page.wait("document.getElementById('log').textContent.includes('the room was reset')")
    assert await page.shown() == []
    await page.send("after the restart")
    assert [s.body for s in await page.wait_shown(1)] == ["after the restart"]


async def publish_flat_out(client: Client, name: str, count: int) -> None:
    for i in range(count):
        await client.publish("stadium", f"{name} {i}".encode())
        await asyncio.sleep(0.005)


async def test_page_follows_the_room_through_a_reshard(
    start_gateway: StartGateway, browser: Browser, ca_file: Path
) -> None:
    # Two clients publish flat out: lift the per-user publish rate (this test is about resharding).
    server = await start_gateway(CoreConfig(tick_ms=5, sharding=HOT, limits=GENEROUS))
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server))
    await page.connect("watcher", "stadium")
    per_client, from_page = 150, 10
    total = 2 * per_client + from_page

    async with (
        connect(chat_url(server), name="fan0", ca_file=ca_file) as fan0,
        connect(chat_url(server), name="fan1", ca_file=ca_file) as fan1,
    ):
        for c in (fan0, fan1):
            await c.join("stadium")
        received = asyncio.create_task(collect(fan0, total))

        async def page_talks() -> None:
            for i in range(from_page):
                await page.send(f"watcher {i}")
                await asyncio.sleep(0.05)

        await asyncio.gather(
            publish_flat_out(fan0, "fan0", per_client),
            publish_flat_out(fan1, "fan1", per_client),
            page_talks(),
        )
        events = await received
        shown = await page.wait_shown(total, TIMEOUT_S)

        info = server.hub.room_info("stadium", server.now())
        assert info is not None and info.epoch > 1, "the room never re-sharded"
        assert f"epoch {info.epoch} " in await page.stats()
        assert [s.key for s in shown] == sorted(e.key for e in events)

        # reconcile.js agrees with the SDK's Reconciler on the same history fed in a scrambled
        # order (duplicates, maps late): both produce the order the live clients showed.
        async with connect(chat_url(server), name="late", ca_file=ca_file) as late:
            maps = (await late.join("stadium")).shard_maps
        messages = [e.message for e in events]
        expected = sorted(e.key for e in events)
        for seed in range(4):
            feed = scramble(maps, messages, random.Random(seed))
            assert python_order(feed) == expected
            assert await javascript_order(page, feed) == expected


Feed = list[tuple[str, Any]]


def scramble(maps: tuple[f.ShardMap, ...], messages: list[f.Message], rng: random.Random) -> Feed:
    """The maps and messages in a random order, in random batches, with 10% duplicated."""
    items: list[Any] = [*messages, *rng.sample(messages, len(messages) // 10)]
    rng.shuffle(items)
    feed: Feed = []
    while items:
        size = rng.randint(1, 20)
        feed.append(("messages", items[:size]))
        del items[:size]
    for shard_map in maps:
        feed.insert(rng.randint(0, len(feed)), ("map", shard_map))
    return feed


def python_order(feed: Feed) -> list[tuple[int, int, int]]:
    reconciler = Reconciler()
    for kind, item in feed:
        if kind == "map":
            reconciler.apply_shard_map(item)
        else:
            reconciler.receive(item, 0.0)
    keys = [d.key for d in reconciler.drain()]
    assert reconciler.buffered == 0
    return sorted(keys)


def _clock(clock: Any) -> dict[str, list[int]]:
    return {"shards": list(clock), "seqs": list(clock.values())}


def _wire(kind: str, item: Any) -> Any:
    if kind == "map":
        m: f.ShardMap = item
        return {
            "room": m.room,
            "epoch": m.epoch,
            "shards": list(m.shards),
            "sealed": _clock(m.sealed),
            "base_sum": m.base_sum,
        }
    return [
        {"shard": m.shard, "seq": m.seq, "deps": _clock(m.deps), "sender": m.sender} for m in item
    ]


async def javascript_order(page: ChatPage, feed: Feed) -> list[tuple[int, int, int]]:
    """Feed reconcile.js (imported into the page) and return its shown keys."""
    wire = json.dumps([[kind, _wire(kind, item)] for kind, item in feed])
    result = await page.page.evaluate(
        f"""(async (feed) => {{
            const {{ Room }} = await import("/reconcile.js");
            const room = new Room("stadium");
            for (const [kind, item] of feed) {{
              if (kind === "map") room.applyMap(item);
              else room.accept(item, 0);
            }}
            return {{ keys: room.shown.map((e) => e.key), buffered: room.buffered }};
        }})({wire})"""
    )
    assert result["buffered"] == 0
    return [(k[0], k[1], k[2]) for k in result["keys"]]
