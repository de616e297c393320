"""loadgen.schedule: Zipf rooms, publish schedules with bursts, handoff schedules (all seeded)."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter

import pytest

from loadgen.scenario import (
    Burst,
    HandoffConfig,
    PathsConfig,
    PublishConfig,
    RoomsConfig,
    StallConfig,
)
from loadgen.schedule import (
    HandoffPlan,
    RoomPicker,
    client_rng,
    handoff_schedule,
    plan_handoff,
    publish_schedule,
    rate_multiplier,
    stall_schedule,
    zipf_weights,
)


def test_zipf_weights_shape() -> None:
    assert zipf_weights(4, 0.0) == [1.0, 1.0, 1.0, 1.0]
    w = zipf_weights(5, 1.0)
    assert w == pytest.approx([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])


def test_room_popularity_follows_zipf() -> None:
    rooms = RoomsConfig(count=5, zipf_s=1.0, per_client=1)
    picker = RoomPicker(rooms)
    draws = 20_000
    counts = Counter(picker.ranks(client_rng(1, i, "rooms"))[0] for i in range(draws))
    weights = zipf_weights(5, 1.0)
    for rank in range(5):
        expected = weights[rank] / sum(weights)
        assert counts[rank] / draws == pytest.approx(expected, abs=0.02)
    assert counts[0] > counts[1] > counts[2] > counts[4]


def test_each_client_gets_distinct_rooms_even_with_a_steep_zipf() -> None:
    picker = RoomPicker(RoomsConfig(count=6, zipf_s=8.0, per_client=6))
    for i in range(50):
        ranks = picker.ranks(client_rng(1, i, "rooms"))
        assert ranks == (0, 1, 2, 3, 4, 5)
    picker = RoomPicker(RoomsConfig(count=100, zipf_s=1.0, per_client=3))
    for i in range(200):
        ranks = picker.ranks(client_rng(7, i, "rooms"))
        assert len(set(ranks)) == 3 and list(ranks) == sorted(ranks)


def test_a_client_behaves_the_same_in_any_worker() -> None:
    """Schedules depend only on (seed, client index, stream): not on order or process."""
    publish = PublishConfig(rate_per_client_per_s=3.0, priorities=(("normal", 1), ("high", 1)))
    first = list(publish_schedule(client_rng(5, 42, "publish"), (0, 3), publish, 20.0))
    client_rng(5, 41, "publish").random()  # another client drawing in between changes nothing
    again = list(publish_schedule(client_rng(5, 42, "publish"), (0, 3), publish, 20.0))
    assert first == again and first
    other = list(publish_schedule(client_rng(6, 42, "publish"), (0, 3), publish, 20.0))
    assert other != first


def test_publish_schedule_rate_sizes_priorities() -> None:
    publish = PublishConfig(
        rate_per_client_per_s=2.0,
        size_bytes_min=50,
        size_bytes_max=5000,
        priorities=(("chatter", 0.0), ("normal", 1.0), ("high", 1.0)),
    )
    events = [
        e
        for i in range(100)
        for e in publish_schedule(client_rng(1, i, "publish"), (0, 1), publish, 50.0)
    ]
    # 100 clients x 2 Hz x 50 s = 10,000 expected; Poisson spread is ~1%.
    assert 9_500 < len(events) < 10_500
    assert all(50 <= e.size_bytes <= 5000 for e in events)
    sizes = sorted(e.size_bytes for e in events)
    assert 400 < sizes[len(sizes) // 2] < 600  # log-uniform: the median is the geometric mean
    kinds = Counter(e.priority for e in events)
    assert kinds["chatter"] == 0 and kinds["normal"] == pytest.approx(kinds["high"], rel=0.1)
    assert {e.room_rank for e in events} == {0, 1}


def test_publish_schedule_is_in_time_order_within_the_run() -> None:
    publish = PublishConfig(rate_per_client_per_s=10.0)
    events = list(publish_schedule(client_rng(1, 0, "publish"), (0, 1, 2, 3), publish, 10.0))
    times = [e.at_s for e in events]
    assert times == sorted(times)
    assert all(0 <= t < 10.0 for t in times)


def test_burst_multiplies_the_rate_of_its_room_only() -> None:
    burst = Burst(at_s=10.0, duration_s=5.0, multiplier=6.0, room_rank=0)
    assert rate_multiplier([burst], 0, 9.99) == 1.0
    assert rate_multiplier([burst], 0, 10.0) == 6.0
    assert rate_multiplier([burst], 0, 14.99) == 6.0
    assert rate_multiplier([burst], 0, 15.0) == 1.0
    assert rate_multiplier([burst], 1, 12.0) == 1.0
    everywhere = Burst(at_s=0.0, duration_s=1.0, multiplier=3.0)
    assert rate_multiplier([burst, everywhere], 7, 0.5) == 3.0

    publish = PublishConfig(rate_per_client_per_s=2.0, bursts=(burst,))
    events = [
        e
        for i in range(200)
        for e in publish_schedule(client_rng(3, i, "publish"), (0, 1), publish, 30.0)
    ]

    def rate(rank: int, lo: float, hi: float) -> float:
        return sum(1 for e in events if e.room_rank == rank and lo <= e.at_s < hi) / (hi - lo)

    hot_in, hot_out = rate(0, 10.0, 15.0), rate(0, 16.0, 30.0)
    assert hot_in / hot_out == pytest.approx(6.0, rel=0.15)
    assert rate(1, 10.0, 15.0) / rate(1, 16.0, 30.0) == pytest.approx(1.0, rel=0.15)


def test_handoff_schedule_intervals_kinds_and_profiles() -> None:
    handoffs = HandoffConfig(
        mean_interval_s=4.0, kinds=(("migrate", 3.0), ("reconnect", 1.0), ("blackout", 0.0))
    )
    paths = PathsConfig(mix=(("wifi", 1.0), ("lte", 1.0)))
    schedules = [
        handoff_schedule(client_rng(9, i, "handoff"), handoffs, paths, 100.0) for i in range(200)
    ]
    assert schedules[17] == handoff_schedule(client_rng(9, 17, "handoff"), handoffs, paths, 100.0)
    intervals = [b.at_s - a.at_s for s in schedules for a, b in itertools.pairwise(s)]
    assert statistics.fmean(intervals) == pytest.approx(4.0, rel=0.05)
    events = [e for s in schedules for e in s]
    assert all(0 <= e.at_s < 100.0 for e in events)
    kinds = Counter(e.kind for e in events)
    assert kinds["blackout"] == 0
    assert kinds["migrate"] / kinds["reconnect"] == pytest.approx(3.0, rel=0.15)
    assert {e.profile for e in events} == {"wifi", "lte"}


def test_no_handoffs_when_the_interval_is_zero_and_no_profile_without_switching() -> None:
    paths = PathsConfig(mix=(("wifi", 1.0),), switch_on_handoff=False)
    assert handoff_schedule(client_rng(1, 0, "h"), HandoffConfig(), paths, 100.0) == []
    events = handoff_schedule(client_rng(1, 0, "h"), HandoffConfig(mean_interval_s=1.0), paths, 20)
    assert events and all(e.profile is None for e in events)


def test_handoff_plans_per_mode() -> None:
    assert plan_handoff("migrate", "scenario") == HandoffPlan("none", "migrate")
    assert plan_handoff("nat_rebind", "scenario") == HandoffPlan("nat_rebind", "none")
    assert plan_handoff("blackout", "scenario") == HandoffPlan("blackout", "migrate")
    assert plan_handoff("reconnect", "scenario") == HandoffPlan("none", "reconnect")
    assert plan_handoff("reconnect", "migrate") == HandoffPlan("none", "migrate")
    for kind in ("migrate", "nat_rebind", "blackout", "reconnect"):
        plan = plan_handoff(kind, "reconnect")  # type: ignore[arg-type]
        assert plan.recovery == "reconnect"
        assert plan.path == plan_handoff(kind, "scenario").path  # type: ignore[arg-type]


def test_stall_schedule_picks_a_share_of_clients_and_never_overlaps() -> None:
    stalls = StallConfig(fraction=0.25, mean_interval_s=10.0, stall_s_min=2.0, stall_s_max=5.0)
    schedules = [stall_schedule(client_rng(3, i, "stall"), stalls, 600.0) for i in range(400)]
    slow = [s for s in schedules if s]
    assert 60 < len(slow) < 140  # about a quarter of 400
    for events in slow:
        for event in events:
            assert 0 <= event.at_s < 600 and 2.0 <= event.length_s <= 5.0
        for before, after in itertools.pairwise(events):
            assert after.at_s >= before.at_s + before.length_s
    # ~600 / (10 + 3.5) stalls each on average
    assert 35 < statistics.fmean(len(s) for s in slow) < 55
    assert schedules == [
        stall_schedule(client_rng(3, i, "stall"), stalls, 600.0) for i in range(400)
    ]
    assert all(
        not stall_schedule(client_rng(3, i, "stall"), StallConfig(), 600.0) for i in range(50)
    )


def test_stall_config_is_validated() -> None:
    with pytest.raises(ValueError, match="stall_s_max"):
        StallConfig(fraction=0.5, stall_s_min=5.0, stall_s_max=2.0)
    with pytest.raises(ValueError, match="fraction"):
        StallConfig(fraction=1.5)
