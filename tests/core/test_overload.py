"""The overload policy behind ``retry = "auto"`` (gateway/core/overload.py), on virtual time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.limits import Admission, HandshakeGuard
from gateway.core.overload import OverloadConfig, OverloadPolicy

CFG = OverloadConfig()
BUFFER = 425_984  # a receive buffer as the kernel counts it

# One report: (seconds since the previous one, may be negative: clocks are not trusted), kind,
# parameters. Any report, hot or not.
_step = st.floats(min_value=-0.5, max_value=3.0, allow_nan=False)
_any_report = st.one_of(
    st.tuples(_step, st.just("drained"), st.booleans()),
    st.tuples(
        _step,
        st.just("probe"),
        st.tuples(st.floats(min_value=-1, max_value=5, allow_nan=False), st.booleans()),
    ),
    st.tuples(
        _step,
        st.just("kernel"),
        st.tuples(st.integers(0, 2 * BUFFER), st.integers(0, 5)),
    ),
    st.tuples(_step, st.just("initial"), st.none()),
)


def feed(policy: OverloadPolicy, now: float, kind: str, arg: Any) -> None:
    if kind == "drained":
        policy.drained(now, exhausted=arg)
    elif kind == "probe":
        policy.probe(now, lag_s=arg[0], waiting=arg[1])
    elif kind == "kernel":
        policy.kernel(now, queued_bytes=arg[0], buffer_bytes=BUFFER, drops=arg[1])
    else:
        policy.initial(now)


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_report, max_size=60))
def test_it_always_goes_off_within_calm_s_of_the_last_report(reports: list[Any]) -> None:
    """Whatever was reported, in whatever clock order: with nothing more reported, the overload
    is over ``calm_s`` after the latest time seen. It never stays on by itself."""
    policy, now, latest = OverloadPolicy(), 100.0, 100.0
    for step, kind, arg in reports:
        now += step
        latest = max(latest, now)
        feed(policy, now, kind, arg)
    assert not policy.active(latest + CFG.calm_s)
    assert sum(policy.episodes.values()) <= len(reports)


_calm_report = st.one_of(
    st.tuples(_step, st.just("probe"), st.tuples(st.floats(0, 0.249), st.booleans())),
    st.tuples(_step, st.just("probe"), st.tuples(st.floats(0, 5), st.just(False))),
    st.tuples(_step, st.just("kernel"), st.tuples(st.integers(0, BUFFER // 2 - 1), st.just(0))),
    st.tuples(_step, st.just("initial"), st.none()),
    st.tuples(_step, st.just("drained"), st.just(False)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_calm_report, max_size=80))
def test_nothing_short_of_a_hot_report_switches_it_on(reports: list[Any]) -> None:
    """Lag with nothing waiting (a busy machine, not a gateway behind its clients), a queue under
    half the buffer, no new drops, sockets read empty and any rate of new clients: never on."""
    policy, now = OverloadPolicy(), 100.0
    for step, kind, arg in reports:
        now += step
        feed(policy, now, kind, arg)
        assert not policy.active(now)
    assert sum(policy.episodes.values()) == 0


@pytest.mark.parametrize(
    ("reports", "reason"),
    [
        ([("kernel", (0, 3)), ("kernel", (0, 4))], "drops"),
        ([("kernel", (BUFFER // 2, 0))], "queue"),
        ([("probe", (0.3, True))], "loop_lag"),
        ([("drained", True)] * 3, "standing_queue"),  # 0.05 s apart: 0.1 s of standing queue
    ],
)
def test_each_hot_report_switches_it_on_and_says_why(
    reports: list[tuple[str, Any]], reason: str
) -> None:
    policy, now = OverloadPolicy(), 10.0
    for kind, arg in reports:
        assert not policy.active(now)
        feed(policy, now, kind, arg)
        now += 0.05
    assert policy.active(now)
    assert policy.episodes[reason] == 1 and sum(policy.episodes.values()) == 1
    assert policy.reason == reason
    assert not policy.active(now + CFG.calm_s)


def test_a_burst_of_acks_is_not_a_standing_queue() -> None:
    """A fan-out's ACKs fill the socket for a moment: reads left datagrams waiting, then one
    read the socket empty. Bursts like that, however many, never switch it on."""
    policy, now = OverloadPolicy(), 0.0
    for _ in range(1000):
        for _ in range(4):
            policy.drained(now, exhausted=True)
            now += 0.02
        policy.drained(now, exhausted=False)
        now += 0.01
        assert not policy.active(now)


@settings(max_examples=200, deadline=None)
@given(
    flood_s=st.floats(min_value=0.0, max_value=30.0),
    rate_per_s=st.floats(min_value=CFG.initials_warm_per_s * 1.1, max_value=5000.0),
)
def test_a_flood_of_new_clients_keeps_it_on_and_it_ends_calm_s_after_them(
    flood_s: float, rate_per_s: float
) -> None:
    """Once Retry answers a flood, reading it is cheap and the load signals calm down; the
    flood's new clients keep the overload on (no flapping), and it ends once they stop."""
    policy, now = OverloadPolicy(), 50.0
    policy.probe(now, lag_s=1.0, waiting=True)
    end = now + flood_s
    step = 1.0 / rate_per_s
    while now < end:
        assert policy.active(now)
        policy.initial(now)
        now += step
    # New clients are counted per window: the last one that kept it on is at most a window old.
    assert policy.active(now + CFG.calm_s - CFG.initials_window_s - 2 * step)
    assert not policy.active(now + CFG.calm_s)
    assert policy.episodes["loop_lag"] == 1


def test_a_flood_the_gateway_cannot_read_switches_retry_on_in_the_guard() -> None:
    """The issue's case on virtual time: 1,500 Initials/s arrive, the gateway reads 300/s in
    callbacks of 64 that never empty the socket; the handshake bucket (500/s) is never drained,
    but the standing queue switches Retry on within ``standing_queue_s``, for new clients
    only; validated ones still get in."""
    guard = HandshakeGuard(rate_per_s=500, burst=1000, retry="auto")
    now, by_callback = 0.0, []
    for _ in range(5):  # about one second of reading, 65 Initials per callback
        decisions = {guard.admit(now, validated=False) for _ in range(65)}
        guard.overload.drained(now, exhausted=True)
        by_callback.append(decisions)
        now += 65 / 300
    # The second callback ends 0.2 s after the first saw the queue standing: from the third on,
    # every new client gets a Retry.
    assert by_callback == [{Admission.ACCEPT}] * 2 + [{Admission.RETRY}] * 3
    assert guard.admit(now, validated=False) is Admission.RETRY
    assert guard.admit(now, validated=True) is Admission.ACCEPT
    assert not guard.under_flood(now)  # the bucket alone would never have sent a Retry
    assert guard.overload.episodes["standing_queue"] == 1
    later = now + CFG.calm_s
    assert guard.admit(later, validated=False) is Admission.ACCEPT


@pytest.mark.parametrize("retry", ["off", "always"])
def test_only_auto_listens_to_the_load(retry: str) -> None:
    guard = HandshakeGuard(rate_per_s=500, burst=1000, retry=retry)
    guard.overload.probe(1.0, lag_s=1.0, waiting=True)
    assert guard.overload.active(1.0)
    expected = Admission.RETRY if retry == "always" else Admission.ACCEPT
    assert guard.admit(1.0, validated=False) is expected
    assert guard.retrying(1.0) is (retry == "always")


@pytest.mark.parametrize(
    "kw",
    [
        {"calm_s": 0},
        {"calm_s": float("nan")},
        {"lag_hot_ms": float("inf")},
        {"lag_warm_ms": 300.0},
        {"queue_hot_ratio": 1.5},
        {"queue_warm_ratio": 0.6},
        {"standing_queue_s": True},
        {"initials_warm_per_s": "100"},
    ],
)
def test_overload_config_refuses_unsafe_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OverloadConfig(**kw)


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_report, max_size=60))
def test_retry_is_advised_only_while_overloaded(reports: list[Any]) -> None:
    policy, now = OverloadPolicy(), 100.0
    for step, kind, arg in reports:
        now += step
        feed(policy, now, kind, arg)
        assert not policy.retry_advised(now) or policy.active(now)


def test_an_overload_without_new_clients_asks_nobody_to_retry() -> None:
    """The soak's case: the gateway is behind with its established clients, and a client
    reconnects now and then. Retry would only cost it a round trip: it is not advised; a burst
    of new clients is another matter."""
    guard = HandshakeGuard(rate_per_s=500, burst=1000, retry="auto")
    now = 0.0
    for _ in range(40):  # 4 s of standing queue, a reconnect every second
        guard.overload.drained(now, exhausted=True)
        if now % 1.0 < 0.1:
            assert guard.admit(now, validated=False) is Admission.ACCEPT
        now += 0.1
    assert guard.overload.active(now)
    decisions = [guard.admit(now + i * 0.01, validated=False) for i in range(30)]
    window = CFG.initials_retry_per_s * CFG.initials_window_s
    assert decisions.count(Admission.ACCEPT) == window - 1  # then new clients are arriving
    assert set(decisions[int(window) :]) == {Admission.RETRY}
