"""The gateway's UDP socket: the buffers it asks the kernel for, and the drops it reports."""

from __future__ import annotations

import asyncio
import socket

from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.server.udp import kernel_drops, size_buffers
from tests.conftest import server_config
from tests.test_metrics import scrape


def test_buffers_are_granted_or_reported_capped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = size_buffers(sock, 0)
        assert default.asked_bytes == 0 and default.receive_bytes > 0
        sizes = size_buffers(sock, 3 * 1024 * 1024)
    assert sizes.asked_bytes == 3 * 1024 * 1024
    if sizes.capped:  # no CAP_NET_ADMIN and net.core.rmem_max below the ask: said, not hidden
        assert min(sizes.receive_bytes, sizes.send_bytes) < sizes.asked_bytes
    else:
        assert sizes.receive_bytes >= sizes.asked_bytes and sizes.send_bytes >= sizes.asked_bytes


async def test_the_gateway_asks_for_its_buffers_and_exports_them(certs: CertPaths) -> None:
    server = GatewayServer(server_config(certs, udp_buffer_bytes=2 * 1024 * 1024))
    await server.start()
    try:
        granted = server.udp_buffers
        assert granted.asked_bytes == 2 * 1024 * 1024
        assert granted.capped or granted.receive_bytes >= 2 * 1024 * 1024
        families = await scrape(server)
        assert families.value("skein_udp_receive_buffer_bytes") == granted.receive_bytes
        assert families.value("skein_udp_send_buffer_bytes") == granted.send_bytes
    finally:
        await server.close()


async def test_datagrams_the_kernel_drops_are_counted(certs: CertPaths) -> None:
    """A burst into a tiny receive buffer while the event loop cannot read (this coroutine holds
    it): the kernel drops most of it, and /metrics says how many."""
    server = GatewayServer(server_config(certs, udp_buffer_bytes=4096))
    await server.start()
    try:
        host, port = server.address
        assert (await scrape(server)).value("skein_udp_receive_drops_total") == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(300):  # not QUIC: the gateway ignores them once it reads them
                sock.sendto(b"\x00" * 1200, (host, port))
        dropped = kernel_drops({port})
        assert dropped > 0
        assert server.udp_receive_queue() > 0  # what fitted waits, unread: the loop is busy
        assert server.udp_drops() == dropped
        exported = (await scrape(server)).value("skein_udp_receive_drops_total")
        assert exported >= dropped  # a counter: it only grows
        for _ in range(100):  # the loop reads the queue empty once it runs
            if server.udp_receive_queue() == 0:
                break
            await asyncio.sleep(0.01)
        assert server.udp_receive_queue() == 0
    finally:
        await server.close()


async def test_datagrams_are_counted_and_sends_batched(certs: CertPaths) -> None:
    from gateway.sdk.client import connect
    from gateway.server.sendmany import batching_enabled
    from tests.conftest import chat_url

    server = GatewayServer(server_config(certs))
    await server.start()
    try:
        async with connect(chat_url(server), ca_file=certs.ca_cert) as client:
            await client.join("r")
            for i in range(5):
                await client.publish("r", b"m%d" % i)
        families = await scrape(server)
        received = families.value("skein_udp_datagrams_received_total")
        assert received >= 10  # the handshake, the CONNECT, Hello, Join, publishes, ACKs
        sent = families.value("skein_udp_datagrams_sent_total", what="datagrams")
        calls = families.value("skein_udp_datagrams_sent_total", what="system_calls")
        if batching_enabled():
            assert sent >= 10 and 1 <= calls <= sent
        else:
            assert not families.has("skein_udp_datagrams_sent_total")
    finally:
        await server.close()
