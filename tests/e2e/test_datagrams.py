"""Live chatter over QUIC datagrams, end to end: real QUIC on loopback, through a lossy relay.

A subscriber that negotiated ``datagrams`` gets a live room's chatter as HTTP/3 datagrams and
everything else on its stream; one that did not gets it all on the stream. Over a path that
drops packets, no reliable message is lost or reordered, every chatter message is either shown
or counted as skipped (never waited for), and the gateway's counters say how chatter went.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.sdk.client import Client, connect
from gateway.server.app import GatewayServer
from gateway.wire.frames import Priority
from loadgen.relay import PathProfile, UdpRelay
from tests.conftest import chat_url

TIMEOUT_S = 60.0
ROUNDS = 30
CHATTER_PER_ROUND = 5


async def _publish(pub: Client) -> None:
    """Rounds of chatter, each ended by a gift; a last gift ends the run (so no chatter is last)."""
    for i in range(ROUNDS):
        for j in range(CHATTER_PER_ROUND):
            await pub.publish("arena", f"chat-{i}-{j}".encode(), priority=Priority.CHATTER)
            await asyncio.sleep(0.012)  # over a tick: each chatter message a datagram of its own
        await pub.publish("arena", f"gift-{i}".encode(), priority=Priority.HIGH)
        await asyncio.sleep(0.01)


async def _watch(sub: Client) -> tuple[list[bytes], list[bytes]]:
    """(gifts, chatter) as the application sees them, until the last gift."""
    gifts: list[bytes] = []
    chatter: list[bytes] = []
    async for event in sub.messages():
        if event.message.priority is Priority.HIGH:
            gifts.append(event.message.body)
            if len(gifts) == ROUNDS:
                return gifts, chatter
        else:
            chatter.append(event.message.body)
    raise AssertionError("the session ended")


def _all_chatter() -> list[bytes]:
    return [f"chat-{i}-{j}".encode() for i in range(ROUNDS) for j in range(CHATTER_PER_ROUND)]


async def test_chatter_goes_as_datagrams_to_those_that_asked(
    gateway: GatewayServer, ca_file: Path
) -> None:
    url = chat_url(gateway)
    async with (
        connect(url, name="pub", ca_file=ca_file) as pub,
        connect(url, name="dgram", ca_file=ca_file) as dgram,
        connect(url, name="plain", ca_file=ca_file, capabilities=("lz4",)) as plain,
    ):
        for c in (pub, dgram, plain):
            await c.join("arena")
        watchers = [asyncio.create_task(_watch(c)) for c in (dgram, plain)]
        await _publish(pub)
        results = await asyncio.wait_for(asyncio.gather(*watchers), TIMEOUT_S)
    gifts = [f"gift-{i}".encode() for i in range(ROUNDS)]
    for got_gifts, got_chatter in results:
        assert got_gifts == gifts
        assert got_chatter == _all_chatter()  # loopback loses nothing: all of it, in order
    # The datagram subscriber got every chatter batch as a datagram (the publisher and the plain
    # subscriber asked for none: the SDK asks by default, so pub did too).
    sent = gateway.counters["datagrams_sent"]
    assert sent >= 2 * ROUNDS  # dgram's and pub's: at least a datagram per round each
    assert gateway.hub.stats.datagram_messages >= ROUNDS * CHATTER_PER_ROUND
    assert gateway.counters["datagrams_dropped"] == 0


async def test_a_lossy_path_loses_no_gift_and_stalls_on_no_chatter(
    gateway: GatewayServer, ca_file: Path
) -> None:
    async with await UdpRelay.start(gateway.address, seed=7) as relay:
        lossy = f"https://127.0.0.1:{relay.address[1]}/v1/chat"
        async with (
            connect(chat_url(gateway), name="pub", ca_file=ca_file) as pub,
            connect(lossy, name="sub", ca_file=ca_file) as sub,
        ):
            await pub.join("arena")
            await sub.join("arena")
            relay.set_profile(PathProfile(name="lossy", loss=0.15))
            watcher = asyncio.create_task(_watch(sub))
            await _publish(pub)
            gifts, chatter = await asyncio.wait_for(watcher, TIMEOUT_S)
            skipped = sub.stats.chatter_lost
    assert gifts == [f"gift-{i}".encode() for i in range(ROUNDS)]  # all, in order
    assert chatter == [c for c in _all_chatter() if c in set(chatter)]  # in order
    # Each chatter message was shown or passed over: the last gift came after all of them.
    assert len(chatter) + skipped == ROUNDS * CHATTER_PER_ROUND
    assert relay.stats.dropped_loss > 0
    # The chatter really went as datagrams, and some was really lost and passed over, not waited
    # for (the stream never passes anything over). About 150 chatter datagrams at 15% loss: none
    # lost has odds below 1 in 10^10; even a machine so stalled that half of them were batched
    # together leaves odds of 1 in 200,000.
    assert gateway.counters["datagrams_sent"] > 0
    assert skipped > 0
