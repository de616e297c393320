"""`python -m bench.flood` works end to end, small: a short flood against retry = "always"
answers every flood Initial with a Retry and the report has every figure (how fast is the
benchmark's business, not this test's)."""

from __future__ import annotations

import json

import pytest

from bench.flood import main


def test_the_flood_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--retry", "always", "--rate-per-s", "200", "--flood-s", "1", "--clients", "3"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["retry"] == "always" and report["gateway_tree"] == "this"
    assert report["retry_packets_seen_by_flooder"] >= 200
    assert report["admissions"]["retried"] >= 200 + 3  # the flood, and every client first
    assert report["admissions"]["dropped"] == 0
    assert report["newcomers"] >= 1 and report["newcomers_in"] == report["newcomers"]
    assert report["established_deliveries"] > 0
    for key in ("established_p50_ms", "established_p99_ms", "newcomer_median_s", "rss_growth_mb"):
        assert isinstance(report[key], float), key
