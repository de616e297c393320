"""Token buckets and admission limits on virtual time."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.limits import (
    Admission,
    ConnectionCounter,
    HandshakeGuard,
    KeyedBuckets,
    LimitsConfig,
    TokenBucket,
)

PROPS = settings(derandomize=True, max_examples=300, deadline=None)

rates = st.floats(0.01, 100_000)
bursts = st.floats(1, 10_000)
steps = st.lists(
    st.tuples(st.floats(0, 50), st.floats(0, 20)),  # (time advance in s, tokens asked)
    min_size=1,
    max_size=60,
)


@PROPS
@given(rate=rates, burst=bursts, start=st.floats(0, 1e6), steps=steps)
def test_never_grants_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now, granted = start, 0.0
    for dt, n in steps:
        now += dt
        if bucket.take(now, n):
            granted += n
        bound = burst + rate * (now - start)
        assert granted <= bound * (1 + 1e-9) + 1e-6


@PROPS
@given(rate=rates, burst=bursts, start=st.floats(0, 1e6), steps=steps)
def test_retry_after_is_exact(
    rate: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = start
    for dt, n in steps:
        now += dt
        wait = bucket.retry_after_s(now, n)
        if n > burst:
            assert wait == math.inf and not bucket.take(now, n)
            continue
        early = max(1e-6, 1e-3 / rate)  # a thousandth of a token short, or a microsecond
        if wait > early:
            assert not bucket.take(now + wait - early, n), "granted before retry_after"
        now += wait
        assert bucket.take(now, n), "refused at retry_after"


@PROPS
@given(rate=rates, burst=st.integers(1, 1000), start=st.floats(0, 1e6))
def test_empty_bucket_refills_completely(rate: float, burst: int, start: float) -> None:
    bucket = TokenBucket(rate, burst)
    taken = 0
    while bucket.take(start):
        taken += 1
    assert taken == burst  # starts full, whole tokens
    assert not bucket.take(start)
    later = start + burst / rate
    assert bucket.is_full(later) and bucket.available(later) == pytest.approx(burst, abs=1e-4)
    assert bucket.take(later, burst)


def test_refused_take_costs_nothing_and_clock_going_back_grants_nothing() -> None:
    bucket = TokenBucket(10, 5)
    assert bucket.take(100.0, 5)
    assert not bucket.take(100.0)
    assert bucket.retry_after_s(100.0) == pytest.approx(0.1)
    for _ in range(100):
        assert not bucket.take(100.05)  # refusals don't push the retry further out
    assert bucket.retry_after_s(100.05) == pytest.approx(0.05)
    assert not bucket.take(50.0)  # time went backwards
    assert bucket.take(100.1)


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5), (math.inf, 1), (1, math.nan)]
)
def test_bucket_parameters_are_validated(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@PROPS
@given(
    max_keys=st.integers(1, 20),
    ops=st.lists(st.tuples(st.integers(0, 60), st.floats(0, 5)), max_size=200),
)
def test_keyed_buckets_stay_bounded(max_keys: int, ops: list[tuple[int, float]]) -> None:
    buckets: KeyedBuckets[int] = KeyedBuckets(1.0, 3.0, max_keys)
    now = 0.0
    for key, dt in ops:
        now += dt
        buckets.take(key, now)
        assert len(buckets) <= max_keys and key in buckets


def test_keyed_buckets_evict_idle_keys_first() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(1.0, 2.0, max_keys=3)
    assert buckets.take("busy", 0.0, 2)  # empty until t = 2
    assert buckets.take("idle", 0.0, 0)  # full
    assert buckets.take("other", 0.0, 2)
    buckets.take("busy", 0.5, 0)  # "busy" is now the most recent; "idle" is the oldest idle one
    buckets.take("new", 1.0)
    assert "idle" not in buckets and {"busy", "other", "new"} <= set(buckets._buckets)
    assert not buckets.take("busy", 1.0, 2)  # it was kept, half refilled
    assert buckets.retry_after_s("busy", 1.0, 2) == pytest.approx(1.0)
    assert buckets.prune(10.0) == 3 and len(buckets) == 0


def test_keyed_buckets_evict_least_recent_when_none_is_idle() -> None:
    buckets: KeyedBuckets[int] = KeyedBuckets(1.0, 1.0, max_keys=2)
    assert buckets.take(1, 0.0) and buckets.take(2, 0.0)
    assert buckets.take(3, 0.0)
    assert 1 not in buckets and 2 in buckets and 3 in buckets


def test_connection_counter_caps_total_and_per_address() -> None:
    counter: ConnectionCounter[str] = ConnectionCounter(max_total=3, max_per_address=2)
    assert counter.try_open("a") and counter.try_open("a")
    assert not counter.try_open("a")
    assert counter.try_open("b") and not counter.try_open("c")  # total reached
    counter.close("a")
    assert counter.count("a") == 1 and counter.try_open("c")
    for address in ("a", "b", "c"):
        counter.close(address)
    assert counter.total == 0 and counter._by_address == {}
    with pytest.raises(ValueError):
        counter.close("a")


@PROPS
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), max_size=100))
def test_connection_counter_never_exceeds_its_caps(ops: list[tuple[bool, int]]) -> None:
    counter: ConnectionCounter[int] = ConnectionCounter(max_total=6, max_per_address=2)
    open_: list[int] = []
    for opening, address in ops:
        if opening:
            if counter.try_open(address):
                open_.append(address)
        elif address in open_:
            open_.remove(address)
            counter.close(address)
        assert counter.total == len(open_) <= 6
        assert all(open_.count(a) <= 2 for a in open_)


def test_handshake_guard_modes() -> None:
    off = HandshakeGuard(1.0, 4.0, retry="off")
    assert [off.admit(0.0, validated=False) for _ in range(5)] == [Admission.ACCEPT] * 4 + [
        Admission.DROP
    ]
    always = HandshakeGuard(1.0, 4.0, retry="always")
    assert always.admit(0.0, validated=False) is Admission.RETRY
    assert always.admit(0.0, validated=True) is Admission.ACCEPT
    auto = HandshakeGuard(1.0, 4.0, retry="auto")
    seen = [auto.admit(0.0, validated=False) for _ in range(4)]
    assert seen == [Admission.ACCEPT] * 3 + [Admission.RETRY]  # below half the burst: a flood
    assert auto.under_flood(0.0) and auto.admit(0.0, validated=True) is Admission.ACCEPT
    assert auto.admit(0.0, validated=True) is Admission.DROP  # validated, but over the rate
    assert not auto.under_flood(10.0) and auto.admit(10.0, validated=False) is Admission.ACCEPT


def test_limits_config_defaults_and_validation() -> None:
    config = LimitsConfig()
    assert config.retry == "auto" and config.violations_before_close == 10
    assert config.connection_publish_bucket().burst == 100
    assert config.room_publish_buckets(10).max_keys == 10
    assert config.handshake_guard().retry == "auto"
    assert config.connection_counter().max_per_address == 64
    assert config.connection_join_bucket().rate_per_s == 10


@pytest.mark.parametrize(
    "kw",
    [
        {"max_connections": 0},
        {"max_connections_per_address": 0},
        {"publish_rate_per_connection_per_s": 0},
        {"publish_burst_per_room": 0.5},
        {"handshake_rate_per_s": -1},
        {"retry": "sometimes"},
        {"violations_before_close": 0},
    ],
)
def test_limits_config_refuses_unsafe_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LimitsConfig(**kw)
