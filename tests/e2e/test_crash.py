"""Crash durability: kill -9 the gateway under load; every acked reliable message survives and
is served afterwards, both by the history endpoint and by a subscriber's resume."""

from __future__ import annotations

import asyncio
import base64
import signal
from pathlib import Path

import pytest

from bench.gateway import free_udp_port, gateway_process
from gateway.errors import GatewayError
from gateway.sdk.client import connect
from gateway.sdk.http import get_json
from gateway.server.certs import CertPaths
from gateway.wire.frames import Priority
from loadgen.relay import UdpRelay

TIMEOUT_S = 60.0
ACKS_BEFORE_KILL = 150


@pytest.fixture
def durable_config(tmp_path: Path) -> str:
    return (
        f'[store]\nkind = "sqlite"\npath = "{tmp_path / "skein.db"}"\nfsync = "normal"\n'
        "[core.limits]\npublish_rate_per_connection_per_s = 1e5\n"
        "publish_burst_per_connection = 1e5\n"
        '[auth]\nmode = "insecure-dev"\n'
    )


async def test_acked_reliable_messages_survive_kill_9(
    certs: CertPaths, ca_file: Path, durable_config: str
) -> None:
    port = free_udp_port()
    url = f"https://127.0.0.1:{port}/v1/chat"
    acked: set[bytes] = set()
    # The subscriber reaches the gateway through a relay: the test can cut its path so that
    # acked messages reach it only by resuming (from the store) after the restart.
    relay = await UdpRelay.start(("127.0.0.1", port))
    relay_url = f"https://127.0.0.1:{relay.address[1]}/v1/chat"
    with gateway_process(durable_config, port=port, certs=certs) as first:
        sub_ctx = connect(
            relay_url, name="sub", ca_file=ca_file, idle_timeout_s=2.0, keepalive_s=0.5
        )
        sub = await sub_ctx.__aenter__()
        try:
            await sub.join("vault")
            received: list[bytes] = []

            async def receive() -> None:
                async for event in sub.messages():
                    if event.message.priority is Priority.HIGH:
                        received.append(event.message.body)

            receiver = asyncio.create_task(receive())
            async with connect(
                url, name="pub", ca_file=ca_file, reconnect=False, request_timeout_s=3.0
            ) as pub:
                await pub.join("vault")

                async def publisher(n: int) -> None:
                    for i in range(10_000):
                        body = f"gift-{n}-{i}".encode()
                        await pub.publish("vault", b"chatter", priority=Priority.CHATTER)
                        await pub.publish("vault", body, priority=Priority.HIGH)
                        acked.add(body)

                relay.blackhole(True)  # the subscriber's path goes dark before anything is sent
                tasks = [asyncio.create_task(publisher(n)) for n in range(4)]
                for _ in range(int(TIMEOUT_S * 20)):
                    if len(acked) >= ACKS_BEFORE_KILL:
                        break
                    await asyncio.sleep(0.05)
                first.process.send_signal(signal.SIGKILL)  # mid-stream, with publishes in flight
                first.process.wait(10)
                done = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, GatewayError | TimeoutError) for r in done)
            assert len(acked) >= ACKS_BEFORE_KILL

            with gateway_process(durable_config, port=port, certs=certs):
                # History over HTTP/3, paged with the cursor.
                history: list[bytes] = []
                after = ""
                for _ in range(100):
                    status, page = await get_json(
                        f"https://127.0.0.1:{port}/v1/rooms/vault/messages?limit=200&after={after}",
                        ca_file=ca_file,
                    )
                    assert status == 200
                    if not page["messages"]:
                        break
                    history += [base64.b64decode(m["body"]) for m in page["messages"]]
                    after = page["next"]
                assert acked <= set(history), (
                    f"lost after the crash: {sorted(acked - set(history))[:5]}"
                )
                assert len(history) == len(set(history))  # stored once each

                # Its path comes back: it reconnects by itself and resumes from its cursor; every
                # acked message must come from the restarted gateway's store.
                assert not acked & set(received), "the dark path delivered something"
                relay.blackhole(False)
                for _ in range(int(TIMEOUT_S * 10)):
                    if sub.stats.reconnects >= 1 and acked <= set(received):
                        break
                    await asyncio.sleep(0.1)
                assert acked <= set(received), f"not resumed: {len(acked - set(received))} missing"
                assert len(received) == len(set(received)), "a message was delivered twice"
                assert sub.stats.reconnects >= 1 and sub.stats.room_resets == 0
            receiver.cancel()
        finally:
            await sub_ctx.__aexit__(None, None, None)
            await relay.close()
