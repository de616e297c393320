"""The delivery engine end to end: reliable messages complete and in order under heavy chatter,
with a real slow consumer (a subscriber process frozen with SIGSTOP) in the room."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from gateway.core.config import CoreConfig
from gateway.errors import ErrorCode
from gateway.sdk.client import connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.wire.frames import Priority
from tests.conftest import GENEROUS, chat_url, server_config

TIMEOUT_S = 60.0
HIGH = 40
CHATTER_PER_HIGH = 25

SUBSCRIBER = textwrap.dedent("""
    import asyncio, sys
    from gateway.sdk.client import connect
    async def main():
        async with connect(sys.argv[1], name="frozen", ca_file=sys.argv[2], reconnect=False) as c:
            await c.join("arena")
            print("joined", flush=True)
            async for _ in c.messages():
                pass
    asyncio.run(main())
""")


async def test_reliable_messages_survive_chatter_and_a_frozen_consumer(
    certs: CertPaths, ca_file: Path
) -> None:
    core = CoreConfig(send_budget_bytes=16 * 1024, slow_consumer_s=2.0, tick_ms=5, limits=GENEROUS)
    server = GatewayServer(server_config(certs, core))
    await server.start()
    url = chat_url(server)
    frozen = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; we signal it
        [sys.executable, "-c", SUBSCRIBER, url, str(ca_file)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert frozen.stdout is not None
        assert (await asyncio.to_thread(frozen.stdout.readline)).strip() == "joined"
        frozen.send_signal(signal.SIGSTOP)  # it stops reading and acknowledging: a slow consumer
        async with (
            connect(url, name="pub", ca_file=ca_file) as pub,
            connect(url, name="fan", ca_file=ca_file) as fan,
        ):
            await pub.join("arena")
            await fan.join("arena")
            high_seen: list[bytes] = []

            async def watch() -> None:
                async for event in fan.messages():
                    if event.message.priority is Priority.HIGH:
                        high_seen.append(event.message.body)
                        if len(high_seen) == HIGH:
                            return

            watcher = asyncio.create_task(watch())
            filler = os.urandom(900)  # incompressible: lz4 would shrink a repeated byte to nothing
            for i in range(HIGH):
                for _ in range(CHATTER_PER_HIGH):
                    await pub.publish("arena", filler, priority=Priority.CHATTER)
                await pub.publish("arena", f"gift-{i}".encode(), priority=Priority.HIGH)
            await asyncio.wait_for(watcher, TIMEOUT_S)
            assert high_seen == [f"gift-{i}".encode() for i in range(HIGH)]

            deadline = asyncio.get_running_loop().time() + TIMEOUT_S
            while server.hub.stats.errors[ErrorCode.SLOW_CONSUMER.name] < 1:
                assert asyncio.get_running_loop().time() < deadline, "frozen consumer not cut"
                await asyncio.sleep(0.1)
            assert server.hub.session_count == 2  # pub and fan remain
            assert sum(server.hub.stats.shed.values()) > 0  # it was shed before it was cut
            assert server.hub.stats.shed["high"] == 0
    finally:
        frozen.send_signal(signal.SIGCONT)
        frozen.kill()
        frozen.wait(10)
        await server.close()
