"""The sans-IO hub driven directly: sessions, rooms, ticks, errors. No sockets, virtual time."""

from __future__ import annotations

from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.outputs import Close, Send
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit


class Peer:
    """One client's view of the hub: frames in, decoded frames out."""

    def __init__(
        self, hub: Hub, conn_id: int, name: str, lz4: bool = False, token: str = ""
    ) -> None:
        self.hub, self.conn_id = hub, conn_id
        self.decoder = FrameDecoder(16 << 20)
        self.inbox: list[f.ServerFrame] = []
        self.closed: ErrorCode | None = None
        hub.connect(conn_id, 0.0)
        self.send(f.Hello(capabilities=("lz4",) if lz4 else (), client_name=name, token=token))

    def send(self, frame: f.ClientFrame, now: float = 0.0) -> None:
        self.send_raw(delimit(encode_client_frame(frame)), now)

    def send_raw(self, data: bytes, now: float = 0.0) -> None:
        self.hub.receive_data(self.conn_id, data, now)

    def take(self, kind: type | None = None) -> list:  # type: ignore[type-arg]
        frames = [x for x in self.inbox if kind is None or isinstance(x, kind)]
        self.inbox = [x for x in self.inbox if not (kind is None or isinstance(x, kind))]
        return frames


def pump(hub: Hub, peers: list[Peer]) -> None:
    by_id = {p.conn_id: p for p in peers}
    for out in hub.take_outputs():
        if isinstance(out, Send):
            for conn_id in out.conn_ids:
                peer = by_id[conn_id]
                peer.inbox += [decode_server_frame(x) for x in peer.decoder.feed(out.data)]
        elif isinstance(out, Close):
            by_id[out.conn_id].closed = out.code


def tick(hub: Hub, peers: list[Peer], now: float) -> None:
    timer = hub.get_timer()
    if timer is not None and timer <= now:
        hub.handle_timer(now)
    pump(hub, peers)


def test_two_clients_chat_both_ways_with_acks() -> None:
    hub = Hub(CoreConfig(tick_ms=10))
    alice, bob = Peer(hub, 1, "alice"), Peer(hub, 2, "bob")
    peers = [alice, bob]
    for i, p in enumerate(peers):
        p.send(f.Join(10 + i, "lobby"))
    pump(hub, peers)
    assert [type(x) for x in alice.take()] == [f.Welcome, f.Joined]
    assert [type(x) for x in bob.take()] == [f.Welcome, f.Joined]

    alice.send(f.Publish(1, "lobby", "a1", b"hi bob"), now=0.001)
    bob.send(f.Publish(2, "lobby", "b1", b"hi alice"), now=0.002)
    pump(hub, peers)
    (ack_a,) = alice.take(f.Ack)
    (ack_b,) = bob.take(f.Ack)
    assert (ack_a.request_id, ack_a.client_msg_id, ack_a.seq) == (1, "a1", 1)
    assert (ack_b.request_id, ack_b.seq) == (2, 2)
    assert alice.take(f.Deliver) == []  # nothing before the timer runs
    assert hub.get_timer() == 0.001  # an idle room's message is due at once (Nagle's rule)

    tick(hub, peers, 0.002)  # the end of the loop turn in which both arrived
    for p in peers:
        (batch,) = p.take(f.Deliver)
        assert [(m.sender, m.body, m.seq) for m in batch.messages] == [
            ("alice", b"hi bob", 1),
            ("bob", b"hi alice", 2),
        ]
    assert hub.get_timer() == CoreConfig().room_idle_s  # only the room's look for idleness


def test_retry_with_same_client_msg_id_is_acked_not_resequenced() -> None:
    hub = Hub()
    alice = Peer(hub, 1, "alice")
    alice.send(f.Join(1, "r"))
    for _ in range(3):
        alice.send(f.Publish(2, "r", "same-id", b"x"))
    hub.flush(1.0)
    pump(hub, [alice])
    assert {a.seq for a in alice.take(f.Ack)} == {1}
    (batch,) = alice.take(f.Deliver)
    assert len(batch.messages) == 1


def test_garbage_costs_only_its_sender() -> None:
    hub = Hub()
    alice, mallory = Peer(hub, 1, "alice"), Peer(hub, 2, "mallory")
    peers = [alice, mallory]
    alice.send(f.Join(1, "r"))
    mallory.send(f.Join(1, "r"))
    mallory.send_raw(delimit(b"\xff\xff\xff"))  # framed garbage: an error, the stream goes on
    pump(hub, peers)
    (err,) = mallory.take(f.Error)
    assert err.code == ErrorCode.MALFORMED_FRAME and not err.fatal
    mallory.send_raw(b"\xff" * 8)  # unframeable: fatal
    pump(hub, peers)
    (err,) = mallory.take(f.Error)
    assert err.fatal and mallory.closed == ErrorCode.MALFORMED_FRAME
    alice.send(f.Publish(2, "r", "a", b"still here"))
    hub.flush(1.0)
    pump(hub, peers)
    (batch,) = alice.take(f.Deliver)
    assert batch.messages[0].body == b"still here"
    assert mallory.take(f.Deliver) == []


def test_errors_have_stable_codes() -> None:
    hub = Hub(CoreConfig(max_body_bytes=10, max_frame_bytes=2048, max_rooms_per_session=1))
    early = Peer.__new__(Peer)
    Peer.__init__(early, hub, 9, "x")
    p = Peer(hub, 1, "p")
    p.send(f.Publish(1, "r", "m", b"x"))  # not joined
    p.send(f.Join(2, "r"))
    p.send(f.Publish(3, "r", "m", b"x" * 11))  # body too large
    p.send(f.Join(4, "other"))  # too many rooms
    p.send(f.Publish(5, "r", "m2", b"x", deps={99: 1}))  # unknown shard
    p.send(f.Publish(6, "r", "m3", b"x", deps={1: 50}))  # seq from the future
    p.send(f.Fetch(7, "r", 1, 5, 9))  # beyond the log
    p.send(f.Hello())  # twice
    pump(hub, [p, early])
    codes = [(e.request_id, e.code) for e in p.take(f.Error)]
    assert codes == [
        (1, ErrorCode.NOT_JOINED),
        (3, ErrorCode.BODY_TOO_LARGE),
        (4, ErrorCode.TOO_MANY_ROOMS),
        (5, ErrorCode.BAD_VECTOR_CLOCK),
        (6, ErrorCode.BAD_VECTOR_CLOCK),
        (7, ErrorCode.OUT_OF_RANGE),
        (0, ErrorCode.INVALID_ARGUMENT),
    ]


def test_frames_before_hello_are_fatal() -> None:
    hub = Hub()
    hub.connect(1, 0.0)
    hub.receive_data(1, delimit(encode_client_frame(f.Join(1, "r"))), 0.0)
    outs = hub.take_outputs()
    assert isinstance(outs[-1], Close) and outs[-1].code == ErrorCode.HELLO_REQUIRED
    assert hub.session_count == 0


def test_unsupported_version_is_refused() -> None:
    hub = Hub()
    p = Peer.__new__(Peer)
    p.hub, p.conn_id, p.decoder, p.inbox, p.closed = hub, 1, FrameDecoder(1 << 20), [], None
    hub.connect(1, 0.0)
    p.send(f.Hello(protocol_version=2))
    pump(hub, [p])
    (err,) = p.take(f.Error)
    assert err.code == ErrorCode.UNSUPPORTED_VERSION and p.closed is not None


def test_stream_ending_mid_frame_is_an_error_and_leaves_rooms() -> None:
    hub = Hub()
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "r"))
    p.send_raw(delimit(b"x" * 20)[:5])
    hub.stream_ended(1, 0.0)
    pump(hub, [p])
    assert p.take(f.Error)[0].code == ErrorCode.MALFORMED_FRAME
    info = hub.room_info("r", 0.0)
    assert info is not None and info.subscribers == 0


def test_fetch_and_resume_replay_from_the_shard_log() -> None:
    hub = Hub(CoreConfig(log_messages_per_shard=5))
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "r"))
    for i in range(8):
        p.send(f.Publish(10 + i, "r", f"m{i}", str(i).encode()))
    hub.flush(1.0)
    p.send(f.Fetch(2, "r", 1, 1, 8))
    pump(hub, [p])
    (fetched,) = p.take(f.Fetched)
    assert [m.seq for m in fetched.messages] == [4, 5, 6, 7, 8]
    assert fetched.first_available_seq == 4  # 1..3 fell off the ring: told, not hidden

    late = Peer(hub, 2, "late")
    late.send(f.Join(1, "r", f.Cursor(1, {1: 5})))
    pump(hub, [p, late])
    (joined,) = late.take(f.Joined)
    assert joined.frontier == {1: 8} and joined.missed == 0
    (replay,) = late.take(f.Deliver)
    assert [m.seq for m in replay.messages] == [6, 7, 8]

    old = Peer(hub, 3, "old")
    old.send(f.Join(1, "r", f.Cursor(1, {1: 1})))
    pump(hub, [old])
    assert old.take(f.Joined)[0].missed == 2  # seqs 2 and 3 are gone


def test_large_batches_go_lz4_to_clients_that_asked() -> None:
    hub = Hub(CoreConfig(lz4_min_bytes=100))
    plain, packed = Peer(hub, 1, "plain"), Peer(hub, 2, "packed", lz4=True)
    for p in (plain, packed):
        p.send(f.Join(1, "r"))
    pump(hub, [plain, packed])
    for i in range(20):
        plain.send(f.Publish(i + 2, "r", f"m{i}", b"the quick brown fox " * 3))
    hub.take_outputs()  # the acks
    hub.flush(1.0)
    outs = [o for o in hub.take_outputs() if isinstance(o, Send)]
    assert sorted(o.conn_ids for o in outs) == [(1,), (2,)]
    sizes = {o.conn_ids: len(o.data) for o in outs}
    assert sizes[(2,)] < sizes[(1,)] / 3  # chat text compresses well
