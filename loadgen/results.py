"""The results of a run as plain, JSON-ready data, and the document a results file holds (pure).

:func:`build_summary` turns merged worker statistics into one run's summary; :func:`build_document`
wraps one or more runs with the scenario and the machine. The field names are the contract of the
JSON results file and are documented in ``loadgen/scenarios/README.md``. Latencies are in ms.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from loadgen.sampler import Sample
from loadgen.scenario import HANDOFF_KINDS, PRIORITIES, Scenario
from loadgen.schedule import HANDOFF_MODES, plan_handoff
from loadgen.stats import MIXED, Merged, Summary, encode, timeline_bucket_s

__all__ = [
    "MIGRATION_RULE",
    "SCHEMA",
    "build_document",
    "build_summary",
    "handoff_kinds",
    "machine_info",
    "migration_target",
    "path_rtt_ms",
]

SCHEMA = "skein.loadgen.results/1"
MIGRATION_RULE = "p99 within a migrate handoff's window <= steady p99 + one path RTT"


def handoff_kinds(scenario: Scenario, merged: Merged) -> list[str]:
    """The kinds reported per kind: those the scenario hands off by, and any with samples."""
    handoffs = scenario.handoffs
    planned = handoffs.mean_interval_s > 0
    return [
        kind
        for kind in HANDOFF_KINDS
        if (planned and handoffs.weight(kind) > 0) or f"latency_handoff:{kind}" in merged.histograms
    ]


def path_rtt_ms(scenario: Scenario) -> tuple[str, float]:
    """The slowest path in the scenario's mix and its nominal round trip (twice its one-way
    ``delay_ms``, jitter left out): the "one path RTT" a migration may add, taken from the
    slowest path a client may move to so the rule does not favour the fast ones."""
    profiles = scenario.paths.profiles()
    name = max((n for n, w in scenario.paths.mix if w > 0), key=lambda n: profiles[n].delay_ms)
    return name, round(2 * profiles[name].delay_ms, 3)


def migration_target(
    *, mode: str, migrate: Mapping[str, Any] | None, steady_p99_ms: float, rtt: tuple[str, float]
) -> dict[str, Any]:
    """The issue-14 target for one run: :data:`MIGRATION_RULE`. ``migrate`` is the run's
    latency summary within ``migrate`` handoff windows (None: no such handoff). ``passed`` is
    None when it does not apply: the run recovers a ``migrate`` handoff by reconnecting, or no
    sample fell in such a window. A reported figure, never one of ``checks``."""
    recovery = plan_handoff("migrate", mode).recovery if mode in HANDOFF_MODES else ""
    path, rtt_ms = rtt
    limit = round(steady_p99_ms + rtt_ms, 3)
    samples = int(migrate["count"]) if migrate else 0
    p99 = float(migrate["p99_ms"]) if migrate and samples else None
    passed: bool | None = None
    if recovery != "migrate":
        why = f"this run recovers a migrate handoff by {recovery or 'nothing'}"
    elif p99 is None:
        why = "no sample within a migrate handoff's window"
    else:
        passed, why = p99 <= limit, ""
    return {
        "rule": MIGRATION_RULE,
        "recovery": recovery,
        "samples": samples,
        "p99_ms": p99,
        "steady_p99_ms": steady_p99_ms,
        "path": path,
        "path_rtt_ms": rtt_ms,
        "limit_ms": limit,
        "passed": passed,
        "note": why,
    }


def _by_priority(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    out = {p: int(counters.get(f"{prefix}:{p}", 0)) for p in PRIORITIES}
    out["total"] = sum(out.values())
    return out


def _reliable(c: Mapping[str, int]) -> dict[str, int]:
    """The identity check: (acked reliable message, member of its room) pairs."""
    return {
        "expected": c.get("reliable_expected", 0),
        "received": c.get("reliable_received", 0),
        "lost": c.get("reliable_lost", 0),
        "lost_gone": c.get("reliable_lost_gone", 0),
    }


def _delivery(c: Mapping[str, int]) -> dict[str, Any]:
    loss = _by_priority(c, "loss")
    reliable = _reliable(c)
    return {
        "published": _by_priority(c, "published"),
        "acked": _by_priority(c, "acked"),
        "publish_failed": c.get("publish_failed", 0),
        "not_sent": c.get("not_sent", 0),
        "expected": _by_priority(c, "expected"),
        "received": _by_priority(c, "received"),
        "loss": loss,
        "reliable": reliable,
        "reliable_loss": reliable["lost"] + reliable["lost_gone"],
        "shed": c.get("shed", 0),
        "chatter_lost": c.get("chatter_lost", 0),
        "missed": c.get("missed", 0),
        "duplicates": c.get("duplicates", 0),
        "duplicates_by_priority": _by_priority(c, "duplicates"),
        "order_violations": c.get("order_violations", 0),
        "foreign": c.get("foreign", 0),
        "dedupe_overflow": c.get("dedupe_overflow", 0),
        "consumer_overflow": c.get("consumer_overflow", 0),
        "clamped": c.get("clamped", 0),
    }


def _handoffs(c: Mapping[str, int]) -> dict[str, Any]:
    by_kind = {
        kind: {
            "count": c.get(f"handoff:{kind}", 0),
            "ok": c.get(f"handoff_ok:{kind}", 0),
            "failed": c.get(f"handoff_failed:{kind}", 0),
        }
        for kind in HANDOFF_KINDS
    }
    explicit = c.get("reconnect_ok", 0)
    return {
        "total": sum(k["count"] for k in by_kind.values()),
        "by_kind": by_kind,
        "migrations": {"ok": c.get("migrate_ok", 0), "failed": c.get("migrate_failed", 0)},
        "reconnects": {
            "ok": explicit,
            "failed": c.get("reconnect_failed", 0),
            # The SDK counts its own reconnects after a dead connection as well as ours.
            "automatic": max(0, c.get("sdk_reconnects", 0) - explicit),
        },
        "sdk_errors": c.get("sdk_errors", 0),
        # Scheduled, but the run ended first because earlier handoffs overran.
        "not_done": c.get("handoffs_not_done", 0),
    }


def _sessions(c: Mapping[str, int]) -> dict[str, Any]:
    """Sessions the gateway ended under a client, and how the clients came back."""
    ended = {k.partition(":")[2]: v for k, v in sorted(c.items()) if k.startswith("session_ended:")}
    return {
        "ended": ended,
        "comebacks": c.get("comebacks", 0),
        "comeback_failed": c.get("comeback_failed", 0),
        "gone": c.get("clients_gone", 0),
        "coming_back_at_end": c.get("clients_coming_back", 0),
        "stalls": c.get("stalls", 0),
        "slow_consumer_cuts": ended.get("SLOW_CONSUMER", 0),
        "history_recovered": c.get("history_recovered", 0),
        "history_failed": c.get("history_failed", 0),
        "room_resets": c.get("room_resets", 0),
    }


def _resources(samples: Sequence[Sample], gateway_pid: int | None) -> dict[str, Any]:
    cpu = [s.gateway_cpu_percent for s in samples if s.gateway_cpu_percent is not None]
    rss = [s.gateway_rss_bytes for s in samples if s.gateway_rss_bytes is not None]
    own = [s.loadgen_cpu_percent for s in samples]
    return {
        "gateway": {
            "pid": gateway_pid,
            "samples": len(cpu),
            "cpu_percent": {
                "mean": round(statistics.fmean(cpu), 1) if cpu else None,
                "max": round(max(cpu), 1) if cpu else None,
            },
            "rss_mb": {
                "max": round(max(rss) / 2**20, 1) if rss else None,
                "last": round(rss[-1] / 2**20, 1) if rss else None,
            },
            "series": [[s.t_s, s.gateway_cpu_percent, s.gateway_rss_bytes] for s in samples],
        },
        "loadgen_cpu_percent": {
            "mean": round(statistics.fmean(own), 1) if own else None,
            "max": round(max(own), 1) if own else None,
        },
    }


def _timeline(merged: Merged, bucket_s: float) -> list[list[float]]:
    """[t_s, count, p50_ms, p99_ms, max_ms] per bucket of receive time."""
    out = []
    for bucket, histogram in sorted(merged.timeline.items()):
        s = Summary.of(histogram)
        out.append([round(bucket * bucket_s, 3), s.count, s.p50_ms, s.p99_ms, s.max_ms])
    return out


def build_summary(
    *,
    label: str,
    mode: str,
    scenario: Scenario,
    merged: Merged,
    samples: Sequence[Sample],
    gateway_pid: int | None,
    workers: int,
    started_at: str,
    wall_s: float,
    run_started_s: float = 0.0,
    connect_errors: Sequence[str] = (),
) -> dict[str, Any]:
    """One run's results (the fields are listed in ``loadgen/scenarios/README.md``).

    ``run_started_s`` is when publishing began, in seconds since the workers were started (the
    origin of the CPU samples). ``checks.passed`` is the verdict: no reliable (high) message lost,
    no causal-order violation, no duplicate delivered to the application, every client connected.
    """
    c = merged.counters
    bucket = timeline_bucket_s(scenario.duration_s)
    latency: dict[str, Any] = {
        "steady": merged.summary("latency_steady").as_dict(),
        "handoff": merged.summary("latency_handoff").as_dict(),
        "all": Summary.of(merged.combined_latency()).as_dict(),
        "handoff_by_kind": {
            kind: merged.summary(f"latency_handoff:{kind}").as_dict()
            for kind in handoff_kinds(scenario, merged)
        },
        "handoff_mixed": merged.summary(f"latency_handoff:{MIXED}").as_dict(),
    }
    target = migration_target(
        mode=mode,
        migrate=latency["handoff_by_kind"].get("migrate"),
        steady_p99_ms=latency["steady"]["p99_ms"],
        rtt=path_rtt_ms(scenario),
    )
    gap_kinds = {
        kind: merged.summary(f"gap:{kind}").as_dict()
        for kind in HANDOFF_KINDS
        if f"gap:{kind}" in merged.histograms
    }
    delivery = _delivery(c)
    handoffs = _handoffs(c)
    connected = c.get("connected", 0)
    checks = {
        "all_connected": connected == scenario.clients,
        "reliable_loss_zero": delivery["reliable_loss"] == 0 and delivery["loss"]["high"] == 0,
        "order_violations_zero": delivery["order_violations"] == 0,
        "duplicates_zero": delivery["duplicates"] == 0,
    }
    return {
        "label": label,
        "mode": mode,
        "started_at": started_at,
        "wall_s": round(wall_s, 2),
        "run_started_s": round(run_started_s, 3),
        "duration_s": scenario.duration_s,
        "workers": workers,
        "clients": {
            "requested": scenario.clients,
            "connected": connected,
            "connect_failed": c.get("connect_failed", 0),
            "connect_retries": c.get("connect_retries", 0),
            "connect_errors": list(connect_errors),
        },
        "handoff_window_s": scenario.handoffs.window_s,
        "latency_ms": latency,
        "migration_target": target,
        "handoff_gap_ms": {
            "all": merged.summary("gap").as_dict(),
            "by_kind": gap_kinds,
            "no_delivery": c.get("gap_no_delivery", 0),
        },
        "steady_interarrival_ms": merged.summary("interarrival").as_dict(),
        "publish_lag_ms": merged.summary("publish_lag").as_dict(),
        "delivery": delivery,
        "handoffs": handoffs,
        "sessions": _sessions(c),
        **_resources(samples, gateway_pid),
        "timeline": {
            "bucket_s": bucket,
            "columns": ["t_s", "count", "p50_ms", "p99_ms", "max_ms"],
            "points": _timeline(merged, bucket),
            "handoff_marks": [[t, kind] for t, kind in merged.marks],
        },
        "errors": merged.notes,
        "histograms": {name: encode(h) for name, h in sorted(merged.histograms.items())},
        "checks": {**checks, "passed": all(checks.values())},
    }


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def build_document(
    scenario: Scenario, runs: Sequence[dict[str, Any]], *, target: str, plot: str | None
) -> dict[str, Any]:
    """The results file: the scenario, the machine, each run, and with two runs a comparison."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "scenario": dataclasses.asdict(scenario),
        "machine": machine_info(),
        "target": target,
        "plot": plot,
        "runs": list(runs),
        "passed": all(r["checks"]["passed"] for r in runs),
    }
    if len(runs) > 1:
        doc["comparison"] = {
            r["label"]: {
                "p99_handoff_ms": r["latency_ms"]["handoff"]["p99_ms"],
                "p99_handoff_by_kind_ms": {
                    kind: s["p99_ms"] for kind, s in r["latency_ms"]["handoff_by_kind"].items()
                },
                "p99_steady_ms": r["latency_ms"]["steady"]["p99_ms"],
                "p99_gap_ms": r["handoff_gap_ms"]["all"]["p99_ms"],
                "reliable_loss": r["delivery"]["reliable_loss"],
            }
            for r in runs
        }
    return doc
