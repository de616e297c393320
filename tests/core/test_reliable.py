"""The reliable path in the sans-IO hub: stored before acked, acked before notified, in order."""

from __future__ import annotations

from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.outputs import Persist
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from tests.core.test_hub import Peer, pump


def persists(hub: Hub) -> list[Persist]:
    return [o for o in hub._outputs if isinstance(o, Persist)]


def test_high_priority_is_stored_before_ack_and_before_anyone_sees_it() -> None:
    hub = Hub(CoreConfig())
    alice, bob = Peer(hub, 1, "alice"), Peer(hub, 2, "bob")
    for p in (alice, bob):
        p.send(f.Join(1, "live"))
    pump(hub, [alice, bob])
    alice.send(f.Publish(2, "live", "gift", b"a rose", f.Priority.HIGH))
    alice.send(f.Publish(3, "live", "chat", b"lol", f.Priority.CHATTER))
    (persist,) = persists(hub)
    assert [e.message.seq for e in persist.entries] == [1]
    hub.flush(1.0)
    pump(hub, [alice, bob])
    assert [a.client_msg_id for a in alice.take(f.Ack)] == ["chat"]  # chatter acks at once
    assert bob.take(f.Deliver) == []  # ... but waits behind the gift: seq order, store first

    late = Peer(hub, 3, "late")
    late.send(f.Join(1, "live"))
    pump(hub, [late])
    assert late.take(f.Joined)[0].frontier == {}  # nothing notified yet: it gets both later

    hub.persisted("live", persist.entries, 1.1)
    hub.flush(1.2)
    pump(hub, [alice, bob, late])
    assert [a.client_msg_id for a in alice.take(f.Ack)] == ["gift"]
    for p in (bob, late):
        (batch,) = p.take(f.Deliver)
        assert [(m.seq, m.body) for m in batch.messages] == [(1, b"a rose"), (2, b"lol")]


def test_group_rooms_store_every_message_and_retries_wait_for_the_store() -> None:
    hub = Hub(CoreConfig(group_rooms=("team-*",)))
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "team-a"))
    p.send(f.Publish(2, "team-a", "m1", b"hi", f.Priority.CHATTER))
    p.send(f.Publish(3, "team-a", "m1", b"hi", f.Priority.CHATTER))  # a retry before the commit
    (persist,) = persists(hub)
    pump(hub, [p])
    assert p.take(f.Ack) == []
    hub.persisted("team-a", persist.entries, 1.0)
    pump(hub, [p])
    # The original and the retry are both answered once the store has it, with the same id.
    assert [(a.request_id, a.seq) for a in p.take(f.Ack)] == [(2, 1), (3, 1)]


def test_a_failed_store_write_is_an_error_not_an_ack() -> None:
    hub = Hub()
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "r"))
    p.send(f.Publish(2, "r", "g", b"gift", f.Priority.HIGH))
    (persist,) = persists(hub)
    hub.take_outputs()
    hub.persist_failed("r", persist.entries, "disk full", 1.0)
    hub.flush(1.1)
    pump(hub, [p])
    (err,) = p.take(f.Error)
    assert err.code == ErrorCode.INTERNAL and err.request_id == 2 and "disk full" in err.message
    assert p.take(f.Ack) == []
    p.send(f.Publish(3, "r", "g", b"gift", f.Priority.HIGH))  # the retry is a new message
    (again,) = persists(hub)
    assert again.entries[0].message.seq == 2


def test_a_retry_after_a_restart_is_acked_with_its_stored_place_not_stored_again() -> None:
    hub = Hub(CoreConfig(group_rooms=("team-*",)), durable=True)
    hub.restore_room(
        "team-a",
        incarnation=7,
        mode="group",
        maps=[
            f.ShardMap("team-a", 1, (1,), {}, 0),
            f.ShardMap("team-a", 17, (1025,), {1: 4}, 4),
        ],
        high_water={1: 4},
        next_shard_id=1026,
        now=0.0,
        recent=[("p", "m3", 1, 3), ("p", "m4", 1, 4)],
    )
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "team-a"))
    p.send(f.Publish(2, "team-a", "m4", b"stored before the crash"))  # its ack was lost
    p.send(f.Publish(3, "team-a", "m5", b"new"))
    (persist,) = persists(hub)
    pump(hub, [p])
    # The retry is answered at once with where the store has it; only the new one is stored.
    assert [(a.client_msg_id, a.shard, a.seq) for a in p.take(f.Ack)] == [("m4", 1, 4)]
    assert [(e.message.client_msg_id, e.message.shard, e.message.seq) for e in persist.entries] == [
        ("m5", 1025, 1)
    ]
    # Another sender's id is its own: the window is keyed by (sender, client_msg_id).
    q = Peer(hub, 2, "q")
    q.send(f.Join(1, "team-a"))
    q.send(f.Publish(2, "team-a", "m4", b"q's own m4"))
    (persist,) = persists(hub)
    assert [(e.message.sender, e.message.seq) for e in persist.entries] == [("q", 2)]
    pump(hub, [p, q])
    assert q.take(f.Ack) == []  # stored first (group room): waiting for its commit


def test_after_a_restart_clocks_may_claim_more_of_a_sealed_shard_than_was_stored() -> None:
    """Chatter went out before the store heard of it: a client saw shard 1 up to seq 9, the store
    only to 5. Its next publish, clock and all, is taken (the sealed shard's entry is dominated)."""
    hub = Hub(CoreConfig(), durable=True)
    hub.restore_room(
        "lobby",
        incarnation=3,
        mode="live",
        maps=[f.ShardMap("lobby", 1, (1,), {}, 0), f.ShardMap("lobby", 17, (1025,), {1: 5}, 5)],
        high_water={1: 5},
        next_shard_id=1026,
        now=0.0,
    )
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "lobby"))
    p.send(f.Publish(2, "lobby", "after", b"hi", f.Priority.CHATTER, {1: 9}))
    p.send(f.Publish(3, "lobby", "bogus", b"x", f.Priority.CHATTER, {1025: 50}))
    pump(hub, [p])
    assert [(a.client_msg_id, a.shard, a.seq) for a in p.take(f.Ack)] == [("after", 1025, 1)]
    (error,) = p.take(f.Error)  # the current epoch's shards are still checked
    assert error.code == ErrorCode.BAD_VECTOR_CLOCK and error.request_id == 3
