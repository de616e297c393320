"""The admin port under a slowloris: /healthz and /readyz answer every probe.

Loopback only and bounded (a few seconds each): the admin port's connection cap's worth of slow
clients (and, harder, twice that), each sending one byte a second and never finishing its request
(reconnecting a moment after it is cut off, as slowloris tools do), while a liveness probe asks
/healthz and /readyz ten times. Before the fix the slow clients held every slot and every probe
was refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from gateway.server.admin import AdminServer, Reply

PROBES = 10
PROBE_EVERY_S = 0.25
PROBE_TIMEOUT_S = 3.0  # generous: a liveness probe's usual timeout is 1 s
SETTLE_S = 1.5  # let every slow client connect and start dribbling before probing


async def slow_client(port: int, local: str, stop: asyncio.Event, connected: list[int]) -> None:
    """Send a request head one byte a second, never finishing it; reconnect when cut off."""
    request = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
        except OSError:
            await asyncio.sleep(0.2)
            continue
        connected[0] += 1
        try:
            for byte in request:
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):  # the read is the one-second pause
                    if not await asyncio.wait_for(reader.read(1), 1.0):
                        break  # the server closed it
                if stop.is_set():
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(0.2)  # a moment before coming back, as slowloris tools do


async def probe(port: int, path: str = "/healthz") -> int | None:
    """One liveness probe: the status it got, or None when refused or too slow."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), PROBE_TIMEOUT_S
        )
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), PROBE_TIMEOUT_S)
        writer.close()
    except (OSError, TimeoutError):
        return None
    if not raw.startswith(b"HTTP/1.1 "):
        return None
    return int(raw.split(b" ", 2)[1])


async def probes_under_slowloris(
    server: AdminServer, sources: list[str], attackers: int
) -> list[int | None]:
    """Start ``server``, attack it with ``attackers`` slow clients spread over ``sources``, and
    return what each of :data:`PROBES` probes of /healthz and /readyz got."""
    server.routes["/healthz"] = lambda _: Reply(200, "text/plain", b"ok\n")
    server.routes["/readyz"] = lambda _: Reply(200, "text/plain", b"ready\n")
    await server.start()
    port = server.address[1]
    stop = asyncio.Event()
    connected = [0]
    tasks = [
        asyncio.create_task(slow_client(port, sources[i % len(sources)], stop, connected))
        for i in range(attackers)
    ]
    try:
        await asyncio.sleep(SETTLE_S)
        assert connected[0] >= attackers  # the attack is on
        results = []
        for i in range(PROBES):
            started = time.monotonic()
            results.append(await probe(port, "/healthz" if i % 2 == 0 else "/readyz"))
            await asyncio.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))
        return results
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.close()


CAP = 64  # the admin port's documented connection cap (AdminServer's max_connections)
FOUR = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


@pytest.mark.parametrize(
    ("sources", "attackers"),
    [
        pytest.param(["127.0.0.1"], CAP, id="the-cap-from-the-probes-address"),
        pytest.param(FOUR, CAP, id="the-cap-from-4-addresses"),
        # More than the cap: they push each other out and reconnect all the time.
        pytest.param(FOUR, 2 * CAP, id="twice-the-cap-from-4-addresses"),
    ],
)
async def test_health_probes_answer_every_time_under_a_slowloris(
    sources: list[str], attackers: int
) -> None:
    server = AdminServer("127.0.0.1", 0)
    assert server.max_connections == CAP
    results = await probes_under_slowloris(server, sources, attackers)
    assert results == [200] * PROBES
    assert server.evicted >= PROBES  # slow clients were pushed out, not merely outlasted


async def test_a_request_head_has_a_deadline() -> None:
    server = AdminServer("127.0.0.1", 0, read_timeout_s=0.3)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        raw = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 408 ")
        assert server.connections == 0
    finally:
        await server.close()


async def test_one_address_gives_way_to_another() -> None:
    """Slow clients from one address may fill the table, but give way to another address's, and
    once that one holds its share the first address's newcomers push out only each other."""
    server = AdminServer("127.0.0.1", 0, max_connections=8)
    await server.start()
    try:
        port = server.address[1]

        writers: list[asyncio.StreamWriter] = []  # held here, or they are closed when collected

        async def open_from(local: str, n: int) -> list[asyncio.StreamReader]:
            readers = []
            for _ in range(n):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(local, 0)
                )
                readers.append(reader)
                writers.append(writer)
            await asyncio.sleep(0.2)
            return readers

        first = await open_from("127.0.0.2", 8)
        assert server.held_by("127.0.0.2") == 8
        second = await open_from("127.0.0.3", 4)
        assert (server.held_by("127.0.0.2"), server.held_by("127.0.0.3")) == (4, 4)
        third = await open_from("127.0.0.2", 6)
        assert (server.held_by("127.0.0.2"), server.held_by("127.0.0.3")) == (4, 4)
        for reader in second:  # still held: nothing to read, no EOF
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.05)
        for reader in first + third[:2]:  # pushed out, oldest first: EOF (or a reset)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(1), 2.0) == b""
        assert server.evicted == 10 and server.refused == 0
        for writer in writers:
            writer.close()
    finally:
        await server.close()
