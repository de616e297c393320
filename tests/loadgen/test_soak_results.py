"""The soak's verdicts from synthetic figures (pure functions: no gateway, no clock)."""

from __future__ import annotations

from loadgen.payload import Payload, encode_body
from loadgen.soak_results import RssSample, plateau, soak_checks, store_audit

MIB = 2**20


def _series(pid: int, start: int, end: int, rss_mib: float, per_s_mib: float) -> list[RssSample]:
    return [
        RssSample(float(t), pid, int((rss_mib + per_s_mib * (t - start)) * MIB), 5.0)
        for t in range(start, end + 1)
    ]


def test_a_flat_series_plateaus_and_a_leak_does_not() -> None:
    old = _series(1, 0, 40, 50.0, 1.0)  # the killed process grew fast: not judged
    flat = old + _series(2, 45, 135, 80.0, 0.0)
    figures = plateau(flat, pid=2, start_s=45, end_s=135, growth_mib=20, growth_fraction=0.1)
    assert figures["ok"] is True and figures["samples"] == 91
    assert figures["growth_mib"] == 0 and figures["slope_mib_per_min"] == 0
    assert figures["middle_third_mib"] == figures["last_third_mib"] == 80.0

    leak = old + _series(2, 45, 135, 80.0, 0.5)  # 0.5 MiB/s: ~15 MiB per third
    figures = plateau(leak, pid=2, start_s=45, end_s=135, growth_mib=10, growth_fraction=0.05)
    assert figures["ok"] is False
    assert 14 < figures["growth_mib"] < 16 and figures["allowed_mib"] == 10
    assert 29 < figures["slope_mib_per_min"] < 31


def test_the_bound_is_the_larger_of_mib_and_fraction() -> None:
    big = _series(2, 0, 90, 1000.0, 0.5)  # +15 MiB a third on 1 GB: within 10%
    figures = plateau(big, pid=2, start_s=0, end_s=90, growth_mib=10, growth_fraction=0.1)
    assert figures["ok"] is True and figures["allowed_mib"] > 100


def test_too_few_samples_is_not_a_plateau() -> None:
    figures = plateau(
        _series(2, 0, 4, 80.0, 0.0), pid=2, start_s=0, end_s=4, growth_mib=20, growth_fraction=0.1
    )
    assert figures["ok"] is None and "fewer than" in figures["why"]


def test_the_store_audit_names_what_is_missing() -> None:
    bodies = [
        encode_body(Payload(1, publisher, n), 40) for publisher, n in ((0, 1), (0, 2), (3, 1))
    ]
    audit = store_audit(
        {"r-1": {0: [1, 2, 3], 3: [1]}}, {"r-1": [*bodies, b"someone else's message"]}
    )
    assert audit == {"acked": 4, "missing": 1, "examples": ["r-1: message 3 of client 0"]}


def test_the_soak_fails_on_loss_on_a_missing_kill_and_on_a_leak() -> None:
    run = {
        "delivery": {"reliable": {"expected": 10, "lost": 0}},
        "clients": {"connected": 3, "requested": 3},
    }
    audit = {"acked": 5, "missing": 0}
    ok = soak_checks(run, audit, {"ok": True}, kills=1, restarted=True)
    assert ok["passed"] and all(ok.values())
    lost = {**run, "delivery": {"reliable": {"expected": 10, "lost": 1}}}
    assert not soak_checks(lost, audit, {"ok": True}, kills=1, restarted=True)["passed"]
    assert not soak_checks(run, audit, {"ok": True}, kills=0, restarted=False)["passed"]
    assert not soak_checks(run, audit, {"ok": None}, kills=1, restarted=True)["passed"]
    nothing = {**run, "delivery": {"reliable": {"expected": 0, "lost": 0}}}
    assert not soak_checks(nothing, audit, {"ok": True}, kills=1, restarted=True)["passed"]
