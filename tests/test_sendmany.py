"""sendmmsg batching (gateway/server/sendmany.py and its C extension) on real loopback sockets."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import pytest

from gateway.sdk.client import connect
from gateway.server import sendmany
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.server.sendmany import BatchingTransport, Datagram, send_many
from tests.conftest import server_config

needs_native = pytest.mark.skipif(not sendmany.HAVE_SENDMMSG, reason="_sendmany not built")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")


@pytest.fixture(params=["native", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the extension and with the plain sendto loop."""
    if request.param == "native":
        if not sendmany.HAVE_SENDMMSG:
            pytest.skip("_sendmany not built")
    else:
        monkeypatch.setattr(sendmany, "_native", None)
    return str(request.param)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def receivers(
    stack: ExitStack, family: socket.AddressFamily, host: str, n: int
) -> list[socket.socket]:
    out = []
    for _ in range(n):
        r = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        r.bind((host, 0))
        r.setblocking(False)
        out.append(r)
    return out


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            return got


def round_robin(addresses: Sequence[tuple[Any, ...]], count: int, size: int = 16) -> list[Datagram]:
    """``count`` numbered datagrams spread over ``addresses`` in turn."""
    return [
        (f"{i:08d}".encode().ljust(size, b"."), addresses[i % len(addresses)]) for i in range(count)
    ]


def check_delivered(
    rs: list[socket.socket], datagrams: list[Datagram], addresses: list[Any]
) -> None:
    for r, address in zip(rs, addresses, strict=True):
        expected = [d for d, a in datagrams if a == address]
        assert drain(r) == expected  # every one, in order


# --- send_many -------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 7, 2200])  # 2,200: three sendmmsg calls of up to 1,024
def test_send_many_ipv4(mode: str, stack: ExitStack, count: int) -> None:
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 20)
    sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender.setblocking(False)
    addresses = [r.getsockname() for r in rs]
    datagrams = round_robin(addresses, count)
    assert send_many(sender, datagrams) == count
    check_delivered(rs, datagrams, addresses)


@needs_ipv6
def test_send_many_ipv6(mode: str, stack: ExitStack) -> None:
    rs = receivers(stack, socket.AF_INET6, "::1", 5)
    sender = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    sender.setblocking(False)
    addresses: list[Any] = [r.getsockname() for r in rs]  # (host, port, flowinfo, scope_id)
    assert all(len(a) == 4 for a in addresses)
    addresses[0] = addresses[0][:2]  # a (host, port) pair is an IPv6 address too
    datagrams = round_robin(addresses, 300, size=1200)
    assert send_many(sender, datagrams) == 300
    check_delivered(rs, datagrams, addresses)


@needs_ipv6
def test_send_many_ipv4_mapped_from_a_dual_stack_socket(mode: str, stack: ExitStack) -> None:
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 3)
    sender = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    sender.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sender.bind(("::", 0))
    sender.setblocking(False)
    # As a dual-stack socket's recvfrom reports an IPv4 peer.
    addresses = [("::ffff:127.0.0.1", r.getsockname()[1], 0, 0) for r in rs]
    datagrams = round_robin(addresses, 90)
    assert send_many(sender, datagrams) == 90
    for r, address in zip(rs, addresses, strict=True):
        assert drain(r) == [d for d, a in datagrams if a == address]


def test_send_many_empty(mode: str, stack: ExitStack) -> None:
    sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    assert send_many(sender, []) == 0


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ((b"x" * 70_000, None), OSError),  # EMSGSIZE: larger than a UDP datagram
        (("text", None), TypeError),
        ((b"x", (123, 9)), TypeError),
        ((b"x", ("127.0.0.1",)), TypeError),
        ((b"x", ("127.0.0.1", 70_000)), OverflowError),
    ],
)
def test_send_many_stops_before_a_bad_datagram_and_raises_when_it_is_first(
    mode: str, stack: ExitStack, bad: tuple[Any, Any], error: Any
) -> None:
    (r,) = receivers(stack, socket.AF_INET, "127.0.0.1", 1)
    sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sender.setblocking(False)
    addr = r.getsockname()
    bad = (bad[0], bad[1] or addr)
    good = [(b"a", addr), (b"b", addr)]
    batch: Any = [*good, bad, (b"c", addr)]
    assert send_many(sender, batch) == 2  # sends those before it, raises nothing
    with pytest.raises(error):
        send_many(sender, batch[2:])  # a call that starts with it raises
    assert send_many(sender, batch[3:]) == 1
    assert drain(r) == [b"a", b"b", b"c"]


@needs_native
def test_native_send_many_holds_its_own_references(stack: ExitStack) -> None:
    """The C function works on a snapshot of the list (it releases the GIL while sending)."""
    from gateway.server import _sendmany

    (r,) = receivers(stack, socket.AF_INET, "127.0.0.1", 1)
    sender = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    addr = r.getsockname()
    assert _sendmany.send_many(sender.fileno(), ((b"t", addr),)) == 1  # any sequence
    assert _sendmany.send_many(sender.fileno(), iter([(b"i", addr)])) == 1
    with pytest.raises(OSError) as exc:
        _sendmany.send_many(10_000, [(b"x", addr)])  # not an open descriptor
    assert exc.value.errno == errno.EBADF
    with pytest.raises(TypeError):
        _sendmany.send_many(sender.fileno())  # type: ignore[call-arg]
    assert drain(r) == [b"t", b"i"]


# --- BatchingTransport -----------------------------------------------------------------------


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.errors: list[Exception] = []

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


Endpoint = tuple[asyncio.DatagramTransport, _Endpoint]
MakeEndpoint = Callable[[], Awaitable[Endpoint]]


@pytest.fixture
async def endpoint() -> AsyncIterator[MakeEndpoint]:
    """Makes asyncio datagram endpoints on 127.0.0.1, closed while the loop still runs."""
    made: list[asyncio.DatagramTransport] = []

    async def make() -> Endpoint:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            _Endpoint, local_addr=("127.0.0.1", 0)
        )
        made.append(transport)
        return transport, protocol

    yield make
    for transport in made:
        transport.close()
    await asyncio.sleep(0)


class CountingSend:
    """A send function for BatchingTransport: counts calls, and may send only ``budget``
    datagrams in all and then refuse (returns 0, as the kernel does at EAGAIN), or raise for
    payloads marked bad."""

    def __init__(self, budget: int | None = None) -> None:
        self.calls: list[int] = []
        self.budget = budget

    def __call__(self, fd: int, datagrams: Sequence[Datagram]) -> int:
        self.calls.append(len(datagrams))
        if datagrams[0][0].startswith(b"bad"):
            raise OSError(errno.EHOSTUNREACH, "unreachable")
        batch = list(datagrams)
        for i, (data, _) in enumerate(batch):
            if data.startswith(b"bad"):
                batch = batch[:i]
                break
        if self.budget is not None:
            batch = batch[: self.budget]
            self.budget -= len(batch)
        with socket.socket(fileno=fd) as sock:
            try:
                return sendmany._send_loop(sock, batch)
            finally:
                sock.detach()


async def test_batching_transport_sends_a_loop_turn_in_one_flush(
    stack: ExitStack, endpoint: MakeEndpoint
) -> None:
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 30)
    transport, _ = await endpoint()
    send = CountingSend()
    batching = BatchingTransport(transport, send=send)
    addresses = [r.getsockname() for r in rs]
    datagrams = round_robin(addresses, 300)
    for data, addr in datagrams:  # as 30 connections' transmit() in one callback
        batching.sendto(data, addr)
    assert send.calls == [] and all(drain(r) == [] for r in rs)  # nothing left yet
    await asyncio.sleep(0)  # the end of the turn
    assert send.calls == [300] and batching.flushes == 1 and batching.handed_back == 0
    check_delivered(rs, datagrams, addresses)
    # The next turn's datagrams make the next flush.
    batching.sendto(bytearray(b"late"), addresses[0])
    batching.sendto(memoryview(b"later"), addresses[1])
    await asyncio.sleep(0)
    assert send.calls == [300, 2] and batching.flushes == 2
    assert drain(rs[0]) == [b"late"] and drain(rs[1]) == [b"later"]


@needs_native
async def test_batching_transport_uses_the_extension_by_default(
    stack: ExitStack, endpoint: MakeEndpoint
) -> None:
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 4)
    transport, _ = await endpoint()
    batching = BatchingTransport(transport)
    addresses = [r.getsockname() for r in rs]
    datagrams = round_robin(addresses, 40)
    for data, addr in datagrams:
        batching.sendto(data, addr)
    await asyncio.sleep(0)
    assert batching.flushes == 1 and batching.handed_back == 0
    check_delivered(rs, datagrams, addresses)


async def test_batching_transport_flushes_at_its_bound(
    stack: ExitStack, endpoint: MakeEndpoint
) -> None:
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 5)
    transport, _ = await endpoint()
    send = CountingSend()
    batching = BatchingTransport(transport, send=send, max_pending=100)
    addresses = [r.getsockname() for r in rs]
    datagrams = round_robin(addresses, 250)
    for data, addr in datagrams:
        batching.sendto(data, addr)
    assert send.calls == [100, 100]  # at the bound, at once
    await asyncio.sleep(0)
    assert send.calls == [100, 100, 50] and batching.flushes == 3
    check_delivered(rs, datagrams, addresses)


async def test_hold_defers_the_flush_to_release(stack: ExitStack, endpoint: MakeEndpoint) -> None:
    """The listener holds around each received datagram: what it triggers leaves at release,
    batched, with no call_soon; a lone datagram goes through asyncio's sendto."""
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 3)
    transport, _ = await endpoint()
    send = CountingSend()
    batching = BatchingTransport(transport, send=send)
    addresses = [r.getsockname() for r in rs]
    datagrams = round_robin(addresses, 30)
    batching.hold()
    batching.hold()  # nested
    for data, addr in datagrams:
        batching.sendto(data, addr)
    assert batching._flush_handle is None
    batching.release()
    assert send.calls == []
    batching.release()
    assert send.calls == [30] and batching.flushes == 1  # at once, not at the end of the turn
    check_delivered(rs, datagrams, addresses)
    batching.hold()
    batching.sendto(b"alone", addresses[0])
    batching.release()
    assert send.calls == [30] and drain(rs[0]) == [b"alone"]  # asyncio's sendto sent it


async def test_refused_datagrams_go_through_the_real_transport_in_order(
    stack: ExitStack, endpoint: MakeEndpoint
) -> None:
    """EAGAIN/ENOBUFS (the kernel sent only part): asyncio's transport takes the rest."""
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 3)
    transport, _ = await endpoint()
    send = CountingSend(budget=40)
    real_sendto = transport.sendto
    via_transport: list[bytes] = []

    def spy(data: Any, addr: Any = None) -> None:
        via_transport.append(bytes(data))
        real_sendto(data, addr)

    transport.sendto = spy  # type: ignore[method-assign]
    batching = BatchingTransport(transport, send=send)
    addresses = [r.getsockname() for r in rs]
    datagrams = round_robin(addresses, 100)
    for data, addr in datagrams:
        batching.sendto(data, addr)
    await asyncio.sleep(0)
    # 40 sent, then a call that sends nothing (refused), then the rest through asyncio.
    assert send.calls == [100, 60]
    assert via_transport == [d for d, _ in datagrams[40:]]
    assert batching.handed_back == 60
    check_delivered(rs, datagrams, addresses)


async def test_a_failing_datagram_is_reported_and_the_rest_still_batch(
    stack: ExitStack, endpoint: MakeEndpoint
) -> None:
    rs = receivers(stack, socket.AF_INET, "127.0.0.1", 2)
    transport, protocol = await endpoint()
    send = CountingSend()
    batching = BatchingTransport(transport, send=send)
    addresses = [r.getsockname() for r in rs]
    datagrams = round_robin(addresses, 10)
    datagrams.insert(4, (b"bad-but-deliverable", addresses[0]))
    for data, addr in datagrams:
        batching.sendto(data, addr)
    await asyncio.sleep(0)
    # 4 sent; the bad one (raised at the start of the second call) goes through asyncio's
    # sendto, which here delivers it; the last 6 in a third call.
    assert send.calls == [11, 7, 6] and batching.handed_back == 1
    check_delivered(rs, datagrams, addresses)
    assert protocol.errors == []


async def test_nothing_bypasses_asyncio_s_backlog(stack: ExitStack, endpoint: MakeEndpoint) -> None:
    (r,) = receivers(stack, socket.AF_INET, "127.0.0.1", 1)
    transport, _ = await endpoint()
    send = CountingSend()
    batching = BatchingTransport(transport, send=send)
    transport.get_write_buffer_size = lambda: 1  # type: ignore[attr-defined]
    batching._backlog = transport.get_write_buffer_size  # type: ignore[attr-defined]
    for i in range(5):
        batching.sendto(b"%d" % i, r.getsockname())
    await asyncio.sleep(0)
    assert send.calls == [] and batching.handed_back == 5
    assert drain(r) == [b"0", b"1", b"2", b"3", b"4"]


async def test_close_flushes_and_abort_drops(stack: ExitStack, endpoint: MakeEndpoint) -> None:
    (r,) = receivers(stack, socket.AF_INET, "127.0.0.1", 1)
    transport, _ = await endpoint()
    batching = BatchingTransport(transport, send=CountingSend())
    batching.sendto(b"last words", r.getsockname())
    assert batching.get_write_buffer_size() == len(b"last words")
    batching.close()
    assert batching.is_closing() and transport.is_closing()
    assert drain(r) == [b"last words"]

    transport2, _ = await endpoint()
    batching2 = BatchingTransport(transport2, send=CountingSend())
    batching2.sendto(b"never", r.getsockname())
    batching2.abort()
    await asyncio.sleep(0)
    assert drain(r) == [] and transport2.is_closing()


async def test_batching_transport_delegates(stack: ExitStack, endpoint: MakeEndpoint) -> None:
    transport, protocol = await endpoint()
    batching = BatchingTransport(transport, send=CountingSend())
    assert batching.get_extra_info("sockname") == transport.get_extra_info("sockname")
    assert batching.get_extra_info("socket").fileno() == transport.get_extra_info("socket").fileno()
    assert batching.get_extra_info("nothing", 7) == 7
    assert batching.get_protocol() is protocol and batching.transport is transport
    assert not hasattr(batching, "sendto_many")  # qh3's protocol would use it instead of sendto
    with pytest.raises(TypeError):
        batching.sendto("text", ("127.0.0.1", 9))  # type: ignore[arg-type]


# --- the listener ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("switch", "host"),
    [
        ("default", "127.0.0.1"),
        ("off", "127.0.0.1"),
        pytest.param("default", "::1", marks=needs_ipv6),
    ],
)
async def test_gateway_connections_send_through_the_batching_transport(
    certs: CertPaths, monkeypatch: pytest.MonkeyPatch, switch: str, host: str
) -> None:
    if switch == "off":
        monkeypatch.setenv("SKEIN_SENDMMSG", "0")
    server = GatewayServer(server_config(certs, host=host))
    await server.start()
    try:
        listener = server._server
        assert listener is not None
        port = server.address[1]
        url = (
            f"https://[{host}]:{port}/v1/chat" if ":" in host else f"https://{host}:{port}/v1/chat"
        )
        async with (
            connect(url, name="alice", ca_file=certs.ca_cert) as alice,
            connect(url, name="bob", ca_file=certs.ca_cert) as bob,
        ):
            await alice.join("lobby")
            await bob.join("lobby")
            got = asyncio.create_task(anext(bob.messages()))
            ack = await alice.publish("lobby", b"hello")
            assert ack.seq == 1
            assert (await asyncio.wait_for(got, 10)).message.body == b"hello"
            protocols = set(listener._protocols.values())
            assert protocols
            if switch == "off" or not sendmany.HAVE_SENDMMSG:
                assert listener.batching is None
                assert not any(isinstance(p._transport, BatchingTransport) for p in protocols)
            else:
                batching = listener.batching
                assert batching is not None
                assert all(p._transport is batching for p in protocols)
                assert batching.flushes > 0 and batching.datagrams >= batching.flushes
                assert batching.handed_back == 0
    finally:
        await server.close()
