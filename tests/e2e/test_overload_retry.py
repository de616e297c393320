"""``retry = "auto"`` switches on from the gateway's own load (issue 21 item 6), over real QUIC.

A flood of real Initials the gateway cannot read fast enough never drains the handshake bucket
(the issue: 1,500/s, read at 230-380/s, below the 500/s rate): the standing queue on its socket
must switch Retry on, established clients must keep being served, and once the flood is over
new clients must get in directly again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from gateway.core.config import CoreConfig
from gateway.engine import H3_ALPN, QuicConfiguration, QuicConnection
from gateway.sdk.client import connect
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from tests.conftest import GENEROUS, chat_url, server_config
from tests.e2e.test_admission import chat_once

FLOOD = 900  # Initials


def real_initials(address: tuple[str, int], count: int) -> list[bytes]:
    """The first datagrams of ``count`` real client connections (each its own connection id)."""
    configuration = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=True, verify_mode=0)
    datagrams: list[bytes] = []
    for _ in range(count):
        client = QuicConnection(configuration=configuration)
        client.connect(address, now=time.monotonic())
        datagrams.extend(data for data, _ in client.datagrams_to_send(now=time.monotonic()))
    return datagrams


def is_retry(datagram: bytes) -> bool:
    """A QUIC v1 Retry packet (long header, type 3)."""
    return len(datagram) > 5 and datagram[0] & 0xB0 == 0xB0 and datagram[1:5] == b"\0\0\0\1"


def flood(sock: socket.socket, address: tuple[str, int], datagrams: list[bytes]) -> None:
    """Send ``datagrams`` as fast as one socket can (a thread: the gateway runs on this
    process's event loop). Thousands per second, more than either engine handshakes (qh3 keeps
    up with 1,500/s for a while): the gateway falls behind whatever the engine and the load."""
    for datagram in datagrams:
        sock.sendto(datagram, address)


def retries_received(sock: socket.socket) -> int:
    """Retry packets waiting on the flood's (blocking-free) socket; reads them all, bounded."""
    count = 0
    for _ in range(100_000):
        try:
            count += is_retry(sock.recv(65536))
        except BlockingIOError:
            break
    return count


async def test_retry_auto_switches_on_under_a_flood_it_cannot_read_and_off_after(
    certs: CertPaths, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="skein.server")
    limits = GENEROUS
    assert limits.retry == "auto" and limits.handshake_rate_per_s == 500  # the defaults
    server = GatewayServer(
        server_config(certs, CoreConfig(limits=limits), udp_buffer_bytes=4 * 1024 * 1024)
    )
    await server.start()
    registry = server.metrics
    try:
        initials = await asyncio.to_thread(real_initials, server.address, FLOOD)
        async with (
            connect(chat_url(server), ca_file=ca_file, name="watcher", reconnect=False) as watcher,
            connect(chat_url(server), ca_file=ca_file, name="talker", reconnect=False) as talker,
        ):
            await watcher.join("lobby")
            await talker.join("lobby")
            assert server.admissions["retried"] == 0
            assert registry.get_sample_value("skein_retry_active") == 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                # Room for every answer: Retries, and the accepted handshakes' (3x) flights.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                sock.bind(("127.0.0.1", 0))
                sender = threading.Thread(target=flood, args=(sock, server.address, initials))
                retry_active: list[float | None] = []

                async def sample() -> None:  # the gauge while the flood is answered
                    for _ in range(3000):
                        retry_active.append(registry.get_sample_value("skein_retry_active"))
                        await asyncio.sleep(0.01)

                sampler = asyncio.create_task(sample())
                sender.start()
                try:
                    # Established clients keep being served while the flood lasts.
                    acks = [await talker.publish("lobby", b"m%d" % i) for i in range(20)]
                    seen = []
                    async with asyncio.timeout(60):
                        async for event in watcher.messages():
                            seen.append(event.message.body)
                            if len(seen) == len(acks):
                                break
                    assert seen == [b"m%d" % i for i in range(20)]
                finally:
                    await asyncio.to_thread(sender.join, 30)
                assert not sender.is_alive()
                sampler.cancel()
                await asyncio.sleep(0.5)  # the last Retries on their way
                retries = retries_received(sock)
            admissions = dict(server.admissions)
            # The flood never came near the handshake rate's bucket (burst 1,000): only the
            # gateway's own load could switch Retry on.
            assert admissions.get("retried", 0) >= FLOOD // 4, admissions
            assert retries >= FLOOD // 4, (retries, admissions)
            episodes = server.guard.overload.episodes if server.guard else {}
            assert sum(episodes.values()) >= 1
            assert 1 in retry_active
            assert admissions.get("dropped", 0) == 0
            # Once calm (2 s without a sign of load), Retry goes off by itself and a newcomer
            # gets in directly. Bounded wait: the half-open handshakes of the flood retransmit.
            for _ in range(150):  # 30 s at most
                if registry.get_sample_value("skein_retry_active") == 0:
                    break
                await asyncio.sleep(0.2)
            assert registry.get_sample_value("skein_retry_active") == 0
            retried = server.admissions["retried"]
            await asyncio.wait_for(chat_once(server, ca_file, "newcomer"), 30)
            assert server.admissions["retried"] == retried

            def logged() -> list[str]:
                events = [getattr(r, "event", None) for r in caplog.records]
                return [e for e in events if e in ("overload", "overload_over")]

            # Logged as it began, and as it ended: 2 s calm after the flood's last signs.
            for _ in range(150):  # 30 s at most
                if logged()[-1:] == ["overload_over"]:
                    break
                await asyncio.sleep(0.2)
            assert logged()[:1] == ["overload"] and logged()[-1:] == ["overload_over"], logged()
            # And the established clients are still there.
            ack = await talker.publish("lobby", b"after")
            async with asyncio.timeout(30):
                async for event in watcher.messages():
                    if event.message.seq == ack.seq:
                        assert event.message.body == b"after"
                        break
    finally:
        await server.close()
