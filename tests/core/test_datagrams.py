"""Live chatter as datagrams, sans-IO: what the hub sends where, and ``chatter_before``."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.config import MAX_DATAGRAM_BYTES, CoreConfig
from gateway.core.hub import Hub
from gateway.core.outputs import Send, SendDatagram
from gateway.core.shard import Shard
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit

CHATTER, NORMAL, HIGH = f.Priority.CHATTER, f.Priority.NORMAL, f.Priority.HIGH


def _hub(**config: object) -> Hub:
    return Hub(CoreConfig(tick_ms=10, **config))  # type: ignore[arg-type]


def _hello(hub: Hub, conn_id: int, *capabilities: str) -> None:
    hub.connect(conn_id, 0.0)
    frame = f.Hello(capabilities=capabilities, client_name=f"c{conn_id}")
    hub.receive_data(conn_id, delimit(encode_client_frame(frame)), 0.0)


def _send(hub: Hub, conn_id: int, frame: f.ClientFrame) -> None:
    hub.receive_data(conn_id, delimit(encode_client_frame(frame)), 0.0)


def _fan_out(hub: Hub, publishes: list[tuple[f.Priority, bytes]], room: str = "live") -> list:  # type: ignore[type-arg]
    for i, (priority, body) in enumerate(publishes):
        _send(hub, 1, f.Publish(100 + i, room, f"m{i}", body, priority))
    hub.take_outputs()  # the acks (and, on the reliable path, the Persists: none here)
    hub.flush(1.0)
    return [o for o in hub.take_outputs() if isinstance(o, Send | SendDatagram)]


def _messages(outputs: list, conn_id: int) -> tuple[list[f.Message], list[f.Message]]:  # type: ignore[type-arg]
    """(by datagram, on the stream) for one connection, in the order they were handed out."""
    decoder = FrameDecoder(16 << 20)
    by_datagram: list[f.Message] = []
    on_stream: list[f.Message] = []
    for out in outputs:
        if conn_id not in out.conn_ids:
            continue
        if isinstance(out, SendDatagram):
            frame = decode_server_frame(out.data)
            assert isinstance(frame, f.Deliver)
            by_datagram += frame.messages
        else:
            for payload in decoder.feed(out.data):
                frame = decode_server_frame(payload)
                assert isinstance(frame, f.Deliver)
                on_stream += frame.messages
    return by_datagram, on_stream


def _room(hub: Hub, room: str, *peers: tuple[int, tuple[str, ...]]) -> None:
    for conn_id, capabilities in peers:
        _hello(hub, conn_id, *capabilities)
        _send(hub, conn_id, f.Join(1, room))
    hub.take_outputs()


def test_welcome_grants_datagrams_only_to_clients_that_ask() -> None:
    hub = _hub()
    _hello(hub, 1, "datagrams", "lz4")
    _hello(hub, 2, "lz4")
    decoder = FrameDecoder(16 << 20)
    welcomes: dict[int, tuple[str, ...]] = {}
    for out in hub.take_outputs():
        assert isinstance(out, Send)
        for payload in decoder.feed(out.data):
            frame = decode_server_frame(payload)
            assert isinstance(frame, f.Welcome)
            welcomes[out.conn_ids[0]] = frame.capabilities
    assert welcomes == {1: ("lz4", "datagrams"), 2: ("lz4",)}


def test_live_chatter_goes_as_datagrams_first_and_the_rest_on_the_stream() -> None:
    hub = _hub()
    _room(hub, "live", (1, ("datagrams",)), (2, ()))
    outputs = _fan_out(hub, [(CHATTER, b"a"), (NORMAL, b"b"), (CHATTER, b"c"), (NORMAL, b"d")])
    dgram, stream = _messages(outputs, 1)
    assert [m.body for m in dgram] == [b"a", b"c"]
    assert [m.body for m in stream] == [b"b", b"d"]
    first_for_1 = next(o for o in outputs if 1 in o.conn_ids)
    assert isinstance(first_for_1, SendDatagram)  # chatter waits behind nothing
    dgram, stream = _messages(outputs, 2)  # no datagrams negotiated: everything on the stream
    assert (dgram, [m.body for m in stream]) == ([], [b"a", b"b", b"c", b"d"])
    assert hub.stats.datagram_batches == 1 and hub.stats.datagram_messages == 2


def test_group_rooms_and_a_zero_limit_keep_everything_on_the_stream() -> None:
    hub = _hub()
    _room(hub, "group-x", (1, ("datagrams",)))
    outputs = _fan_out(hub, [(CHATTER, b"a"), (CHATTER, b"b")], room="group-x")
    hub.take_outputs()
    assert not any(isinstance(o, SendDatagram) for o in outputs)
    hub = _hub(chatter_datagram_bytes=0)
    _room(hub, "live", (1, ("datagrams",)))
    outputs = _fan_out(hub, [(CHATTER, b"a")])
    assert not any(isinstance(o, SendDatagram) for o in outputs)


def test_datagrams_fit_the_limit_and_a_message_too_big_for_one_takes_the_stream() -> None:
    hub = _hub()
    _room(hub, "live", (1, ("datagrams",)))
    bodies = [bytes([65 + i % 26]) * 300 for i in range(10)] + [b"x" * 2000, b"tail"]
    outputs = _fan_out(hub, [(CHATTER, b) for b in bodies])
    datagrams = [o for o in outputs if isinstance(o, SendDatagram)]
    assert len(datagrams) >= 4  # about three 300-byte messages per datagram
    assert all(len(o.data) <= MAX_DATAGRAM_BYTES for o in datagrams)
    dgram, stream = _messages(outputs, 1)
    assert [m.body for m in stream] == [b"x" * 2000]
    assert [m.body for m in dgram] == [*bodies[:10], b"tail"]  # nothing lost, in order


def test_lz4_datagrams_are_compressed_once_and_only_when_it_pays() -> None:
    hub = _hub(lz4_min_bytes=100)
    _room(hub, "live", (1, ("datagrams", "lz4")), (2, ("datagrams", "lz4")), (3, ("datagrams",)))
    outputs = _fan_out(hub, [(CHATTER, b"the quick brown fox " * 10)])
    datagrams = [o for o in outputs if isinstance(o, SendDatagram)]
    assert sorted(tuple(sorted(o.conn_ids)) for o in datagrams) == [(1, 2), (3,)]
    packed = next(o for o in datagrams if set(o.conn_ids) == {1, 2})
    plain = next(o for o in datagrams if o.conn_ids == (3,))
    assert len(packed.data) < len(plain.data) / 2
    assert decode_server_frame(packed.data) == decode_server_frame(plain.data)
    noise = random.Random(1).randbytes(500)  # lz4 cannot shrink it: everyone gets it plain
    hub2 = _hub(lz4_min_bytes=100)
    _room(hub2, "live", (1, ("datagrams", "lz4")), (3, ("datagrams",)))
    outputs = _fan_out(hub2, [(CHATTER, noise)])
    (only,) = [o for o in outputs if isinstance(o, SendDatagram)]
    assert sorted(only.conn_ids) == [1, 3]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([CHATTER, NORMAL, HIGH]), min_size=1, max_size=60), st.booleans())
def test_chatter_before_counts_the_chatter_right_before_each_message(
    priorities: list[f.Priority], live: bool
) -> None:
    shard = Shard(7, log_messages=100)
    messages = [
        shard.sequence(
            deps={}, sender="s", client_msg_id="", priority=p, body=b"", live=live
        ).message
        for p in priorities
    ]
    for m in messages:
        before = priorities[m.seq - 1 - m.chatter_before : m.seq - 1]
        assert all(p is CHATTER for p in before)
        if live and m.seq - 1 - m.chatter_before >= 1:  # the run stops at a message that counts
            assert priorities[m.seq - 2 - m.chatter_before] is not CHATTER
        if not live:
            assert m.chatter_before == 0
