"""One send budget per QUIC connection: replays and fetches go out only as the connection reads
(gateway/core/pacing.py), on virtual time. Issue 21 item 3: a join with an empty cursor queued the
whole room log at once, and fetches were never measured against any budget."""

from __future__ import annotations

from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.outputs import Close, Persist, Send, StoreRead
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit
from tests.conftest import GENEROUS

BUDGET = 64 * 1024
BODY = b"x" * 1000
EVERYTHING = f.Cursor(0, {}, 0)  # an empty cursor: replay every retained seq


class Conn:
    """A session on a QUIC connection (``key``) that counts the bytes the hub sent it."""

    def __init__(self, hub: Hub, conn_id: int, key: object = None) -> None:
        self.hub, self.conn_id = hub, conn_id
        self.decoder = FrameDecoder(16 << 20)
        self.frames: list[f.ServerFrame] = []
        self.reads: list[StoreRead] = []
        self.bytes = 0
        self.closed: ErrorCode | None = None
        hub.connect(conn_id, 0.0, connection=key)
        self.send(f.Hello(client_name=f"c{conn_id}"))

    def send(self, frame: f.ClientFrame, now: float = 0.0) -> None:
        self.hub.receive_data(self.conn_id, delimit(encode_client_frame(frame)), now)

    def take(self, kind: type) -> list:  # type: ignore[type-arg]
        taken = [x for x in self.frames if isinstance(x, kind)]
        self.frames = [x for x in self.frames if not isinstance(x, kind)]
        return taken


def pump(hub: Hub, conns: list[Conn]) -> None:
    by_id = {c.conn_id: c for c in conns}
    for out in hub.take_outputs():
        if isinstance(out, Send):
            for conn_id in out.conn_ids:
                c = by_id[conn_id]
                c.bytes += len(out.data)
                c.frames += [decode_server_frame(x) for x in c.decoder.feed(out.data)]
        elif isinstance(out, Close):
            by_id[out.conn_id].closed = out.code
        elif isinstance(out, StoreRead):
            by_id[out.conn_id].reads.append(out)
        elif isinstance(out, Persist):
            hub.persisted(out.room, out.entries, 0.0)


def tick(hub: Hub, conns: list[Conn], now: float, backlog: dict[int, int]) -> None:
    """One server tick: report the watched connections' backlog, run the timer."""
    for conn_id in hub.watched():
        hub.report_backlog(conn_id, backlog.get(conn_id, 0), now)
    timer = hub.get_timer()
    if timer is not None and timer <= now:
        hub.handle_timer(now)
    pump(hub, conns)


def big_room(hub: Hub, count: int) -> Conn:
    pub = Conn(hub, 100)
    pub.send(f.Join(1, "big"))
    for i in range(count):
        pub.send(f.Publish(2 + i, "big", f"m{i}", BODY))
    hub.flush(0.0)
    pump(hub, [pub])
    return pub


def core(**kw: object) -> CoreConfig:
    fields: dict[str, object] = {
        "send_budget_bytes": BUDGET,
        "max_backlog_bytes": 4 * BUDGET,
        "slow_consumer_s": 2.0,
        "limits": GENEROUS,
    }
    fields.update(kw)
    return CoreConfig(**fields)  # type: ignore[arg-type]


def test_a_join_replay_waits_for_a_client_that_does_not_read_and_it_is_cut() -> None:
    hub = Hub(core())
    pub = big_room(hub, 2000)  # a 2 MB log
    frozen, reader = Conn(hub, 1), Conn(hub, 2)
    conns = [pub, frozen, reader]
    frozen.send(f.Join(1, "big", cursor=EVERYTHING))
    reader.send(f.Join(1, "big"))
    pump(hub, conns)
    # Under half the budget, a piece at a time: the frozen client holds about one budget at most,
    # not the room's 2 MB log.
    assert BUDGET // 2 <= frozen.bytes <= BUDGET + 2048
    sent, now = frozen.bytes, 0.0
    for i in range(60):  # it never reads: its backlog stays what it was sent
        now = 0.05 * (i + 1)
        pub.send(f.Publish(9000 + i, "big", f"live{i}", BODY), now)
        tick(hub, conns, now, {1: frozen.bytes})
    assert frozen.closed == ErrorCode.SLOW_CONSUMER
    assert frozen.bytes - sent < 3 * BUDGET  # live messages shed to tombstones, then cut
    # The reader got every live message.
    live = [m.body for d in reader.take(f.Deliver) for m in d.messages]
    assert live == [BODY] * 60


def test_a_reading_client_gets_the_whole_replay_in_order_piece_by_piece() -> None:
    hub = Hub(core())
    pub = big_room(hub, 500)
    late = Conn(hub, 1)
    conns = [pub, late]
    late.send(f.Join(1, "big", cursor=EVERYTHING))
    pump(hub, conns)
    now = 0.0
    for _ in range(200):
        if not hub.watched():
            break
        now += 0.01
        tick(hub, conns, now, {})  # it reads everything between ticks
    assert late.closed is None and not hub.watched()
    deliveries = late.take(f.Deliver)
    assert len(deliveries) > 5  # pieces of at most half the budget
    assert [m.seq for d in deliveries for m in d.messages] == list(range(1, 501))
    assert hub.stats.replayed == 500


def test_fetches_are_refused_while_the_connection_has_no_room() -> None:
    hub = Hub(core())
    pub = big_room(hub, 2000)
    frozen = Conn(hub, 1)
    frozen.send(f.Join(1, "big"))
    pump(hub, [pub, frozen])
    shard = hub.room_info("big", 0.0).shards  # type: ignore[union-attr]
    (shard_id,) = shard
    for i in range(100):  # asked at once, never read
        frozen.send(f.Fetch(10 + i, "big", shard_id, 1, 1000))
    pump(hub, [pub, frozen])
    answered = frozen.take(f.Fetched)
    refused = [e for e in frozen.take(f.Error) if e.code == ErrorCode.RATE_LIMITED]
    assert 1 <= len(answered) <= 2 and len(answered) + len(refused) == 100
    # Each answer is cut at half the budget; the refusals are ~100-byte Error frames.
    assert frozen.bytes <= BUDGET + 100 * 128
    # Once it has read them, it may fetch again; the answer goes on from where the last stopped.
    last = answered[-1].messages[-1].seq
    hub.report_backlog(1, 0, 0.1)
    frozen.send(f.Fetch(500, "big", shard_id, last + 1, 1000), 0.1)
    pump(hub, [pub, frozen])
    (more,) = frozen.take(f.Fetched)
    assert more.messages[0].seq == last + 1


def test_sessions_of_one_connection_share_one_budget() -> None:
    hub = Hub(core())
    pub = big_room(hub, 2000)
    sessions = [Conn(hub, i, key="quic-1") for i in range(1, 9)]
    for s in sessions:
        s.send(f.Join(1, "big", cursor=EVERYTHING))
    pump(hub, [pub, *sessions])
    total = sum(s.bytes for s in sessions)
    assert total <= BUDGET + 8 * 2048  # not eight budgets: one, for the connection


def test_store_reads_go_one_at_a_time_per_connection_and_shrink_to_the_budget() -> None:
    hub = Hub(core(log_messages_per_shard=100), durable=True)
    pub = big_room(hub, 1000)  # 900 seqs only in the store
    late = Conn(hub, 1)
    conns = [pub, late]
    late.send(f.Join(1, "big", cursor=EVERYTHING))
    pump(hub, conns)
    (first,) = late.reads  # one in flight, not the whole range
    assert first.request_id == 0 and first.from_seq == 1 and first.to_seq < 900
    (shard_id,) = hub.room_info("big", 0.0).shards  # type: ignore[union-attr]
    late.send(f.Fetch(7, "big", shard_id, 1, 50))  # a store fetch while one read is in flight
    pump(hub, conns)
    (busy,) = late.take(f.Error)
    assert busy.code == ErrorCode.RATE_LIMITED and busy.request_id == 7
    asked = first.to_seq - first.from_seq + 1
    hub.store_read_done(1, asked * 1100, 0, 0.01)  # the store's answer: ~1100 bytes a seq
    pump(hub, conns)
    second = late.reads[-1]
    assert second.from_seq == first.to_seq + 1
    assert second.to_seq - second.from_seq + 1 == (BUDGET // 2) // 1100  # about half a budget
