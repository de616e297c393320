"""Backpressure: priority shedding for connections over budget, and slow-consumer disconnects."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.batching import plan_shedding
from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.outputs import Close, Persist
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from tests.core.test_hub import Peer, pump, tick

priorities = st.lists(st.sampled_from(list(f.Priority)), max_size=200)


@given(priorities, st.integers(0, 10_000_000), st.integers(1, 1_000_000))
def test_never_sheds_a_higher_priority_while_a_lower_one_is_kept(
    batch: list[f.Priority], backlog: int, budget: int
) -> None:
    keep = plan_shedding(batch, backlog, budget)
    assert len(keep) == len(batch)  # the plan is the batch's size: nothing else is held
    kept = [p for p, k in zip(batch, keep, strict=True) if k]
    shed = [p for p, k in zip(batch, keep, strict=True) if not k]
    assert f.Priority.HIGH not in shed
    if kept and shed:
        assert max(shed) < min(kept)
    if backlog < budget:
        assert not shed


def test_a_congested_connection_gets_tombstones_and_a_skipped_count() -> None:
    hub = Hub(CoreConfig(send_budget_bytes=1000))
    pub, fast, slow = Peer(hub, 1, "pub"), Peer(hub, 2, "fast"), Peer(hub, 3, "slow")
    peers = [pub, fast, slow]
    for p in peers:
        p.send(f.Join(1, "r"))
    pump(hub, peers)
    hub.report_backlog(3, 2500, 0.0)  # over twice the budget: only HIGH gets through
    pub.send(f.Publish(2, "r", "c", b"chatter", f.Priority.CHATTER))
    pub.send(f.Publish(3, "r", "n", b"normal", f.Priority.NORMAL))
    pub.send(f.Publish(4, "r", "h", b"gift", f.Priority.HIGH))
    (persist,) = [o for o in hub._outputs if isinstance(o, Persist)]  # the gift is reliable
    hub.persisted("r", persist.entries, 0.0)
    hub.flush(0.1)
    pump(hub, peers)
    (full,) = fast.take(f.Deliver)
    assert [m.body for m in full.messages] == [b"chatter", b"normal", b"gift"]
    (thin,) = slow.take(f.Deliver)
    assert [(m.seq, m.shed, m.body) for m in thin.messages] == [
        (1, True, b""),
        (2, True, b""),
        (3, False, b"gift"),
    ]
    assert thin.skipped == 2
    assert hub.stats.shed["chatter"] == 1 and hub.stats.shed["normal"] == 1


def test_slow_consumers_are_disconnected_and_recovered_ones_are_not() -> None:
    hub = Hub(CoreConfig(send_budget_bytes=1000, slow_consumer_s=2.0))
    slow, better = Peer(hub, 1, "slow"), Peer(hub, 2, "better")
    hub.report_backlog(1, 5000, 0.0)
    hub.report_backlog(2, 5000, 0.0)
    assert sorted(hub.congested()) == [1, 2]
    tick(hub, [slow, better], 1.0)
    hub.report_backlog(2, 100, 1.0)  # drained below half the budget
    for t in (1.5, 2.0, 2.5):
        tick(hub, [slow, better], t)
    assert slow.closed == ErrorCode.SLOW_CONSUMER and better.closed is None
    assert slow.take(f.Error)[0].code == ErrorCode.SLOW_CONSUMER


def test_a_runaway_backlog_is_cut_at_once() -> None:
    hub = Hub(CoreConfig(max_backlog_bytes=10_000))
    p = Peer(hub, 1, "p")
    hub.report_backlog(1, 10_001, 0.0)
    outs = hub.take_outputs()
    assert any(isinstance(o, Close) and o.code == ErrorCode.SLOW_CONSUMER for o in outs)
    assert hub.session_count == 0
    del p


def test_a_room_over_its_rate_sheds_chatter_first_then_normal_never_high() -> None:
    from gateway.core.limits import LimitsConfig

    limits = LimitsConfig(
        publish_rate_per_room_per_s=1,
        publish_burst_per_room=10,
        publish_rate_per_connection_per_s=1000,
        publish_burst_per_connection=1000,
    )
    hub = Hub(CoreConfig(limits=limits))
    p = Peer(hub, 1, "p")
    p.send(f.Join(1, "r"))
    outcomes: dict[f.Priority, list[bool]] = {q: [] for q in f.Priority}
    for i in range(30):  # all at t=0: no refill; the bucket drains
        priority = list(f.Priority)[i % 3]
        p.send(f.Publish(10 + i, "r", f"m{i}", b"x", priority))
        pump(hub, [p])
        errors = p.take(f.Error)
        outcomes[priority].append(not errors)
        assert all(e.code == ErrorCode.RATE_LIMITED for e in errors)
    assert all(outcomes[f.Priority.HIGH])  # never refused for the room's rate
    first_chatter_refused = outcomes[f.Priority.CHATTER].index(False)
    first_normal_refused = outcomes[f.Priority.NORMAL].index(False)
    assert first_chatter_refused < first_normal_refused  # lowest priority goes first
    # Refusals are counted as refusals, by priority, and not as shed deliveries (nothing was
    # delivered, and the one subscriber never fell behind).
    refused = outcomes[f.Priority.CHATTER].count(False), outcomes[f.Priority.NORMAL].count(False)
    assert (
        hub.stats.room_rate_refused["chatter"],
        hub.stats.room_rate_refused["normal"],
    ) == refused
    assert hub.stats.room_rate_refused["high"] == 0
    assert sum(hub.stats.shed.values()) == 0
