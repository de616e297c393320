"""Mixed QUIC engines interoperate: aioquic and qh3 on either side of a session.

The engine is chosen once per process, so the other engine runs in a subprocess: a gateway
(``skein serve --quic-engine <other>``) for this process's clients, and a client for this
process's gateway. Run under each engine (SKEIN_QUIC_ENGINE=aioquic, then qh3), and every
pairing is covered: chat both ways, a migration with deliveries continuing (nothing lost, nothing
twice, in order), and a reconnect that resumes from the cursor (TLS resumption and 0-RTT with a
ticket from the other engine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bench.gateway import RunningGateway, bench_config, gateway_process
from gateway import engine
from gateway.sdk.client import Client, connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from tests.conftest import chat_url
from tests.e2e.test_handoff import run_with_handoff

OTHER = next(name for name in engine.ENGINES if name != engine.ENGINE)
TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[2]


def _loaded_engines(pid: int) -> set[str]:
    """The QUIC engines whose native libraries a process has mapped (each has one)."""
    paths = {m.path for m in psutil.Process(pid).memory_maps()}
    marks = {"qh3": "/qh3/_hazmat", "aioquic": "/aioquic/_buffer"}
    return {name for name, mark in marks.items() if any(mark in p for p in paths)}


@pytest.fixture(scope="module")
def other_gateway(certs: CertPaths) -> Iterator[RunningGateway]:
    with gateway_process(bench_config(), certs=certs, engine=OTHER, admin=True) as gw:
        # It runs the engine it was asked for, and only that one (every QUIC name comes from the
        # seam, which imports one engine).
        assert _loaded_engines(gw.process.pid) == {OTHER}
        yield gw


async def _next_from(client: Client, sender: str) -> bytes:
    async for event in client.messages():
        if event.message.sender == sender:
            return event.message.body
    raise AssertionError("the session ended")


async def _migrations(gw: RunningGateway) -> float:
    return (await asyncio.to_thread(gw.metrics)).get("skein_migrations_total", 0.0)


def _assert_no_tracebacks(gw: RunningGateway) -> None:
    """Nothing blew up inside the gateway (an engine error in a callback is logged, not fatal:
    qh3 once raised on every handshake with an aioquic client and the chat still worked)."""
    assert "Traceback" not in gw.last_output(), gw.last_output()


async def test_chat_both_ways_through_a_gateway_on_the_other_engine(
    other_gateway: RunningGateway, ca_file: Path
) -> None:
    async with (
        connect(other_gateway.url, name="alice", ca_file=ca_file) as alice,
        connect(other_gateway.url, name="bob", ca_file=ca_file) as bob,
    ):
        await alice.join("engines")
        await bob.join("engines")
        for speaker, listener, text in [(alice, bob, b"hello bob"), (bob, alice, b"hi alice")]:
            heard = asyncio.create_task(_next_from(listener, speaker.session.name))
            await speaker.publish("engines", text)
            assert await asyncio.wait_for(heard, TIMEOUT_S) == text
    _assert_no_tracebacks(other_gateway)


async def test_migrate_keeps_deliveries_whole_through_a_gateway_on_the_other_engine(
    other_gateway: RunningGateway, ca_file: Path
) -> None:
    url = other_gateway.url
    before = await _migrations(other_gateway)
    async with (
        connect(url, name="pub-m", ca_file=ca_file) as pub,
        connect(url, name="sub-m", ca_file=ca_file) as sub,
    ):
        port = sub.local_address[1]
        # run_with_handoff asserts every message arrives once, in order, across the handoff.
        await run_with_handoff(pub, sub, sub.migrate, count=300)
        assert sub.local_address[1] != port
        assert sub.stats.migrations == 1 and sub.stats.reconnects == 0
    assert await _migrations(other_gateway) >= before + 1  # the gateway saw the new path
    _assert_no_tracebacks(other_gateway)


async def test_reconnect_resumes_through_a_gateway_on_the_other_engine(
    other_gateway: RunningGateway, ca_file: Path
) -> None:
    url = other_gateway.url
    async with (
        connect(url, name="pub-r", ca_file=ca_file) as pub,
        connect(url, name="sub-r", ca_file=ca_file) as sub,
    ):
        await run_with_handoff(pub, sub, sub.reconnect, count=300)
        assert sub.stats.reconnects == 1
        link = sub._link
        assert link is not None
        # The other engine's session ticket resumed TLS with the CONNECT and Hello in 0-RTT.
        assert link.handshake.result() is True
    _assert_no_tracebacks(other_gateway)


# A client on the other engine, in its own process: it joins, says "ready", publishes COUNT
# messages at ~200/s with a migrate() after a third and a reconnect() after two thirds, then
# waits for COUNT messages from "local" and prints what it got.
_REMOTE_CLIENT = textwrap.dedent("""
    import asyncio, json, sys, time
    from gateway import engine
    from gateway.sdk.client import connect
    url, ca, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    async def main():
        async with connect(url, name="remote", ca_file=ca) as c:
            await c.join("mixed")
            print(json.dumps({"engine": engine.ENGINE}), flush=True)
            got = []
            async def receive():
                async for event in c.messages():
                    if event.message.sender == "local":
                        got.append(event.message.body.decode())
                        if len(got) == count:
                            return
            receiving = asyncio.create_task(receive())
            start = time.monotonic()
            for i in range(count):
                if i == count // 3:
                    await c.migrate()
                if i == 2 * count // 3:
                    await c.reconnect()
                await c.publish("mixed", f"r{i}".encode())
                await asyncio.sleep(max(0.0, start + (i + 1) / 200 - time.monotonic()))
            await asyncio.wait_for(receiving, 30)
            print(json.dumps({"got": got, "stats": [c.stats.migrations, c.stats.reconnects]}),
                  flush=True)
    asyncio.run(main())
""")


async def _read_json(remote: asyncio.subprocess.Process) -> dict[str, object]:
    assert remote.stdout is not None and remote.stderr is not None
    line = await asyncio.wait_for(remote.stdout.readline(), TIMEOUT_S)
    if not line:
        errors = await asyncio.wait_for(remote.stderr.read(), TIMEOUT_S)
        raise AssertionError(f"the remote client exited early:\n{errors.decode()}")
    result: dict[str, object] = json.loads(line)
    return result


async def test_a_client_on_the_other_engine_chats_migrates_and_resumes(
    gateway: GatewayServer, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    count = 150
    env = {**os.environ, "SKEIN_QUIC_ENGINE": OTHER, "PYTHONUNBUFFERED": "1"}
    remote = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _REMOTE_CLIENT,
        chat_url(gateway),
        str(ca_file),
        str(count),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        async with connect(chat_url(gateway), name="local", ca_file=ca_file) as local:
            await local.join("mixed")
            assert await _read_json(remote) == {"engine": OTHER}
            heard: list[str] = []

            async def receive() -> None:
                async for event in local.messages():
                    if event.message.sender == "remote":
                        heard.append(event.message.body.decode())
                        if len(heard) == count:
                            return

            receiving = asyncio.create_task(receive())
            start = time.monotonic()
            for i in range(count):  # while the remote client migrates and reconnects
                await local.publish("mixed", f"l{i}".encode())
                await asyncio.sleep(max(0.0, start + (i + 1) / 200 - time.monotonic()))
            await asyncio.wait_for(receiving, TIMEOUT_S)
            result = await _read_json(remote)
        assert heard == [f"r{i}" for i in range(count)]
        assert result["got"] == [f"l{i}" for i in range(count)]  # once each, in order
        assert result["stats"] == [1, 1]
        assert gateway.migrations["nat_rebinding"] >= 1
        assert gateway.hub.stats.resumes >= 1
        assert await asyncio.wait_for(remote.wait(), TIMEOUT_S) == 0
        assert remote.stderr is not None
        assert b"Traceback" not in await remote.stderr.read()
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        if remote.returncode is None:
            remote.kill()
            await remote.wait()
