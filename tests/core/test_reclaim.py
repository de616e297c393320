"""Issue 21 item 5 on virtual time: room creation is rate-limited per principal, and idle rooms
are reclaimed so that ``max_rooms`` counts only live ones (durable state kept in the store)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.limits import LimitsConfig
from gateway.core.outputs import LoadRoom, Persist, RoomChanged, RoomReclaimed
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from tests.core.test_hub import Peer, pump, tick
from tests.core.test_hub_shared_limits import Net, jwt_net, token

IDLE_S = 100.0


def test_one_principal_creating_rooms_in_a_loop_is_rate_limited_and_others_still_get_rooms() -> (
    None
):
    """The attack: one ``room-*`` token on 20 connections joins a new room every 10 ms each for
    5.7 s against a cap of 1,500 (it filled all 1,500 before)."""
    net = jwt_net()
    net.hub = Hub(
        CoreConfig(max_rooms=1500, max_rooms_per_session=1000, room_idle_s=IDLE_S),
        authenticator=net.hub.authenticator,
    )
    net.hub.wall_offset_s = 1_700_000_000.0
    attacker = token("mallory")
    bots = [net.open(f"quic-{i}", tok=attacker) for i in range(20)]
    made = refused = 0
    for step in range(571):  # 0 .. 5.7 s
        now = step * 0.01
        for conn_id in bots:
            net.send(conn_id, f.Join(step + 1, f"room-{conn_id}-{step}"), now)
            for x in net.take(conn_id):
                if isinstance(x, f.Joined):
                    made += 1
                else:
                    assert isinstance(x, f.Error) and x.code is ErrorCode.RATE_LIMITED, x
                    assert not x.fatal and "retry in" in x.message
                    refused += 1
    limits = LimitsConfig()
    most = (
        limits.room_create_burst_per_principal + limits.room_create_rate_per_principal_per_s * 5.7
    )
    assert limits.room_create_burst_per_principal <= made <= most + 1, made
    assert made + refused == 20 * 571
    assert len(net.hub.room_names()) == made  # was 1,500: the cap, for good
    # Someone else still creates and joins rooms at once.
    alice = net.open("quic-alice", tok=token("alice"))
    for i in range(10):
        net.send(alice, f.Join(i + 1, f"room-alice-{i}"), 5.7)
    assert [type(x) for x in net.take(alice)] == [f.Joined] * 10
    assert not net.closed


def fill(net: Net, conn_id: int, count: int, now: float) -> None:
    for i in range(count):
        net.send(conn_id, f.Join(i + 1, f"room-{i}"), now)
    assert [type(x) for x in net.take(conn_id)] == [f.Joined] * count


def test_idle_rooms_are_reclaimed_and_the_cap_frees_up() -> None:
    hub = Hub(CoreConfig(max_rooms=50, room_idle_s=IDLE_S))
    net = Net(hub)
    mallory = net.open("quic-m", "mallory")
    fill(net, mallory, 50, 0.0)
    alice = net.open("quic-a", "alice")
    net.send(alice, f.Join(1, "lobby"), 1.0)
    (full,) = net.take(alice)
    assert isinstance(full, f.Error) and full.code is ErrorCode.TOO_MANY_ROOMS
    # While mallory sits in them, the rooms are live: never reclaimed.
    for now in (IDLE_S, 2 * IDLE_S, 3 * IDLE_S):
        if (timer := hub.get_timer()) is not None and timer <= now:
            hub.handle_timer(now)
    assert len(hub.room_names()) == 50 and hub.stats.rooms_reclaimed == 0
    hub.stream_ended(mallory, 310.0)  # mallory leaves every room at 310 s
    assert hub.get_timer() == 4 * IDLE_S  # the rooms' next look: they left 90 s before it
    hub.handle_timer(4 * IDLE_S)
    assert hub.get_timer() == 310.0 + IDLE_S  # ... so they go 100 s after they left
    hub.handle_timer(310.0 + IDLE_S - 0.001)
    assert len(hub.room_names()) == 50
    hub.handle_timer(310.0 + IDLE_S)
    assert hub.room_names() == [] and hub.stats.rooms_reclaimed == 50
    assert hub.get_timer() is None
    net.send(alice, f.Join(2, "lobby"), 411.0)
    assert [type(x) for x in net.take(alice)] == [f.Joined]


def test_a_room_whose_last_subscriber_the_gateway_closed_gets_its_full_idle_time() -> None:
    """A session closed for its errors leaves its rooms with no time noted: the room still gets
    at least room_idle_s from the look that finds it idle, not from its last noted activity."""
    hub = Hub(CoreConfig(room_idle_s=IDLE_S))
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "lobby"), 0.0)
    tick(hub, [p], IDLE_S)  # a look: busy
    p.send_raw(b"\xff\xff\xff\xff\x0f", 150.0)  # a frame far too large: closed, fatal
    pump(hub, [p])
    assert p.closed is ErrorCode.FRAME_TOO_LARGE
    tick(hub, [p], 2 * IDLE_S)  # the next look finds it idle, since some time unknown
    assert hub.room_names() == ["lobby"]
    tick(hub, [p], 3 * IDLE_S - 0.001)
    assert hub.room_names() == ["lobby"]
    tick(hub, [p], 3 * IDLE_S)
    assert hub.room_names() == []


def test_a_room_waiting_for_the_store_is_not_idle() -> None:
    hub = Hub(CoreConfig(room_idle_s=IDLE_S), durable=True)
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "lobby"))
    p.send(f.Publish(2, "lobby", "gift", b"rose", f.Priority.HIGH))
    (persist,) = [o for o in hub.take_outputs() if isinstance(o, Persist)]
    hub.disconnect(1, 1.0)  # the publisher is gone; its gift is still being stored
    tick(hub, [p], 1.0 + IDLE_S)
    assert hub.room_names() == ["lobby"]
    hub.persisted("lobby", persist.entries, 150.0)
    tick(hub, [p], 150.0)  # fanned out (to nobody) at 150: idle from then
    tick(hub, [p], 150.0 + IDLE_S - 0.001)
    assert hub.room_names() == ["lobby"]
    tick(hub, [p], 150.0 + IDLE_S)
    assert hub.room_names() == []


def test_without_a_store_a_reclaimed_room_comes_back_as_a_new_incarnation() -> None:
    hub = Hub(CoreConfig(room_idle_s=IDLE_S))
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "lobby"))
    for i in range(3):
        p.send(f.Publish(2 + i, "lobby", f"m{i}", b"x"))
    hub.flush(0.0)
    pump(hub, [p])
    (joined,) = p.take(f.Joined)
    (shard,) = joined.shard_maps[0].shards
    p.send(f.Leave(9, "lobby"), 1.0)
    tick(hub, [p], 1.0 + IDLE_S)
    assert hub.room_names() == []
    cursor = f.Cursor(joined.shard_maps[-1].epoch, {shard: 3}, joined.incarnation)
    p.send(f.Join(10, "lobby", cursor), 200.0)
    pump(hub, [p])
    (again,) = p.take(f.Joined)
    # The documented outcome: a new incarnation, so the client knows the room was reset.
    assert again.incarnation != joined.incarnation and again.frontier == {}


def durable_room(hub: Hub, p: Peer, name: str, bodies: list[bytes]) -> f.Joined:
    p.send(f.Join(1, name))
    for i, body in enumerate(bodies):
        p.send(f.Publish(2 + i, name, f"m{i}", body, f.Priority.HIGH))
    persists = [o for o in hub._outputs if isinstance(o, Persist)]
    for persist in persists:
        hub.persisted(name, persist.entries, 0.5)
    hub.flush(0.5)
    pump(hub, [p])
    (joined,) = p.take(f.Joined)
    assert len(p.take(f.Ack)) == len(bodies)
    return joined


def test_a_durable_hub_keeps_the_name_records_the_marks_and_takes_the_room_up_again() -> None:
    hub = Hub(CoreConfig(room_idle_s=IDLE_S), durable=True)
    p = Peer(hub, 1, "p")
    joined = durable_room(hub, p, "lobby", [b"a", b"b"])
    p.send(f.Publish(10, "lobby", "chat", b"c", f.Priority.CHATTER), 0.6)  # seq 3, not stored
    hub.flush(0.6)
    (shard,) = joined.shard_maps[-1].shards
    hub.disconnect(1, 1.0)
    hub.take_outputs()
    hub.handle_timer(1.0 + IDLE_S)
    (reclaimed,) = hub.take_outputs()
    assert reclaimed == RoomReclaimed("lobby", {shard: 3})  # chatter's seq too: never reused
    assert hub.room_names() == []

    q, q2 = Peer(hub, 2, "q"), Peer(hub, 3, "q2")
    pump(hub, [q, q2])
    q.send(f.Join(1, "lobby"), 200.0)  # the room is dormant: the store is asked first
    q2.send(f.Join(7, "lobby"), 200.0)  # a second Join waits with the first
    assert hub.take_outputs() == [LoadRoom("lobby")]  # once, and nothing else yet
    # The server's answer: the room as the store has it, sealed, a new epoch above every id.
    hub.restore_room(
        "lobby",
        incarnation=joined.incarnation,
        mode="live",
        maps=[*joined.shard_maps, f.ShardMap("lobby", 17, (1025,), {shard: 3}, 3)],
        high_water={shard: 3},
        next_shard_id=1026,
        recent=[("p", "m0", shard, 1), ("p", "m1", shard, 2)],
        now=200.1,
    )
    hub.room_loaded("lobby", 200.1)
    assert not any(isinstance(o, RoomChanged) for o in hub._outputs)  # not a new room
    pump(hub, [q, q2])
    (back,) = q.take(f.Joined)
    assert back.incarnation == joined.incarnation and back.frontier == {shard: 3}
    assert [j.request_id for j in q2.take(f.Joined)] == [7]
    # A retry of a stored publish is acked where it is; a new message takes a new shard's seq 1.
    p2 = Peer(hub, 4, "p")
    p2.send(f.Join(1, "lobby"), 201.0)
    p2.send(f.Publish(2, "lobby", "m1", b"b", f.Priority.HIGH), 201.0)
    p2.send(f.Publish(3, "lobby", "m9", b"new", f.Priority.HIGH), 201.0)
    persists = [o for o in hub._outputs if isinstance(o, Persist)]
    assert [(e.message.shard, e.message.seq) for p in persists for e in p.entries] == [(1025, 1)]
    pump(hub, [p2, q, q2])
    assert [(a.client_msg_id, a.shard, a.seq) for a in p2.take(f.Ack)] == [("m1", shard, 2)]


def test_a_failed_load_is_an_error_and_the_next_join_asks_again() -> None:
    hub = Hub(CoreConfig(room_idle_s=IDLE_S), durable=True)
    p = Peer(hub, 1, "p")
    durable_room(hub, p, "lobby", [b"a"])
    hub.disconnect(1, 1.0)
    tick(hub, [], 1.0 + IDLE_S)
    hub.take_outputs()
    q = Peer(hub, 2, "q")
    q.send(f.Join(5, "lobby"), 200.0)
    assert LoadRoom("lobby") in hub.take_outputs()
    hub.room_load_failed("lobby", "disk on fire", 200.1)
    pump(hub, [q])
    (error,) = q.take(f.Error)
    assert error.code is ErrorCode.INTERNAL and error.request_id == 5 and not error.fatal
    q.send(f.Join(6, "lobby"), 201.0)
    assert LoadRoom("lobby") in hub.take_outputs()  # still dormant: never made anew


def test_a_session_that_leaves_while_its_room_loads_is_not_joined() -> None:
    hub = Hub(CoreConfig(room_idle_s=IDLE_S), durable=True)
    p = Peer(hub, 1, "p")
    durable_room(hub, p, "lobby", [b"a"])
    hub.disconnect(1, 1.0)
    tick(hub, [], 1.0 + IDLE_S)
    q, r = Peer(hub, 2, "q"), Peer(hub, 3, "r")
    q.send(f.Join(5, "lobby"), 200.0)
    r.send(f.Join(5, "lobby"), 200.0)
    q.send(f.Leave(6, "lobby"), 200.0)
    hub.disconnect(3, 200.0)
    hub.room_loaded("lobby", 200.1)  # the store had nothing: made anew
    pump(hub, [q, r])
    assert q.take(f.Joined) == [] and r.take(f.Joined) == []
    assert hub.room_info("lobby", 200.1).subscribers == 0  # type: ignore[union-attr]


def test_loading_rooms_count_against_max_rooms() -> None:
    hub = Hub(CoreConfig(room_idle_s=IDLE_S, max_rooms=1), durable=True)
    p = Peer(hub, 1, "p")
    durable_room(hub, p, "lobby", [b"a"])
    hub.disconnect(1, 1.0)
    tick(hub, [], 1.0 + IDLE_S)
    q = Peer(hub, 2, "q")
    q.send(f.Join(5, "lobby"), 200.0)  # loading: holds the one room
    q.send(f.Join(6, "other"), 200.0)
    pump(hub, [q])
    (error,) = q.take(f.Error)
    assert error.code is ErrorCode.TOO_MANY_ROOMS and error.request_id == 6


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.booleans(), st.integers(1, 3000)),
        min_size=1,
        max_size=30,
    )
)
def test_a_room_is_reclaimed_exactly_when_it_has_been_empty_for_room_idle_s(
    steps: list[tuple[int, bool, int]],
) -> None:
    """Three clients join and leave one room at random times (steps of 0.1 s), the timer run
    at every step: the room is held while anyone is in it, and for exactly ``room_idle_s`` after
    the last one leaves, never longer."""
    idle_s = 100.0
    hub = Hub(CoreConfig(room_idle_s=idle_s))
    peers = [Peer(hub, i + 1, f"c{i}") for i in range(3)]
    inside: set[int] = set()
    now, empty_since = 0.0, None
    for who, join, gap in steps:
        later = now + gap / 10
        while (timer := hub.get_timer()) is not None and timer <= later:  # every due look
            hub.handle_timer(timer)
            held = "r" in hub.room_names()
            gone_at = None if empty_since is None else empty_since + idle_s
            assert held == (gone_at is None or timer < gone_at), (timer, empty_since)
        now = later
        if "r" not in hub.room_names():
            empty_since = None
        if join and who not in inside:
            peers[who].send(f.Join(1, "r"), now)
            inside.add(who)
            empty_since = None
        elif not join and who in inside:
            peers[who].send(f.Leave(2, "r"), now)
            inside.discard(who)
            if not inside:
                empty_since = now
        pump(hub, peers)
        assert ("r" in hub.room_names()) == (bool(inside) or empty_since is not None)


def test_rooms_restored_at_startup_are_reclaimed_when_idle_and_free_the_cap() -> None:
    hub = Hub(CoreConfig(room_idle_s=IDLE_S, max_rooms=3), durable=True)
    for i in range(3):  # the store held three rooms: restored, the cap reached
        hub.restore_room(
            f"old-{i}",
            incarnation=10 + i,
            mode="live",
            maps=[
                f.ShardMap(f"old-{i}", 1, (1,), {}, 0),
                f.ShardMap(f"old-{i}", 17, (1025,), {1: 4}, 4),
            ],
            high_water={1: 4},
            next_shard_id=1026,
            now=0.0,
        )
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "new"), 1.0)
    pump(hub, [p])
    assert [e.code for e in p.take(f.Error)] == [ErrorCode.TOO_MANY_ROOMS]
    hub.handle_timer(IDLE_S)
    assert hub.room_names() == []
    assert sorted(o.room for o in hub.take_outputs() if isinstance(o, RoomReclaimed)) == [
        "old-0",
        "old-1",
        "old-2",
    ]
    p.send(f.Join(2, "new"), IDLE_S)
    pump(hub, [p])
    assert [j.room for j in p.take(f.Joined)] == ["new"]
