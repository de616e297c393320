"""Issue 15 items 5 and 6, end to end: a real gateway process killed with kill -9 and restarted on
the same port, real SDK clients on QUIC over loopback, a real SQLite file.

5. The restarted gateway drops the packets of connections it does not know, so nothing tells the
   clients their connection is dead: the SDK must notice by itself, within its stated bound
   (``keepalive_s + dead_after_s`` after the gateway's last packet), reconnect, resume, and get a
   publish acked. The test allows three times the bound (plus however long the restart took):
   it asserts that it happens, not how fast.
6. ``publish()``'s contract: a timeout means "still pending", never "failed". An application that
   waits on the pending publish gets it acked and stored once; one that withdraws a publish that
   never left is sure it is not stored; one that withdraws a sent publish and retries it with the
   same ``client_msg_id`` stores it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from bench.gateway import RunningGateway, free_udp_port, gateway_process
from gateway.sdk.client import Client, ClientConfig, connect
from gateway.sdk.liveness import LivenessConfig
from gateway.sdk.publish import PublishTimeout, PublishWithdrawn
from gateway.server.certs import CertPaths
from gateway.store.base import MAX_READ_LIMIT, next_cursor
from gateway.store.sqlite import SqliteStore
from gateway.wire.frames import Priority

DEFAULTS = ClientConfig()
BOUND_S = LivenessConfig(
    probe_after_s=DEFAULTS.keepalive_s, dead_after_s=DEFAULTS.dead_after_s
).bound_s
ROOM = "vault"


def durable_config(db: Path) -> str:
    return (
        f'[store]\nkind = "sqlite"\npath = "{db}"\nfsync = "normal"\n'
        '[core.sharding]\npolicy = "fixed"\n'
        '[auth]\nmode = "insecure-dev"\n'
    )


def stored_bodies(db: Path) -> list[bytes]:
    """Every body the store holds for ROOM, in commit order (read with no gateway up)."""
    store = SqliteStore(db)
    try:
        out: list[bytes] = []
        cursor: dict[int, int] = {}
        while page := store.read_after(ROOM, cursor, MAX_READ_LIMIT):
            out += [m.body for m in page]
            cursor = next_cursor(cursor, page)
        return out
    finally:
        store.close()


def kill_9(gw: RunningGateway) -> float:
    """SIGKILL the gateway; returns the moment it was sent (monotonic)."""
    killed_at = time.monotonic()
    gw.process.send_signal(signal.SIGKILL)
    gw.process.wait(10)
    return killed_at


@contextlib.contextmanager
def restarted(config: str, port: int, certs: CertPaths) -> Iterator[float]:
    """A new gateway on the same port; yields how long it took to start serving."""
    began = time.monotonic()
    with gateway_process(config, port=port, certs=certs):
        yield time.monotonic() - began


@contextlib.asynccontextmanager
async def client(url: str, name: str, ca_file: Path) -> AsyncIterator[Client]:
    """A client with the SDK's default liveness policy (the bound under test)."""
    async with connect(url, name=name, ca_file=ca_file) as c:
        await c.join(ROOM)
        yield c


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition()`` every 50 ms until true; returns when (monotonic). Fails after
    ``timeout_s``."""
    for _ in range(int(timeout_s / 0.05) + 1):
        if condition():
            return time.monotonic()
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s")


async def test_clients_notice_a_killed_gateway_and_resume_on_its_restart(
    certs: CertPaths, ca_file: Path, tmp_path: Path
) -> None:
    """A publisher and an idle subscriber (it sends nothing of its own: only the probes can
    tell it) both reconnect within the bound; the publish made after the kill is acked and
    reaches the subscriber."""
    db = tmp_path / "skein.db"
    config = durable_config(db)
    port = free_udp_port()
    url = f"https://127.0.0.1:{port}/v1/chat"
    with gateway_process(config, port=port, certs=certs) as first:
        async with client(url, "pub", ca_file) as pub, client(url, "sub", ca_file) as sub:
            await pub.publish(ROOM, b"before", priority=Priority.HIGH)
            killed_at = kill_9(first)
            with restarted(config, port, certs) as restart_s:
                limit_s = restart_s + 3 * BOUND_S
                pending = pub.start_publish(ROOM, b"after", priority=Priority.HIGH)
                ack = await pending.wait(limit_s)
                acked_after_s = time.monotonic() - killed_at
                assert ack.seq > 0
                await until(lambda: sub.stats.reconnects >= 1, limit_s, "the subscriber resumed")
                bodies: list[bytes] = []
                async with asyncio.timeout(limit_s):
                    async for event in sub.messages():
                        bodies.append(event.message.body)
                        if event.message.body == b"after":
                            break
                await pub.close()  # before the gateway stops
                await sub.close()
    assert acked_after_s < limit_s + 1  # a gateway restart alone would have taken 30 s
    assert pub.stats.reconnects == 1 and sub.stats.reconnects == 1
    assert pub.stats.dead_links == 1 and sub.stats.dead_links == 1
    assert bodies[-1] == b"after" and bodies.count(b"after") == 1
    assert stored_bodies(db).count(b"after") == 1


async def test_a_timed_out_publish_is_pending_and_stored_once_by_the_contract(
    certs: CertPaths, ca_file: Path, tmp_path: Path
) -> None:
    db = tmp_path / "skein.db"
    config = durable_config(db)
    port = free_udp_port()
    url = f"https://127.0.0.1:{port}/v1/chat"
    with gateway_process(config, port=port, certs=certs) as first:
        async with client(url, "pub", ca_file) as pub:
            await pub.publish(ROOM, b"before", priority=Priority.HIGH)
            kill_9(first)
            # Sent to the dead gateway: the timeout says "still pending", not "failed".
            with pytest.raises(PublishTimeout) as timed_out:
                await pub.publish(ROOM, b"kept", priority=Priority.HIGH, timeout_s=0.5)
            assert isinstance(timed_out.value, TimeoutError)
            kept = timed_out.value.pending
            assert kept.sent and not kept.done()
            # Withdrawn after it was sent: its fate is unknown, so cancel() says False.
            doubtful = pub.start_publish(ROOM, b"doubtful", priority=Priority.HIGH)
            assert doubtful.sent
            assert doubtful.cancel() is False
            # The client notices the dead gateway; what is published now waits for the reconnect
            # and can be withdrawn for sure.
            await until(lambda: pub.stats.dead_links == 1, 3 * BOUND_S, "the client noticed")
            unsent = pub.start_publish(ROOM, b"never", priority=Priority.HIGH)
            assert not unsent.sent
            assert unsent.cancel() is True
            with pytest.raises(PublishWithdrawn):
                await unsent.wait(1.0)
            with restarted(config, port, certs) as restart_s:
                limit_s = restart_s + 3 * BOUND_S
                ack = await kept.wait(limit_s)  # the contract: wait on it, don't publish again
                assert ack.seq > 0
                # A retry of the withdrawn one under its own id: stored once, wherever it is.
                await pub.publish(
                    ROOM,
                    b"doubtful",
                    priority=Priority.HIGH,
                    client_msg_id=doubtful.client_msg_id,
                    timeout_s=limit_s,
                )
                await pub.publish(ROOM, b"after", priority=Priority.HIGH, timeout_s=limit_s)
                assert pub.stats.reconnects == 1
                await pub.close()  # before the gateway stops
    bodies = stored_bodies(db)
    assert sorted(bodies) == sorted([b"before", b"kept", b"doubtful", b"after"]), bodies
