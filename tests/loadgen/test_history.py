"""Which stored messages a comeback takes from the history: those its new session won't get."""

from __future__ import annotations

from gateway.wire.frames import Joined, ShardMap
from loadgen.history import Stored, before_join


def test_only_what_precedes_the_new_sessions_start_is_taken() -> None:
    maps = (
        ShardMap("r", 1, (1, 2)),
        ShardMap("r", 2, (1025,), sealed={1: 33, 2: 7}),  # a restart sealed shards 1 and 2
    )
    joined = Joined(request_id=1, room="r", shard_maps=maps, frontier={1025: 10})
    stored = [
        Stored(1, 30, 3, b"a"),  # sealed epoch, within its seal: taken
        Stored(2, 7, 3, b"b"),
        Stored(1025, 10, 3, b"c"),  # current shard, up to the frontier: taken
        Stored(1025, 11, 3, b"d"),  # past the frontier: it arrives live
        Stored(2048, 1, 3, b"e"),  # a shard newer than the join: live
        Stored(0, 5, 3, b"f"),  # older than every map kept: taken
    ]
    assert [m.body for m in before_join(joined, stored)] == [b"a", b"b", b"c", b"f"]
