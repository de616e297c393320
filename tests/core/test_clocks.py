"""Vector clocks as the code in use keeps them: ``Shard.sequence`` stamps (its running join),
``Room.publish`` validates and trims a publisher's clock, ``Reconciler`` orders by it.

These properties replace those of ``gateway/core/vclock.py``, a library of clock functions that
only its own test imported: "merge is a join" is now asked of the shard's running clock, and
"the clock sum strictly increases along happened-before" of the reconciler's total-order key,
on messages a real ``Room`` sequenced for real ``Reconciler`` views.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.room import Room
from gateway.core.shard import Shard
from gateway.core.sharder import ShardingConfig, make_policy
from gateway.errors import ErrorCode, RemoteProtocolError
from gateway.sdk.reconcile import Reconciler
from gateway.wire.frames import Message, Priority, Publish

# Derandomized: the same examples every run, so a failure always reproduces.
props = settings(derandomize=True, max_examples=100, deadline=None)

Key = tuple[int, int]
OWN = 1  # the shard under test; deps name the others
# Few shards and small seqs, so generated clocks often compare (equal, ordered, concurrent).
clocks = st.dictionaries(st.integers(2, 6), st.integers(1, 4), max_size=5)


def join(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    """The model: the pointwise maximum, a missing entry counting as 0."""
    return {s: max(a.get(s, 0), b.get(s, 0)) for s in {*a, *b}}


def dominates(a: Mapping[int, int], b: Mapping[int, int]) -> bool:
    return all(a.get(s, 0) >= seq for s, seq in b.items())


def stamp(deps_list: list[dict[int, int]]) -> list[Message]:
    shard = Shard(OWN, log_messages=1000)
    return [
        shard.sequence(
            deps=deps, sender="s", client_msg_id="", priority=Priority.NORMAL, body=b""
        ).message
        for deps in deps_list
    ]


# ---- the shard: its clock is the running join of what its publishers had seen ----------------


@props
@given(st.lists(clocks, min_size=1, max_size=20))
def test_a_shards_clock_is_the_running_join_of_its_deps(deps_list: list[dict[int, int]]) -> None:
    given_copy = [dict(d) for d in deps_list]
    messages = stamp(deps_list)
    model: dict[int, int] = {}
    for deps, message in zip(deps_list, messages, strict=True):
        model = join(model, deps)
        assert dict(message.deps) == model  # the least upper bound, nothing more
    assert deps_list == given_copy  # the publishers' clocks are not modified
    # Each message's clock dominates its predecessor's: per-shard order agrees with causality.
    for before, after in itertools.pairwise(messages):
        assert dominates(after.deps, before.deps)
        assert sum(after.deps.values()) >= sum(before.deps.values())
    # Later sequencing leaves earlier messages' clocks as they were (no shared dict).
    prefix: dict[int, int] = {}
    for deps, message in zip(deps_list, messages, strict=True):
        prefix = join(prefix, deps)
        assert dict(message.deps) == prefix


@props
@given(st.lists(clocks, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_the_shards_clock_does_not_depend_on_the_order_or_repeats(
    deps_list: list[dict[int, int]], rng: random.Random
) -> None:
    """A join is commutative, associative and idempotent: the same deps in another order, some
    of them twice, end at the same clock."""
    other = deps_list + rng.sample(deps_list, k=rng.randint(0, len(deps_list)))
    rng.shuffle(other)
    assert stamp(deps_list)[-1].deps == stamp(other)[-1].deps


def test_a_clock_claiming_unsequenced_seqs_is_refused() -> None:
    room = Room("r", policy=make_policy(ShardingConfig(policy="fixed")), now=0.0)
    first = room.publish(Publish(1, "r", "a", b"x"), "alice")
    with pytest.raises(RemoteProtocolError) as beyond:
        room.publish(Publish(2, "r", "b", b"x", deps={first.shard: first.seq + 1}), "bob")
    with pytest.raises(RemoteProtocolError) as unknown:
        room.publish(Publish(3, "r", "c", b"x", deps={99: 1}), "bob")
    assert beyond.value.code is unknown.value.code is ErrorCode.BAD_VECTOR_CLOCK
    # The room's own shard never appears in a message's clock, whatever the publisher says.
    again = room.publish(Publish(4, "r", "d", b"x", deps={first.shard: 1}), "alice")
    assert again.entry is not None and again.entry.message.deps == {}


# ---- a room and the views of its publishers --------------------------------------------------


class World:
    """A real Room sequencing publishes from senders whose views are real Reconcilers, and the
    happened-before edges each publish creates (the model the properties are checked against)."""

    def __init__(self, senders: int, shards: int) -> None:
        config = ShardingConfig(policy="fixed", max_shards=4)
        self.room = Room("r", policy=make_policy(config), now=0.0, initial_shards=shards)
        self.views = [Reconciler() for _ in range(senders)]
        self.maps = [self.room.shard_map]
        for view in self.views:
            view.apply_shard_map(self.room.shard_map)
        self.messages: list[Message] = []
        self.edges: dict[Key, set[Key]] = {}  # each message's direct causal predecessors
        self.saw: dict[Key, dict[int, int]] = {}  # what its publisher had delivered

    def publish(self, sender: int) -> None:
        view = self.views[sender]
        delivered = dict(view.cursor().delivered)
        current = set(self.maps[-1].shards)  # the session's rule: deps name the current epoch
        deps = {s: k for s, k in delivered.items() if s in current and k}
        n = len(self.messages)
        published = self.room.publish(Publish(n + 1, "r", f"m{n}", b"x", deps=deps), f"s{sender}")
        assert published.entry is not None
        m = published.entry.message
        before = {(s, k) for s, k in delivered.items() if k}
        if m.seq > 1:
            before.add((m.shard, m.seq - 1))
        else:  # the first message of a shard comes after everything its epoch sealed
            epoch = next(sm for sm in self.maps if m.shard in sm.shards)
            before |= set(epoch.sealed.items())
        self.edges[(m.shard, m.seq)] = before
        self.saw[(m.shard, m.seq)] = delivered
        self.messages.append(m)

    def see(self, sender: int, index: int) -> None:
        if self.messages:
            view = self.views[sender]
            view.receive([self.messages[index % len(self.messages)]], now=0.0)
            view.drain()

    def reshard(self, count: int) -> None:
        self.room.take_pending()  # fanned out (here: dropped) before the new map, as the hub does
        self.maps.append(self.room.reshard(count, now=0.0))
        for view in self.views:
            view.apply_shard_map(self.maps[-1])


steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("see"), st.integers(0, 3), st.integers(0, 1000)),
        st.tuples(st.just("reshard"), st.integers(1, 4), st.just(0)),
    ),
    max_size=80,
)


def play(plan: list[tuple[str, int, int]], shards: int) -> World:
    world = World(senders=4, shards=shards)
    for action, a, b in plan:
        if action == "publish":
            world.publish(a)
        elif action == "see":
            world.see(a, b)
        else:
            world.reshard(a)
    return world


@props
@given(steps, st.integers(1, 3))
def test_a_message_carries_what_its_publisher_saw_of_the_other_current_shards(
    plan: list[tuple[str, int, int]], shards: int
) -> None:
    world = play(plan, shards)
    epoch_of = {s: sm.epoch for sm in world.maps for s in sm.shards}
    for m in world.messages:
        seen = world.saw[(m.shard, m.seq)]
        mine = {s: k for s, k in seen.items() if epoch_of[s] == epoch_of[m.shard]}
        mine.pop(m.shard, None)
        assert dominates(m.deps, mine), (m, seen)
        assert all(epoch_of[s] == epoch_of[m.shard] and s != m.shard for s in m.deps)


@props
@given(steps, st.integers(1, 3), st.randoms(use_true_random=False))
def test_the_order_key_strictly_increases_along_happened_before(
    plan: list[tuple[str, int, int]], shards: int, rng: random.Random
) -> None:
    """Checked on every direct edge (the previous seq of the shard, what the publisher had
    delivered, the seqs its epoch sealed); the order of keys is transitive, so it holds along
    every causal chain. This is what lets every client sort by the key and stay causal."""
    world = play(plan, shards)
    observer = Reconciler()
    for sm in world.maps:
        observer.apply_shard_map(sm)
    shuffled = list(world.messages)
    rng.shuffle(shuffled)
    observer.receive(shuffled, now=0.0)
    keys = {(d.message.shard, d.message.seq): d.key for d in observer.drain()}
    assert len(keys) == len(world.messages)
    for after, before in world.edges.items():
        for key in before:
            assert keys[key] < keys[after], (key, after)
