"""bench.flat: the intervals compared, the flatness verdict from known histograms, the
arguments refused, and a short real run (gateway process, subscriber processes) writing its JSON
and PNG. Only counts and fields are asserted, never speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.flat import FlatConfig, Interval, compare_windows, flatness, main
from loadgen.stats import encode, new_histogram, record_us


def _interval(index: int, p99_ms: float, count: int = 100) -> Interval:
    """An interval whose ``count`` samples are all ``p99_ms`` (so every percentile is that)."""
    histogram = new_histogram()
    for _ in range(count):
        record_us(histogram, p99_ms * 1000)
    return Interval(
        index=index,
        start_s=index * 10.0,
        window_s=10.0,
        count=count,
        p50_ms=p99_ms,
        p99_ms=p99_ms,
        p999_ms=p99_ms,
        max_ms=p99_ms,
        delivered_per_s=20_000.0,
        achieved=1.0,
        gateway_cpu_percent=50.0,
        gateway_wait_percent=0.0,
        gateway_rss_mb=100.0,
        gateway_udp_drops=0,
        subscriber_udp_drops=0,
        shed=0,
        sessions_lost=0,
        errors=0,
        load_avg_1m=1.0,
        histogram=encode(histogram),
    )


def test_five_minutes_of_ten_second_intervals_compare_minute_two_with_minute_five() -> None:
    config = FlatConfig()
    assert config.intervals == 30 and config.per_window == 6
    second, last = compare_windows(config)
    assert list(second) == [6, 7, 8, 9, 10, 11]
    assert list(last) == [24, 25, 26, 27, 28, 29]


def test_rising_latency_is_not_flat_and_steady_latency_is() -> None:
    config = FlatConfig()
    steady = [_interval(i, 20.0) for i in range(30)]
    verdict = flatness(steady, config)
    assert verdict["flat"] and verdict["ratio"] == pytest.approx(1.0, rel=0.01)
    # The start-up minute does not count: a slow first minute is still flat.
    slow_start = [_interval(i, 500.0 if i < 6 else 20.0) for i in range(30)]
    assert flatness(slow_start, config)["flat"]
    rising = [_interval(i, 20.0 + 2.0 * i) for i in range(30)]  # 32-42 ms, then 68-78 ms
    verdict = flatness(rising, config)
    assert not verdict["flat"] and verdict["ratio"] > 1.5
    assert verdict["second"]["count"] == 600 and verdict["second"]["p99_ms"] == pytest.approx(
        42, rel=0.01
    )
    assert verdict["last"]["p99_ms"] == pytest.approx(78, rel=0.01)


def test_nothing_measured_is_not_flat() -> None:
    config = FlatConfig()
    verdict = flatness([_interval(i, 20.0, count=0) for i in range(30)], config)
    assert not verdict["flat"] and verdict["ratio"] is None


@settings(max_examples=50, deadline=None)
@given(
    second_ms=st.integers(1, 10_000),
    last_ms=st.integers(1, 10_000),
    limit=st.floats(1.0, 5.0),
)
def test_the_verdict_is_the_ratio_of_the_two_windows(
    second_ms: int, last_ms: int, limit: float
) -> None:
    config = FlatConfig(duration_s=40.0, interval_s=10.0, compare_s=10.0, ratio_limit=limit)
    intervals = [
        _interval(0, 1.0),
        _interval(1, second_ms),
        _interval(2, 1.0),
        _interval(3, last_ms),
    ]
    verdict = flatness(intervals, config)
    ratio = verdict["last"]["p99_ms"] / verdict["second"]["p99_ms"]
    assert verdict["flat"] == (ratio <= limit)


@pytest.mark.parametrize(
    "fields",
    [
        {"duration_s": 100.0},  # not two 60 s windows of intervals
        {"compare_s": 5.0},  # shorter than an interval
        {"interval_s": 0.0},
        {"subscribers": 0},
        {"rate_per_s": float("nan")},
        {"engine": "quiche"},
        {"ratio_limit": 0.5},
    ],
)
def test_bad_arguments_are_refused_by_name(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(fields)).split("_")[0]):
        FlatConfig(**fields)  # type: ignore[arg-type]


def test_the_command_line_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--duration-s", "30"])
    assert exc.value.code == 2
    assert "duration_s" in capsys.readouterr().err


def test_a_short_run_writes_every_interval_and_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "flat.json"
    argv = ["--duration-s", "4", "--interval-s", "1", "--compare-s", "1", "--warmup-s", "0.5"]
    argv += ["--subscribers", "6", "--rate-per-s", "20", "--processes", "1", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == "skein.bench.flat/1" and doc["config"]["engine"]
    assert [i["index"] for i in doc["intervals"]] == [0, 1, 2, 3]
    # A starved machine may stall a whole interval: counts are asserted over the run, and each
    # interval only for what it must hold.
    assert sum(i["count"] for i in doc["intervals"]) == doc["totals"]["count"] > 0
    for interval in doc["intervals"]:
        assert interval["histogram"] and interval["gateway_rss_mb"] > 0
        assert interval["count"] == 0 or interval["p99_ms"] >= interval["p50_ms"] > 0
    verdict = doc["flatness"]
    assert verdict["second"]["intervals"] == [1, 1] and verdict["last"]["intervals"] == [3, 3]
    assert verdict["second"]["count"] == doc["intervals"][1]["count"]
    assert verdict["last"]["count"] == doc["intervals"][3]["count"]
    assert isinstance(verdict["flat"], bool) and (verdict["ratio"] is None or verdict["ratio"] > 0)
    assert doc["publisher"]["sent"] > 0
    assert doc["load_avg"]["before"] and doc["machine"]["cores"]
    assert out.with_suffix(".png").stat().st_size > 10_000
