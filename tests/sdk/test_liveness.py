"""The SDK's liveness and reconnect pacing policy, sans-IO on virtual time (issue 15 item 5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sdk.liveness import Backoff, BackoffConfig, Liveness, LivenessConfig, Verdict
from gateway.sdk.session import ClientSession

STEP_S = 0.05  # the client polls every housekeeping_s (50 ms)
CONFIG = LivenessConfig(probe_after_s=2.0, dead_after_s=3.0)


def run(
    liveness: Liveness, start: float, end: float, answered_until: float
) -> list[tuple[float, Verdict]]:
    """Poll every STEP_S from ``start`` to ``end`` as the client does: probe when told, and the
    gateway answers every send at once until ``answered_until`` (then it is dead). Returns
    every verdict that was not WAIT, with its time."""
    seen = []
    for i in range(int((end - start) / STEP_S) + 1):
        now = start + i * STEP_S
        verdict = liveness.poll(now)
        if verdict is Verdict.PROBE:
            liveness.sent(now)
            if now <= answered_until:
                liveness.heard(now + 0.001)
        if verdict is not Verdict.WAIT:
            seen.append((now, verdict))
    return seen


def test_an_idle_connection_is_probed_and_never_dead_while_it_answers() -> None:
    liveness = Liveness(CONFIG)
    liveness.start(0.0)
    seen = run(liveness, 0.0, 60.0, answered_until=60.0)
    assert {v for _, v in seen} == {Verdict.PROBE}
    assert len(seen) == pytest.approx(60.0 / CONFIG.probe_after_s, abs=2)


@given(
    death=st.floats(min_value=0.0, max_value=30.0),
    sends=st.lists(st.floats(min_value=0.0, max_value=40.0), max_size=20),
)
def test_a_dead_gateway_is_noticed_within_the_bound(death: float, sends: list[float]) -> None:
    """Whatever the application sends, a gateway silent from ``death`` on is declared dead
    within ``probe_after_s + dead_after_s`` (plus a poll step), once, and never earlier than
    ``dead_after_s`` after the first unanswered send."""
    liveness = Liveness(CONFIG)
    liveness.start(0.0)
    pending = sorted(sends)
    dead_at = None
    first_unanswered = None
    for i in range(int(50.0 / STEP_S) + 1):
        now = i * STEP_S
        while pending and pending[0] <= now:  # the application's requests
            pending.pop(0)
            liveness.sent(now)
            if now <= death:
                liveness.heard(now + 0.001)
            elif first_unanswered is None:
                first_unanswered = now
        verdict = liveness.poll(now)
        if verdict is Verdict.PROBE:
            liveness.sent(now)
            if now <= death:
                liveness.heard(now + 0.001)
            elif first_unanswered is None:
                first_unanswered = now
        if verdict is Verdict.DEAD:
            assert dead_at is None, "declared dead twice"
            dead_at = now
    assert dead_at is not None
    assert dead_at <= death + CONFIG.bound_s + 2 * STEP_S
    assert first_unanswered is not None
    assert dead_at >= first_unanswered + CONFIG.dead_after_s - 1e-9


def poll_through(liveness: Liveness, start_step: int, end_step: int) -> list[tuple[int, Verdict]]:
    """Poll every STEP_S for steps start_step..end_step; the steps that were not WAIT."""
    seen = []
    for step in range(start_step, end_step + 1):
        verdict = liveness.poll(step * STEP_S)
        if verdict is not Verdict.WAIT:
            seen.append((step, verdict))
    return seen


def test_a_slow_answer_within_dead_after_is_not_death() -> None:
    """A request answered (by any packet) after 2.9 s of a 3 s allowance keeps the connection;
    one unanswered for 3 s is dead, once, until the next start()."""
    liveness = Liveness(CONFIG)
    liveness.start(0.0)
    assert poll_through(liveness, 0, 10) == []
    liveness.sent(10 * STEP_S)  # 0.5 s
    assert poll_through(liveness, 11, 68) == []  # up to 3.4 s
    liveness.heard(68 * STEP_S)
    assert liveness.get_timer() == pytest.approx(3.4 + CONFIG.probe_after_s)
    assert poll_through(liveness, 69, 80) == []
    liveness.sent(80 * STEP_S)  # 4.0 s
    assert poll_through(liveness, 81, 200) == [(140, Verdict.DEAD)]  # at 7.0 s
    assert liveness.get_timer() is None
    liveness.start(10.0)
    assert poll_through(liveness, 200, 240) == [(240, Verdict.PROBE)]  # 2 s of silence


@pytest.mark.parametrize(
    "kwargs",
    [
        {"probe_after_s": 0.0},
        {"dead_after_s": -1.0},
        {"dead_after_s": float("nan")},
        {"probe_after_s": float("inf")},
    ],
)
def test_liveness_config_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        LivenessConfig(**kwargs)


@given(draws=st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=1, max_size=30))
def test_backoff_doubles_to_its_cap_with_bounded_jitter(draws: list[float]) -> None:
    config = BackoffConfig(first_delay_s=0.05, max_delay_s=2.0, jitter=0.5, give_up_s=120.0)
    backoff = Backoff(config, now=10.0)
    for k, draw in enumerate(draws):
        base = min(0.05 * 2**k, 2.0)
        assert base * 0.5 <= backoff.next_delay_s(draw) <= base * 1.5
    assert not backoff.gave_up(130.0)
    assert backoff.gave_up(130.1)


def test_backoff_config_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="jitter"):
        BackoffConfig(jitter=1.0)
    with pytest.raises(ValueError, match="max_delay_s"):
        BackoffConfig(first_delay_s=3.0, max_delay_s=2.0)


def test_the_session_carries_the_policy() -> None:
    session = ClientSession(
        liveness=LivenessConfig(probe_after_s=1.0, dead_after_s=2.0),
        backoff=BackoffConfig(give_up_s=5.0),
    )
    session.liveness.start(0.0)
    assert session.liveness.poll(1.0) is Verdict.PROBE
    assert session.reconnect_backoff(0.0).gave_up(5.5)


def test_a_stalled_caller_does_not_hold_its_own_stall_against_the_gateway() -> None:
    """The event loop was blocked for 5 s right after a send: the answer may be waiting unread,
    so the first poll after the stall is not DEAD; silence after it still is."""
    liveness = Liveness(CONFIG)
    liveness.start(0.0)
    liveness.sent(0.05)
    assert liveness.poll(0.05) is Verdict.WAIT
    assert liveness.poll(5.05) is Verdict.WAIT  # 5 s without a poll: the caller was stalled
    for i in range(1, 59):  # polled every 50 ms again, still no answer
        assert liveness.poll(5.05 + i * STEP_S) is Verdict.WAIT, i
    assert liveness.poll(5.05 + 60 * STEP_S) is Verdict.DEAD  # 3 s of running silence
