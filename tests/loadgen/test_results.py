"""loadgen.results and loadgen.report: latency within the handoff window per kind, and the
migration target (p99 within a migrate window <= steady p99 + one path RTT), from known samples."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rich.console import Console

from loadgen.report import headline, render
from loadgen.results import (
    MIGRATION_RULE,
    build_document,
    build_summary,
    migration_target,
    path_rtt_ms,
)
from loadgen.scenario import Scenario, parse_scenario
from loadgen.stats import MIXED, Recorder, merge

MS = 1_000_000


def _scenario(**paths: Any) -> Scenario:
    return parse_scenario(
        {
            "name": "kinds",
            "handoffs": {
                "mean_interval_s": 5.0,
                "kinds": {"migrate": 1, "blackout": 1, "nat_rebind": 0},
            },
            "paths": paths or {"mix": {"wifi": 0.6, "lte": 0.4}},
        }
    )


def _run(scenario: Scenario, mode: str, migrate_ms: int) -> dict[str, Any]:
    """100 steady samples of 1..100 ms, 100 migrate-window samples of ``migrate_ms``, 50
    blackout-window samples of 400 ms, 5 of 900 ms within windows of two kinds at once."""
    recorder = Recorder(origin_ns=0, bucket_s=1.0)
    for i in range(100):
        recorder.latency((i + 1) * MS, i * MS, handoff=False)
        recorder.latency(migrate_ms * MS, i * MS, handoff=True, kind="migrate")
    for i in range(50):
        recorder.latency(400 * MS, i * MS, handoff=True, kind="blackout")
    for i in range(5):
        recorder.latency(900 * MS, i * MS, handoff=True, kind=MIXED)
    return build_summary(
        label=mode,
        mode=mode,
        scenario=scenario,
        merged=merge([recorder.snapshot()]),
        samples=(),
        gateway_pid=None,
        workers=1,
        started_at="now",
        wall_s=1.0,
    )


def test_the_slowest_path_in_the_mix_gives_the_round_trip() -> None:
    assert path_rtt_ms(_scenario()) == ("lte", 50.0)  # 25 ms one way
    assert path_rtt_ms(_scenario(mix={"wifi": 1, "lte": 0})) == ("wifi", 10.0)
    assert path_rtt_ms(_scenario(mix={"perfect": 1})) == ("perfect", 0.0)


def test_latency_is_reported_per_kind_the_scenario_has() -> None:
    run = _run(_scenario(), "migrate", migrate_ms=120)
    by_kind = run["latency_ms"]["handoff_by_kind"]
    assert list(by_kind) == ["migrate", "blackout"]  # nat_rebind has weight 0, no samples
    assert by_kind["migrate"]["count"] == 100 and by_kind["blackout"]["count"] == 50
    assert by_kind["migrate"]["p99_ms"] == pytest.approx(120, rel=0.01)
    assert by_kind["blackout"]["p999_ms"] == pytest.approx(400, rel=0.01)
    assert run["latency_ms"]["handoff_mixed"]["count"] == 5  # kept apart, not charged to a kind
    assert run["latency_ms"]["handoff"]["count"] == 155


@pytest.mark.parametrize(("migrate_ms", "passed"), [(140, True), (160, False)])
def test_the_migration_target_passes_or_fails_on_the_figures(migrate_ms: int, passed: bool) -> None:
    # steady p99 is 99 ms, one LTE round trip 50 ms: the limit is 149 ms.
    target = _run(_scenario(), "migrate", migrate_ms)["migration_target"]
    assert target["rule"] == MIGRATION_RULE and target["recovery"] == "migrate"
    assert target["steady_p99_ms"] == pytest.approx(99, rel=0.01)
    assert target["path"] == "lte" and target["path_rtt_ms"] == 50.0
    assert target["limit_ms"] == pytest.approx(149, rel=0.01)
    assert target["samples"] == 100 and target["passed"] is passed


def test_the_migration_target_does_not_apply_to_a_reconnecting_run_or_without_samples() -> None:
    target = _run(_scenario(), "reconnect", migrate_ms=10)["migration_target"]
    assert target["passed"] is None and "reconnect" in target["note"]
    empty = migration_target(mode="migrate", migrate=None, steady_p99_ms=5.0, rtt=("wifi", 10.0))
    assert empty["passed"] is None and empty["samples"] == 0 and empty["limit_ms"] == 15.0


def test_the_report_and_its_summary_line_give_each_kind_and_the_verdict() -> None:
    scenario = _scenario()
    runs = [_run(scenario, "migrate", 120), _run(scenario, "reconnect", 300)]
    doc = build_document(scenario, runs, target="x", plot=None)
    assert doc["comparison"]["migrate"]["p99_handoff_by_kind_ms"]["migrate"] == pytest.approx(
        120, rel=0.01
    )
    line = headline(doc)  # HDR histograms keep 3 significant figures: 120 ms may read 120.1
    assert re.search(
        r"migrate 900\.\d ms \(migrate 120\.\d, blackout 400\.\d, mixed 900\.\d\) vs", line
    )
    assert re.search(
        r"vs reconnect 900\.\d ms \(migrate 300\.\d, blackout 400\.\d, mixed 900\.\d\)", line
    )
    assert re.search(
        r"migration p99 \(migrate\) 120\.\d <= 99\.0 \+ 50\.0 \(lte RTT\) = 149\.0 ms: PASS", line
    )
    assert "(reconnect) " not in line  # the target does not apply there
    console = Console(record=True, width=200)
    render(console, doc)
    text = console.export_text()
    assert "of which migrate" in text and "of which blackout" in text
    assert "after blackout: p50 / p99 / p99.9" in text and "two kinds at once" in text
