"""The page's framing and protobuf decoding, in Chromium, against bytes the gateway's code made.

Frames are encoded by ``gateway.wire`` (the gateway's own encoder, Deliver assembled from
once-encoded messages included) and fed to framing.js a byte at a time and in random chunks;
the payloads are decoded with the page's protobuf.js and the served schema.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from gateway.core.config import CoreConfig
from gateway.core.shard import Shard
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from gateway.wire.codec import encode_server_frame
from gateway.wire.framing import delimit
from tests.browser.cdp import Browser
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import StartGateway, page_url

_DECODE_ALL = """
(async ({ stream, chunks, limit }) => {
  const { FrameReader } = await import("/framing.js");
  const root = protobuf.parse(await (await fetch("/skein/v1/frames.proto")).text(), { keepCase: true }).root;
  const ServerFrame = root.lookupType("skein.v1.ServerFrame");
  const bytes = Uint8Array.from(atob(stream), (c) => c.charCodeAt(0));
  const reader = new FrameReader(limit);
  const out = [];
  let at = 0;
  for (const size of chunks) {
    reader.push(bytes.subarray(at, at + size));
    at += size;
    for (let p = reader.next(); p; p = reader.next()) {
      const frame = ServerFrame.toObject(ServerFrame.decode(p), { bytes: String, defaults: false });
      out.push(frame);
    }
  }
  return out;
})
"""

_FRAMING_ERROR = """
(async (bytes) => {
  const { FrameReader, FramingError } = await import("/framing.js");
  const reader = new FrameReader(1000);
  reader.push(Uint8Array.from(bytes));
  try { reader.next(); return "no error"; }
  catch (err) { return err instanceof FramingError ? err.message : `wrong error: ${err}`; }
})
"""


def _frames() -> list[f.ServerFrame]:
    rng = random.Random(7)
    messages = tuple(
        f.Message(
            shard=1 + i % 3,
            seq=1 + i // 3,
            deps={s: 1 + i // 3 for s in (1, 2, 3) if s != 1 + i % 3 and i >= 3},
            sender=f"s{i % 5}",
            client_msg_id=f"m-{i}",
            priority=f.Priority.NORMAL,
            body=rng.randbytes(rng.choice((0, 5, 200, 3000))),
        )
        for i in range(120)  # about 150 KB: a three-byte length prefix
    )
    epoch1 = f.ShardMap("lobby", 1, (1,))
    epoch2 = f.ShardMap("lobby", 2, (2, 3), {1: 9}, 9)
    return [
        f.Welcome(1, (), "n1-1f", 65536, 16384),
        f.Joined(1, "lobby", (epoch1, epoch2), 0, {2: 4, 3: 7}, (1 << 62) + 5),
        f.Deliver("lobby", messages[:2]),
        f.Ack(2, "m-0", 2, 5),
        f.Deliver("lobby", messages),
        f.Pong(0),  # empty: its payload is only the kind's tag and a zero length
        f.Error(ErrorCode.NOT_JOINED, "join first", 3, False),
    ]


def _chunkings(total: int) -> dict[str, list[int]]:
    rng = random.Random(11)
    random_sizes: list[int] = []
    while sum(random_sizes) < total:
        random_sizes.append(min(rng.randint(1, 4000), total - sum(random_sizes)))
    return {"whole": [total], "byte by byte": [1] * total, "random": random_sizes}


async def test_framing_and_decoding_agree_with_the_gateway(
    start_gateway: StartGateway, browser: Browser
) -> None:
    server = await start_gateway(CoreConfig())
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server))
    frames = _frames()
    stream = b"".join(delimit(encode_server_frame(fr)) for fr in frames)
    for label, chunks in _chunkings(len(stream)).items():
        args = {"stream": base64.b64encode(stream).decode(), "chunks": chunks, "limit": 1 << 24}
        decoded: list[dict[str, Any]] = await page.page.evaluate(
            f"{_DECODE_ALL}({json.dumps(args)})", timeout_s=60.0
        )
        assert [next(iter(d)) for d in decoded] == [
            "welcome",
            "joined",
            "deliver",
            "ack",
            "deliver",
            "pong",
            "error",
        ], label
        joined = decoded[1]["joined"]
        assert joined["frontier"] == {"shards": [2, 3], "seqs": [4, 7]}
        assert joined["shard_maps"][1] == {
            "room": "lobby",
            "epoch": 2,
            "shards": [2, 3],
            "sealed": {"shards": [1], "seqs": [9]},
            "base_sum": 9,
        }
        # 64-bit fields come out as numbers (no Long.js): rounded above 2^53, as documented.
        assert joined["incarnation"] == float((1 << 62) + 5)
        sent = frames[4]
        assert isinstance(sent, f.Deliver)
        got = decoded[4]["deliver"]["messages"]
        assert len(got) == len(sent.messages)
        for mine, theirs in zip(sent.messages, got, strict=True):
            assert (theirs["shard"], theirs["seq"]) == (mine.shard, mine.seq)
            assert theirs.get("deps", {}).get("shards", []) == sorted(mine.deps)
            assert base64.b64decode(theirs.get("body", "")) == mine.body
            assert theirs["sender"] == mine.sender
        assert decoded[6]["error"] == {"code": 1006, "message": "join first", "request_id": 3}


async def test_framing_refuses_what_the_protocol_refuses(
    start_gateway: StartGateway, browser: Browser
) -> None:
    server = await start_gateway(CoreConfig())
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server))
    over = list(delimit(b"x" * 1001))
    assert "1001 bytes" in await page.page.evaluate(f"{_FRAMING_ERROR}({over})")
    six_byte_prefix = [0x80, 0x80, 0x80, 0x80, 0x80, 0x01]
    assert "over 5 bytes" in await page.page.evaluate(f"{_FRAMING_ERROR}({six_byte_prefix})")
    at_limit = list(delimit(b"x" * 1000))
    assert await page.page.evaluate(f"{_FRAMING_ERROR}({at_limit})") == "no error"


_RECONCILE = """
(async ({ frames, order }) => {
  const { Room } = await import("/reconcile.js");
  const root = protobuf.parse(await (await fetch("/skein/v1/frames.proto")).text(), { keepCase: true }).root;
  const ServerFrame = root.lookupType("skein.v1.ServerFrame");
  const room = new Room("lobby");
  room.applyMap({ epoch: 1, shards: [1] });
  const shown = [];
  for (const i of order) {
    const bytes = Uint8Array.from(atob(frames[i]), (c) => c.charCodeAt(0));
    room.accept(ServerFrame.decode(bytes).deliver.messages, 0);
    shown.push(...room.take().delivered.map((e) => e.message.seq));
  }
  return { shown, skipped: room.stats.skipped, duplicates: room.stats.duplicates, held: room.buffered };
})
"""


async def test_the_page_passes_over_lost_chatter_and_waits_for_the_rest(
    start_gateway: StartGateway, browser: Browser
) -> None:
    """Messages stamped by the gateway's sequencer; one Deliver each, as datagrams would bring."""
    server = await start_gateway(CoreConfig())
    page = ChatPage(await browser.new_page())
    await page.open(page_url(server))
    shard = Shard(1, log_messages=100)
    kinds = [f.Priority.CHATTER, f.Priority.NORMAL, f.Priority.CHATTER, f.Priority.CHATTER]
    kinds += [f.Priority.HIGH, f.Priority.CHATTER]
    messages = [
        shard.sequence(deps={}, sender="s", client_msg_id="", priority=p, body=b"", live=True)
        for p in kinds
    ]
    frames = [
        base64.b64encode(encode_server_frame(f.Deliver("lobby", (e.message,)))).decode()
        for e in messages
    ]

    async def run(order: list[int]) -> dict[str, Any]:
        args = {"frames": frames, "order": order}
        result: dict[str, Any] = await page.page.evaluate(f"{_RECONCILE}({json.dumps(args)})")
        return result

    # Chatter 1, 3 and 4 lost: the normal and high messages do not wait for them.
    assert await run([1, 4, 5]) == {"shown": [2, 5, 6], "skipped": 3, "duplicates": 0, "held": 0}
    # Chatter 3 late, after 5 passed it over: dropped; chatter 4 in time.
    assert await run([0, 1, 3, 4, 2]) == {
        "shown": [1, 2, 4, 5],
        "skipped": 1,
        "duplicates": 1,
        "held": 0,
    }
    # The normal message 2 is missing: chatter 3 waits for it (it is no chatter to pass over).
    assert await run([0, 2]) == {"shown": [1], "skipped": 0, "duplicates": 0, "held": 1}
