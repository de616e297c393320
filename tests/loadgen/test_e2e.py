"""loadgen end to end: worker processes, SDK clients and relays against a real gateway.

A short scenario in which every handoff kind happens: the report must have every field, lose no
reliable message, deliver nothing twice or out of causal order, and count the handoffs. Only
counts and contents are asserted, never speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from loadgen.cli import execute
from loadgen.cli import main as cli_main
from loadgen.demo import start_gateway
from loadgen.runner import LoadgenError, RunOptions, run_load
from loadgen.scenario import parse_scenario
from tests.conftest import chat_url

# Jitter and loss would reorder the first packets of a connection; until the SDK/gateway race
# on that is fixed (a WebTransport stream arriving before its CONNECT is refused), CI uses
# unimpaired paths through the relay. Handoffs of every kind still go through it.
SCENARIO = {
    "name": "ci",
    "clients": 20,
    "duration_s": 8.0,
    "drain_s": 15.0,
    "seed": 11,
    "rooms": {"count": 3, "prefix": "ci", "zipf_s": 1.0, "per_client": 2},
    "publish": {
        "rate_per_client_per_s": 2.0,
        "size_bytes_min": 40,
        "size_bytes_max": 800,
        "priorities": {"chatter": 1, "normal": 1, "high": 1},
        "bursts": [{"at_s": 3.0, "duration_s": 2.0, "multiplier": 3.0, "room_rank": 0}],
    },
    "handoffs": {
        "mean_interval_s": 2.0,
        "window_s": 1.0,
        "blackout_ms": 200.0,
        "kinds": {"migrate": 1, "nat_rebind": 1, "blackout": 1, "reconnect": 1},
    },
    "paths": {"relay": True, "mix": {"perfect": 1}},
}

LATENCY_FIELDS = {"count", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"}


async def test_a_short_scenario_through_every_kind_of_handoff(
    gateway: GatewayServer, ca_file: Path, tmp_path: Path
) -> None:
    scenario = parse_scenario(SCENARIO)
    options = RunOptions(
        target_url=chat_url(gateway), ca_file=ca_file, workers=2, gateway_pid=os.getpid()
    )
    outcome = await execute(scenario, options, out_dir=tmp_path)

    assert outcome.json_path.exists() and outcome.plot_path is not None
    assert outcome.plot_path.stat().st_size > 10_000
    doc = json.loads(outcome.json_path.read_text())
    assert doc == json.loads(json.dumps(outcome.doc))
    assert doc["scenario"]["clients"] == 20 and doc["machine"]["cpu_count"]
    (run,) = doc["runs"]
    assert run["clients"]["connected"] == 20, run["clients"]
    for key in ("steady", "handoff", "all"):
        assert set(run["latency_ms"][key]) == LATENCY_FIELDS
    assert run["latency_ms"]["steady"]["count"] > 0 and run["latency_ms"]["handoff"]["count"] > 0
    # Within the handoff window per kind: every kind the scenario has, with samples, and every
    # handoff sample under exactly one kind, or under two kinds at once (receiver and publisher).
    by_kind = run["latency_ms"]["handoff_by_kind"]
    assert set(by_kind) == set(SCENARIO["handoffs"]["kinds"])  # type: ignore[index]
    for kind, summary in by_kind.items():
        assert set(summary) == LATENCY_FIELDS and summary["count"] > 0, (kind, summary)
    mixed = run["latency_ms"]["handoff_mixed"]["count"]
    assert (
        sum(s["count"] for s in by_kind.values()) + mixed == run["latency_ms"]["handoff"]["count"]
    )
    target = run["migration_target"]  # a reported figure: its verdict is not asserted
    assert target["recovery"] == "migrate" and target["samples"] == by_kind["migrate"]["count"]
    assert target["passed"] in (True, False) and target["path"] == "perfect"

    delivery = run["delivery"]
    assert delivery["published"]["total"] > 100 and delivery["published"]["high"] > 0
    assert delivery["expected"]["total"] > delivery["published"]["total"]  # fan-out
    loss = delivery["loss"]
    assert delivery["reliable_loss"] == 0 and loss["normal"] == 0 and loss["high"] == 0
    for priority in ("normal", "high"):
        assert delivery["received"][priority] == delivery["expected"][priority]
    # Chatter travels as datagrams: what a blackout or a path change drops is gone, and the SDK
    # passes over it (counted) instead of waiting. The loss is that, plus at most the last chatter
    # of a shard with nothing after it, per client, room and shard.
    tail = SCENARIO["clients"] * SCENARIO["rooms"]["per_client"] * 4  # type: ignore[index,operator]
    assert delivery["chatter_lost"] <= loss["chatter"] <= delivery["chatter_lost"] + tail
    assert delivery["order_violations"] == 0
    assert delivery["duplicates"] == 0
    assert delivery["shed"] == 0 and delivery["missed"] == 0

    handoffs = run["handoffs"]
    assert handoffs["total"] > 10
    # Every kind happened and worked (a handoff may still time out on a starved machine: only
    # successes are required, and every failure would show up as loss above).
    for kind, counts in handoffs["by_kind"].items():
        assert counts["ok"] > 0, (kind, counts)
        assert counts["ok"] + counts["failed"] == counts["count"]
    assert handoffs["migrations"]["ok"] > 0 and handoffs["reconnects"]["ok"] > 0
    assert run["handoff_gap_ms"]["all"]["count"] > 0
    assert run["timeline"]["points"] and run["timeline"]["handoff_marks"]
    assert run["gateway"]["samples"] > 0 and run["gateway"]["rss_mb"]["max"] > 0
    assert run["checks"]["passed"] and doc["passed"]
    assert set(run["histograms"]) >= {"latency_steady", "latency_handoff", "gap"}


async def test_no_gateway_is_a_clear_error(ca_file: Path) -> None:
    scenario = parse_scenario({"name": "x", "clients": 2, "duration_s": 1.0})
    # A port nobody listens on: every connect times out (quickly, with this timeout).
    options = RunOptions(
        target_url="https://127.0.0.1:9/v1/chat", ca_file=ca_file, request_timeout_s=1.0
    )
    with pytest.raises(LoadgenError, match="no client could connect"):
        await run_load(scenario, options)


def test_cli_lists_and_refuses_bad_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--list"]) == 0
    assert "stadium" in capsys.readouterr().out
    assert cli_main(["no-such-scenario"]) == 2
    assert "no scenario" in capsys.readouterr().err
    assert cli_main(["demo", "--set", "clients=-1"]) == 2


def test_demo_gateway_starts_answers_and_stops(tmp_path: Path, certs: CertPaths) -> None:
    gateway = start_gateway(tmp_path, port=0, admin_port=0, certs_dir=certs.cert.parent)
    try:
        gateway.wait_ready(timeout_s=30.0)
        assert gateway.process.poll() is None
    finally:
        status = gateway.stop()
    assert status is not None
    assert (tmp_path / "demo-gateway.log").exists()
