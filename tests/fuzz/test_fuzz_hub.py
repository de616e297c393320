"""Fuzz the hub's session state machine: hostile connections beside one well-behaved client.

Hypothesis drives a real :class:`~gateway.core.hub.Hub` on virtual time with any interleaving of:
hostile connections opening, sending frames (valid, wrong for their state, mutated, oversized) and
raw bytes in arbitrary chunks, reporting huge send backlogs, ending their streams mid-frame or
vanishing; the message store catching up or failing hostile writes; time passing; and the
well-behaved client ``alice`` publishing in ``lobby``. After every step:

- nothing escapes a hub method (the hub turns every client error into an Error frame);
- every output goes to a connection that is open, and is made of complete, decodable frames;
- ``session_count`` equals the connections opened minus those ended or closed by the hub;
- alice is never sent an Error, each of her publishes is acked (at once, or once the store has it)
  and delivered to her at the next tick, and the seqs she is delivered are dense per shard
  (1, 2, 3, ... with no gap or repeat), whatever the hostile connections do to the same room.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.outputs import Close, Output, Persist, Send
from gateway.core.sharder import ShardingConfig
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit
from tests.fuzz.conftest import FUZZ_STATEFUL_BATCHES, FUZZ_STATEFUL_SETTINGS
from tests.fuzz.strategies import chunked, client_frames, hostile_streams, mutated

ALICE = 1
TICK_S = 0.01
CONFIG = CoreConfig(
    tick_ms=TICK_S * 1000,
    max_frame_bytes=4096,
    max_body_bytes=1024,
    max_rooms_per_session=4,
    max_rooms=12,  # hostile joins can fill the gateway; lobby already exists
    log_messages_per_shard=64,
    epochs_kept=3,
    max_fetch_messages=50,
    max_errors_per_session=6,
    send_budget_bytes=4096,
    slow_consumer_s=0.5,
    max_backlog_bytes=65536,
    # Low thresholds so that bursts of publishes split and merge lobby while it is fuzzed.
    sharding=ShardingConfig(
        split_above_per_s=40.0,
        split_after_s=0.05,
        merge_below_per_s=10.0,
        merge_after_s=0.2,
        max_shards=4,
        velocity_tau_s=0.05,
        cooldown_s=0.1,
    ),
)
BACKLOGS = [0, 4095, 4096, 8192, 65537]


class HubFuzz(RuleBasedStateMachine):
    conns = Bundle("conns")

    def __init__(self) -> None:
        super().__init__()
        self.hub = Hub(CONFIG)
        self.now = 0.0
        self.open: set[int] = set()
        self.next_conn = ALICE + 1
        self.alice_inbox: list[f.ServerFrame] = []
        self.delivered: dict[int, int] = {}  # shard -> last seq alice got
        self.alice_request = 0
        self.store: list[Persist] = []  # writes the store has not finished

    # ---- plumbing -------------------------------------------------------------------------------

    def call(self, method: str, *args: object) -> None:
        """Call a hub input and check what comes out (an exception fails the test as is)."""
        getattr(self.hub, method)(*args)
        self.route(self.hub.take_outputs())

    def route(self, outputs: list[Output]) -> None:
        closed: set[int] = set()
        for out in outputs:
            if isinstance(out, Send):
                assert out.conn_ids and set(out.conn_ids) <= self.open - closed, out.conn_ids
                frames = _decode_all(out.data)
                if ALICE in out.conn_ids:
                    for frame in frames:
                        self.check_for_alice(frame)
                    self.alice_inbox += frames
            elif isinstance(out, Persist):
                assert out.entries and out.room in self.hub.room_names()
                self.store.append(out)
            else:
                assert isinstance(out, Close) and isinstance(out.code, ErrorCode)
                assert out.conn_id in self.open - closed and out.conn_id != ALICE
                closed.add(out.conn_id)
        self.open -= closed

    def check_for_alice(self, frame: f.ServerFrame) -> None:
        assert not isinstance(frame, f.Error), frame
        if isinstance(frame, f.Deliver):
            assert frame.room == "lobby" and frame.skipped == 0
            for m in frame.messages:
                assert not m.shed
                expected = self.delivered.get(m.shard, 0) + 1
                assert m.seq == expected, (m.shard, m.seq, expected)
                self.delivered[m.shard] = m.seq

    def take_alice(self) -> list[f.ServerFrame]:
        frames, self.alice_inbox = self.alice_inbox, []
        return frames

    def run_timers(self) -> None:
        for _ in range(8):  # each run can schedule a due re-shard check; bounded anyway
            timer = self.hub.get_timer()
            if timer is None or timer > self.now:
                return
            self.call("handle_timer", self.now)

    def store_catches_up(self) -> None:
        while self.store:
            write = self.store.pop(0)
            self.call("persisted", write.room, write.entries, self.now)

    # ---- alice ----------------------------------------------------------------------------------

    @initialize()
    def alice_joins(self) -> None:
        self.call("connect", ALICE, self.now)
        self.open.add(ALICE)
        self.alice_send(f.Hello(capabilities=("lz4",), client_name="alice"))
        self.alice_send(f.Join(self.next_request(), "lobby"))
        kinds = [type(x) for x in self.take_alice()]
        assert kinds == [f.Welcome, f.Joined]

    def next_request(self) -> int:
        self.alice_request += 1
        return self.alice_request

    def alice_send(self, frame: f.ClientFrame) -> None:
        self.call("receive_data", ALICE, delimit(encode_client_frame(frame)), self.now)

    @rule(body=st.binary(max_size=200), priority=st.sampled_from(list(f.Priority)))
    def alice_publishes(self, body: bytes, priority: f.Priority) -> None:
        self.take_alice()  # earlier deliveries were checked on arrival
        request = self.next_request()
        msg_id = f"alice-{request}"
        deps = dict(self.delivered)
        self.alice_send(f.Publish(request, "lobby", msg_id, body, priority, deps))
        self.store_catches_up()  # a HIGH message is acked once stored; the store is prompt here
        acks = [x for x in self.take_alice() if isinstance(x, f.Ack)]
        assert [(a.request_id, a.client_msg_id) for a in acks] == [(request, msg_id)]
        self.now += TICK_S
        self.run_timers()
        mine = [
            m
            for x in self.take_alice()
            if isinstance(x, f.Deliver)
            for m in x.messages
            if m.sender == "alice" and m.client_msg_id == msg_id
        ]
        assert [(m.shard, m.seq, m.body) for m in mine] == [(acks[0].shard, acks[0].seq, body)]

    # ---- hostile connections --------------------------------------------------------------------

    @rule(target=conns)
    def connect(self) -> int:
        conn = self.next_conn
        self.next_conn += 1
        self.call("connect", conn, self.now)
        self.open.add(conn)
        return conn

    @rule(conn=conns, data=st.data(), stream=hostile_streams)
    def send_bytes(self, conn: int, data: st.DataObject, stream: bytes) -> None:
        for chunk in data.draw(chunked(stream)):
            self.call("receive_data", conn, chunk, self.now)

    @rule(conn=conns, data=st.data(), frames=st.lists(client_frames, min_size=1, max_size=8))
    def send_frames(self, conn: int, data: st.DataObject, frames: list[f.ClientFrame]) -> None:
        stream = b"".join(delimit(encode_client_frame(x)) for x in frames)
        if data.draw(st.booleans()):
            stream = data.draw(mutated(stream))
        for chunk in data.draw(chunked(stream)):
            self.call("receive_data", conn, chunk, self.now)

    @rule(
        conn=conns,
        name=st.sampled_from(["bob", "mallory", ""]),
        frames=st.lists(client_frames, max_size=8),
    )
    def hostile_session(self, conn: int, name: str, frames: list[f.ClientFrame]) -> None:
        """Get into lobby properly first, then misbehave from inside it."""
        for frame in (f.Hello(client_name=name), f.Join(7, "lobby"), *frames):
            self.call("receive_data", conn, delimit(encode_client_frame(frame)), self.now)

    @rule(conn=conns, backlog=st.sampled_from(BACKLOGS))
    def hostile_reads_slowly(self, conn: int, backlog: int) -> None:
        self.call("report_backlog", conn, backlog, self.now)

    @rule(conn=consumes(conns))
    def end_stream(self, conn: int) -> None:
        self.call("stream_ended", conn, self.now)
        self.open.discard(conn)

    @rule(conn=consumes(conns))
    def vanish(self, conn: int) -> None:
        self.call("disconnect", conn, self.now)
        self.open.discard(conn)

    @rule(conn=conns)
    def ghost_input(self, conn: int) -> None:
        """Input for a connection the hub never had: ignored, not a crash."""
        self.call("receive_data", conn + 10_000, b"\x00", self.now)
        self.call("report_backlog", conn + 10_000, 1 << 30, self.now)
        self.call("stream_ended", conn + 10_000, self.now)

    # ---- the store and time ---------------------------------------------------------------------

    @precondition(lambda self: bool(self.store))
    @rule(fail=st.booleans())
    def store_answers(self, fail: bool) -> None:
        write = self.store.pop(0)
        if fail and all(e.message.sender != "alice" for e in write.entries):
            self.call("persist_failed", write.room, write.entries, "disk full", self.now)
        else:
            self.call("persisted", write.room, write.entries, self.now)

    @rule(dt=st.sampled_from([0.0, 0.001, TICK_S, 0.05, 0.3, 2.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.run_timers()

    @precondition(lambda self: self.hub.get_timer() is not None)
    @rule()
    def flush_now(self) -> None:
        self.call("flush", self.now)

    # ---- invariants -----------------------------------------------------------------------------

    @invariant()
    def sessions_match_open_connections(self) -> None:
        assert self.hub.session_count == len(self.open)
        assert ALICE in self.open

    @invariant()
    def hub_is_bounded(self) -> None:
        assert len(self.hub.room_names()) <= CONFIG.max_rooms
        for name in self.hub.room_names():
            info = self.hub.room_info(name, self.now)
            assert info is not None and info.subscribers <= len(self.open)
            assert len(info.shards) <= CONFIG.sharding.max_shards


def _decode_all(data: bytes) -> list[f.ServerFrame]:
    decoder = FrameDecoder(16 << 20)
    frames = [decode_server_frame(p) for p in decoder.feed(data)]
    assert decoder.at_frame_boundary(), "a Send must hold complete frames"
    return frames


@pytest.mark.parametrize("batch", range(FUZZ_STATEFUL_BATCHES))
def test_hub_survives_hostile_clients(batch: int) -> None:
    run_state_machine_as_test(HubFuzz, settings=FUZZ_STATEFUL_SETTINGS)
