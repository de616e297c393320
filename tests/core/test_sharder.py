"""Velocity smoothing, ShardingConfig validation, and the split/merge policy on virtual time.

Nothing here sleeps: a small driver feeds a policy a synthetic room's traffic step by step, calls
decide() every step and applies each decision the way the hub does (a new epoch, new shard ids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.sharder import (
    POLICIES,
    FixedPolicy,
    ShardingConfig,
    ShardPolicy,
    Velocity,
    VelocityPolicy,
    make_policy,
)

# ---- a synthetic room -----------------------------------------------------------------------------


@dataclass
class Change:
    at: float
    old: int
    new: int


@dataclass
class Room:
    """A room on virtual time: a policy, the current shard ids and every change applied."""

    policy: ShardPolicy
    shards: list[int] = field(default_factory=lambda: [1])
    changes: list[Change] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # the count after every step
    next_id: int = 0
    credit: float = 0.0
    turn: int = 0
    skew: bool = False  # send everything to the first shard (one very hot sender)

    def __post_init__(self) -> None:
        self.next_id = max(self.shards) + 1
        self.policy.reset(self.shards, 0.0)

    def step(self, rate_per_s: float, now: float, dt: float) -> None:
        """Send ``rate_per_s * dt`` messages spread evenly over the shards, then decide."""
        self.credit += rate_per_s * dt
        total = int(self.credit + 1e-9)
        self.credit -= total
        if total:
            self._send(total, now)
        self.decide(now)
        self.counts.append(len(self.shards))

    def decide(self, now: float) -> None:
        """Ask the policy and apply its answer: a new epoch with fresh shard ids."""
        count = self.policy.decide(self.shards, now)
        if count is not None:
            self.changes.append(Change(now, len(self.shards), count))
            self.shards = list(range(self.next_id, self.next_id + count))
            self.next_id += count
            self.policy.reset(self.shards, now)

    def _send(self, total: int, now: float) -> None:
        if self.skew:
            self.policy.observe(self.shards[0], total, now)
            return
        n = len(self.shards)
        base, extra = divmod(total, n)
        # The remainder rotates over the shards so that, over time, every shard gets the same.
        for i, shard in enumerate(self.shards):
            count = base + ((i - self.turn) % n < extra)
            if count:
                self.policy.observe(shard, count, now)
        self.turn = (self.turn + extra) % n

    def run(self, schedule: list[tuple[float, float]], dt: float, start: float = 0.0) -> float:
        """Play (rate msgs/s, duration s) segments from ``start``; returns the end time."""
        step = round(start / dt)
        for rate, duration in schedule:
            for _ in range(round(duration / dt)):
                step += 1
                # From the step index, not by adding dt up, so times stay exact multiples.
                self.step(rate, step * dt, dt)
        return step * dt


# ---- Velocity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau_s", [0.5, 1.0, 3.0])
def test_velocity_converges_to_a_constant_rate(tau_s: float) -> None:
    rate, dt = 1000.0, 0.01
    vel = Velocity(tau_s)
    steps = round(5 * tau_s / dt)
    for i in range(1, steps + 1):
        vel.observe(10, i * dt)
    assert vel.rate(steps * dt) == pytest.approx(rate, rel=0.05)


@settings(derandomize=True, max_examples=50, deadline=None)
@given(rate=st.floats(100.0, 50_000.0), tau_s=st.floats(0.2, 5.0))
def test_velocity_converges_for_any_rate_and_tau(rate: float, tau_s: float) -> None:
    # Steps of tau/50: the discrete sum overshoots by about dt/(2 tau) = 1% after a batch, and
    # 5 tau leaves exp(-5) < 1% of the start-up gap; whole messages add < 1/(rate tau) <= 5%.
    dt = tau_s / 50
    vel = Velocity(tau_s)
    credit = 0.0
    for i in range(1, 251):
        credit += rate * dt
        count = int(credit)
        credit -= count
        vel.observe(count, i * dt)
    assert vel.rate(250 * dt) == pytest.approx(rate, rel=0.05)


def test_velocity_decays_towards_zero_when_quiet() -> None:
    vel = Velocity(1.0, rate_per_s=1000.0, now=0.0)
    assert vel.rate(0.0) == 1000.0
    assert vel.rate(1.0) == pytest.approx(1000.0 / math.e)
    assert vel.rate(5.0) < 10.0
    assert vel.rate(60.0) < 1e-20
    assert vel.rate(1.0) == pytest.approx(1000.0 / math.e)  # rate() does not change state


def test_velocity_time_never_goes_backwards() -> None:
    vel = Velocity(1.0)
    vel.observe(10, 5.0)
    vel.observe(10, 4.0)  # late: counted at 5.0, with no decay
    assert vel.rate(5.0) == pytest.approx(20.0)
    assert vel.rate(3.0) == pytest.approx(20.0)


@pytest.mark.parametrize("tau_s", [0.0, -1.0, math.inf, math.nan])
def test_velocity_rejects_bad_tau(tau_s: float) -> None:
    with pytest.raises(ValueError, match="tau_s"):
        Velocity(tau_s)


def test_velocity_rejects_negative_counts_and_rates() -> None:
    with pytest.raises(ValueError, match="count"):
        Velocity(1.0).observe(-1, 0.0)
    with pytest.raises(ValueError, match="rate"):
        Velocity(1.0, rate_per_s=-1.0)


# ---- ShardingConfig and the registry --------------------------------------------------------------


def test_default_config_is_valid() -> None:
    config = ShardingConfig()
    assert config.merge_below_per_s * config.split_factor < config.split_above_per_s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": ""}, "policy"),
        ({"split_above_per_s": 0.0}, "split_above_per_s must be positive"),
        ({"split_after_s": -1.0}, "split_after_s must be positive"),
        ({"merge_below_per_s": math.nan}, "merge_below_per_s must be positive"),
        ({"merge_after_s": math.inf}, "merge_after_s must be positive"),
        ({"velocity_tau_s": 0}, "velocity_tau_s must be positive"),
        ({"cooldown_s": -0.5}, "cooldown_s must be positive"),
        ({"cooldown_s": True}, "cooldown_s must be a number"),
        ({"max_shards": 2.5}, "max_shards must be an integer"),
        ({"min_shards": 0}, "1 <= min_shards <= max_shards"),
        ({"min_shards": 4, "max_shards": 2}, "1 <= min_shards <= max_shards"),
        ({"split_factor": 1}, "split_factor must be at least 2"),
        ({"merge_below_per_s": 2500.0}, "hysteresis"),
        ({"split_factor": 10}, "hysteresis"),
        ({"split_above_per_s": 900.0}, "could be pushed straight back over the split threshold"),
    ],
)
def test_config_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardingConfig(**kwargs)


def test_config_is_frozen() -> None:
    config = ShardingConfig()
    with pytest.raises(AttributeError):
        config.max_shards = 4  # type: ignore[misc]


def test_make_policy_builds_the_named_policy() -> None:
    assert isinstance(make_policy(ShardingConfig()), VelocityPolicy)
    fixed = make_policy(ShardingConfig(policy="fixed"))
    assert isinstance(fixed, FixedPolicy)
    assert set(POLICIES) == {"velocity", "fixed"}
    for factory in POLICIES.values():
        assert isinstance(factory(ShardingConfig()), ShardPolicy)


def test_make_policy_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown sharding policy 'magic'.*fixed, velocity"):
        make_policy(ShardingConfig(policy="magic"))


# ---- the policy through a surge ------------------------------------------------------------------

DT = 0.01
BASE, SURGE = 100.0, 20_000.0
BEFORE_S, SURGE_S, AFTER_S = 30.0, 60.0, 120.0
SURGE_START, SURGE_END = BEFORE_S, BEFORE_S + SURGE_S


@dataclass
class Surge:
    config: ShardingConfig
    room: Room
    at_peak: dict[int, float]  # the shards' velocities as the surge ends


@pytest.fixture(
    scope="module",
    params=[
        # The defaults end the surge at 4 shards of exactly 5,000 msgs/s: at the threshold, which
        # is not above it (the smoothed rate dips under it between batches), so no third split.
        ShardingConfig(),
        # A lower threshold leaves no tie: 4 shards are over it, 8 are well under.
        ShardingConfig(split_above_per_s=4000.0),
    ],
    ids=["defaults", "split-above-4000"],
)
def surge(request: pytest.FixtureRequest) -> Surge:
    """100 msgs/s for 30 s, 20,000 msgs/s for 60 s, 100 msgs/s for 120 s, in 10 ms steps."""
    config: ShardingConfig = request.param
    room = Room(VelocityPolicy(config))
    end = room.run([(BASE, BEFORE_S), (SURGE, SURGE_S)], DT)
    at_peak = room.policy.velocities(end)
    room.run([(BASE, AFTER_S)], DT, start=end)
    return Surge(config, room, at_peak)


def test_first_split_comes_split_after_s_after_the_smoothed_rate_crosses(
    surge: Surge,
) -> None:
    config, room = surge.config, surge.room
    first = room.changes[0]
    assert first.new == first.old * config.split_factor
    # The surge is a step for the smoothed rate, which climbs as SURGE - (SURGE - BASE) e^(-t/tau):
    # it only passes split_above after `ramp` seconds, and the split_after_s clock starts then.
    ramp = config.velocity_tau_s * math.log((SURGE - BASE) / (SURGE - config.split_above_per_s))
    assert ramp + 2 * DT < 1.0  # so the window below sits inside [split_after_s, split_after_s + 1]
    # Two steps of slack: decisions happen on 10 ms steps, and the discrete sum runs ~dt/2 ahead.
    earliest = SURGE_START + ramp + config.split_after_s - 2 * DT
    latest = SURGE_START + ramp + config.split_after_s + 2 * DT
    assert SURGE_START + config.split_after_s <= earliest <= first.at <= latest
    assert first.at <= SURGE_START + config.split_after_s + 1.0


def test_surge_splits_until_every_shard_is_below_the_threshold(
    surge: Surge,
) -> None:
    config, room = surge.config, surge.room
    splits = [c for c in room.changes if SURGE_START <= c.at < SURGE_END]
    assert [c.new for c in splits] == [c.old * config.split_factor for c in splits]
    peak = splits[-1].new
    assert SURGE / peak <= config.split_above_per_s  # no shard is over the threshold now
    assert SURGE / (peak // config.split_factor) > config.split_above_per_s  # and no overshoot
    gap = max(config.cooldown_s, config.split_after_s)
    assert all(b.at - a.at >= gap - 1e-9 for a, b in pairwise(splits))
    assert len(surge.at_peak) == peak
    assert all(rate < 1.01 * config.split_above_per_s for rate in surge.at_peak.values())
    assert sum(surge.at_peak.values()) == pytest.approx(SURGE, rel=0.01)


def test_after_the_surge_merges_back_to_one_shard(surge: Surge) -> None:
    config, room = surge.config, surge.room
    merges = [c for c in room.changes if c.at >= SURGE_END]
    assert merges
    assert all(c.new == c.old // config.split_factor for c in merges)
    # The room's smoothed rate falls from SURGE to BASE; the quiet clock starts when it passes
    # merge_below, and every epoch then waits its own merge_after_s.
    decay = config.velocity_tau_s * math.log((SURGE - BASE) / (config.merge_below_per_s - BASE))
    assert merges[0].at >= SURGE_END + config.merge_after_s
    assert merges[0].at == pytest.approx(SURGE_END + decay + config.merge_after_s, abs=2 * DT)
    assert all(b.at - a.at >= config.merge_after_s - 1e-9 for a, b in pairwise(merges))
    assert merges[-1].new == 1
    assert room.counts[-1] == 1


def test_no_flapping(surge: Surge) -> None:
    config, room = surge.config, surge.room
    assert all(c.at >= SURGE_START for c in room.changes)  # nothing while the room is quiet
    up = [n for i, n in enumerate(room.counts) if (i + 1) * DT < SURGE_END]
    down = [n for i, n in enumerate(room.counts) if (i + 1) * DT >= SURGE_END]
    assert up == sorted(up)
    assert down == sorted(down, reverse=True)
    assert len(room.changes) <= 2 * math.log2(config.max_shards) + 2


def test_a_quiet_room_merges_on_next_check_alone() -> None:
    config = ShardingConfig()
    room = Room(VelocityPolicy(config))
    now = room.run([(SURGE, 20.0)], DT)
    assert len(room.shards) == 4
    policy = room.policy
    rate = policy.room_velocity(now)
    wakes = 0
    # No more messages: only the timer next_check() asks for drives the room.
    while (wake := policy.next_check(now)) is not None:
        wakes += 1
        assert wakes <= 10
        assert wake >= now
        now = wake
        room.decide(now)
    assert len(room.shards) == 1
    merges = [c for c in room.changes if c.new < c.old]
    assert [c.new for c in merges] == [2, 1]
    quiet_from = 20.0 + config.velocity_tau_s * math.log(rate / config.merge_below_per_s)
    assert merges[0].at == pytest.approx(quiet_from + config.merge_after_s, abs=1e-3)
    assert policy.next_check(now + 100.0) is None


# ---- the policy on random traffic ----------------------------------------------------------------


@st.composite
def configs(draw: st.DrawFn) -> ShardingConfig:
    factor = draw(st.integers(2, 4))
    min_shards = draw(st.integers(1, 3))
    split_above = draw(st.floats(1000.0, 20_000.0))
    return ShardingConfig(
        split_factor=factor,
        min_shards=min_shards,
        max_shards=draw(st.integers(min_shards, 16)),
        split_above_per_s=split_above,
        merge_below_per_s=draw(st.floats(10.0, 0.99 * split_above / factor)),
        split_after_s=draw(st.floats(0.1, 3.0)),
        merge_after_s=draw(st.floats(0.1, 10.0)),
        cooldown_s=draw(st.floats(0.1, 6.0)),
        velocity_tau_s=draw(st.floats(0.1, 2.0)),
    )


# Rates lean on the extremes (silence, far over any threshold) so that rooms do split and merge.
rates = st.one_of(st.sampled_from([0.0, 50_000.0]), st.floats(0.0, 50_000.0))
schedules = st.lists(st.tuples(rates, st.floats(0.1, 12.0)), min_size=1, max_size=6)


def check_invariants(config: ShardingConfig, room: Room) -> None:
    assert all(config.min_shards <= n <= config.max_shards for n in room.counts)
    for change in room.changes:
        if change.new > change.old:
            assert change.new == min(change.old * config.split_factor, config.max_shards)
        else:
            assert change.new == max(change.old // config.split_factor, config.min_shards)
    for a, b in pairwise(room.changes):
        assert b.at - a.at >= config.cooldown_s - 1e-9
        if a.new < a.old and b.new > b.old:  # a split right after a merge
            assert b.at - a.at >= config.split_after_s - 1e-9


@settings(derandomize=True, max_examples=150, deadline=None)
@given(config=configs(), schedule=schedules, skew=st.booleans())
def test_policy_invariants_on_random_traffic(
    config: ShardingConfig, schedule: list[tuple[float, float]], skew: bool
) -> None:
    room = Room(VelocityPolicy(config), shards=list(range(1, config.min_shards + 1)), skew=skew)
    room.run(schedule, 0.05)
    check_invariants(config, room)


def test_policy_invariants_on_traffic_that_toggles_around_the_thresholds() -> None:
    # Short cooldown and hold times, and bursts just long enough to split, then silences just
    # long enough to merge: the worst case for flapping, and it must still keep its gaps.
    config = ShardingConfig(split_after_s=0.5, merge_after_s=1.0, cooldown_s=0.5, max_shards=8)
    room = Room(VelocityPolicy(config))
    room.run([(40_000.0, 1.5), (0.0, 6.0)] * 6, 0.01)
    check_invariants(config, room)
    pairs = pairwise(room.changes)
    assert any(a.new < a.old and b.new > b.old for a, b in pairs)  # the case is exercised


# ---- the policy, call by call --------------------------------------------------------------------


def overload(policy: ShardPolicy, shard: int, start: float, seconds: float) -> float:
    """Send 10,000 msgs/s to one shard in 10 ms steps; returns the end time."""
    steps = round(seconds / DT)
    for i in range(1, steps + 1):
        policy.observe(shard, 100, start + i * DT)
    return start + steps * DT


def test_nothing_is_decided_during_the_cooldown() -> None:
    config = ShardingConfig()
    policy = VelocityPolicy(config)
    policy.reset([1], 0.0)
    end = overload(policy, 1, 0.0, 4.0)  # overloaded for over split_after_s, inside the cooldown
    assert policy.decide([1], end) is None
    assert policy.next_check(end) == pytest.approx(config.cooldown_s)
    end = overload(policy, 1, end, 1.0)
    assert policy.decide([1], end) == 2


def test_a_dip_restarts_the_overload_clock() -> None:
    config = ShardingConfig(cooldown_s=0.1)
    policy = VelocityPolicy(config)
    # 10,000 msgs/s from silence passes 5,000 after tau * ln 2 = 0.69 s: over from 0.7 to 1.5 s.
    end = overload(policy, 1, 0.0, 1.5)
    # Two quiet seconds take it under 5,000; it is back over 0.6 s into the next burst.
    end = overload(policy, 1, end + 2.0, 2.0)
    assert policy.decide([1], end) is None  # 2.0 s over in all, but not in one stretch
    assert policy.decide([1], overload(policy, 1, end, 1.0)) == 2


def test_a_quiet_epoch_must_wait_its_own_merge_after_s() -> None:
    config = ShardingConfig()
    policy = VelocityPolicy(config)
    policy.reset([1, 2, 3, 4], 0.0)
    assert policy.next_check(0.0) == config.merge_after_s
    assert policy.decide([1, 2, 3, 4], config.merge_after_s - 0.01) is None
    assert policy.decide([1, 2, 3, 4], config.merge_after_s) == 2
    policy.reset([5, 6], config.merge_after_s)
    assert policy.next_check(config.merge_after_s) == 2 * config.merge_after_s


def test_reset_carries_the_room_rate_over_evenly() -> None:
    policy = VelocityPolicy(ShardingConfig())
    end = overload(policy, 1, 0.0, 3.0)
    before = policy.room_velocity(end)
    policy.reset([7, 8], end)
    assert policy.room_velocity(end) == before
    assert policy.velocities(end) == {7: before / 2, 8: before / 2}
    policy.observe(1, 500, end)  # a late message of the old epoch counts for the room only
    assert set(policy.velocities(end)) == {7, 8}
    assert policy.room_velocity(end) == pytest.approx(before + 500 / 1.0)


def test_shards_are_learnt_from_observe_until_decide_names_them() -> None:
    policy = VelocityPolicy(ShardingConfig())
    policy.observe(3, 10, 0.0)
    policy.observe(4, 10, 0.0)
    assert set(policy.velocities(0.0)) == {3, 4}
    policy.decide([4, 5], 0.0)
    assert set(policy.velocities(0.0)) == {4, 5}
    assert policy.velocities(0.0)[5] == 0.0


def test_a_count_outside_the_configured_range_is_corrected() -> None:
    policy = VelocityPolicy(ShardingConfig(min_shards=2, max_shards=4))
    assert policy.decide([1], 0.0) == 2
    assert policy.decide(list(range(1, 9)), 0.0) == 4


def test_bad_shard_lists_are_rejected() -> None:
    for policy in (VelocityPolicy(ShardingConfig()), FixedPolicy(ShardingConfig())):
        with pytest.raises(ValueError, match="at least one shard"):
            policy.decide([], 0.0)
        with pytest.raises(ValueError, match="at least one shard"):
            policy.reset([], 0.0)
        with pytest.raises(ValueError, match="distinct"):
            policy.reset([1, 1], 0.0)


def test_next_check_is_none_when_nothing_can_come_due() -> None:
    policy = VelocityPolicy(ShardingConfig(max_shards=1))
    policy.reset([1], 0.0)
    overload(policy, 1, 0.0, 3.0)
    assert policy.next_check(3.0) is None  # overloaded, but already at max_shards


def test_next_check_points_at_a_pending_split() -> None:
    config = ShardingConfig(cooldown_s=0.1)
    policy = VelocityPolicy(config)
    policy.observe(1, 10_000, 0.0)  # one big batch: 10,000 msgs/s smoothed at once
    assert policy.next_check(0.0) == config.split_after_s


def test_fixed_policy_never_reshards_but_tracks_load() -> None:
    policy = FixedPolicy(ShardingConfig(policy="fixed"))
    policy.reset([1], 0.0)
    end = overload(policy, 1, 0.0, 30.0)
    assert policy.decide([1], end) is None
    assert policy.next_check(end) is None
    assert policy.velocities(end)[1] == pytest.approx(10_000.0, rel=0.01)
    assert policy.room_velocity(end) == pytest.approx(10_000.0, rel=0.01)
