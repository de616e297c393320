"""``make soak``'s share in CI: a short soak through the same code as the full one.

A gateway subprocess (token auth, SQLite store) under a dozen clients on 5%-loss paths, some of
them stalling, killed with SIGKILL mid-run and restarted on the same port. Asserts that no acked
reliable message was lost (by the clients that stayed, and from the store) and that the results
have the memory plateau's figures. Speed is never asserted, and the plateau's verdict is left to
the full soak: a short run's window is too short to judge a leak on a loaded machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.server.certs import CertPaths
from loadgen.soak import SoakConfig, run_soak
from loadgen.soak_results import MIN_PLATEAU_SAMPLES

PLATEAU_FIGURES = {
    "pid",
    "window_s",
    "samples",
    "first_third_mib",
    "middle_third_mib",
    "last_third_mib",
    "growth_mib",
    "allowed_mib",
    "ok",
}


async def test_a_short_soak_loses_no_acked_reliable_message(
    tmp_path: Path, certs: CertPaths
) -> None:
    config = SoakConfig(
        clients=12,
        duration_s=36.0,
        drain_s=30.0,
        seed=7,
        workers=2,
        kill_at=0.3,
        restart_after_s=1.0,
        slow_fraction=0.3,
        out_dir=tmp_path,
        certs_dir=certs.cert.parent,
    )
    outcome = await run_soak(config)

    doc = json.loads(outcome.json_path.read_text())
    assert doc["checks"] == outcome.doc["checks"]
    assert doc["faults"]["kills"] == 1 and doc["faults"]["restarts"] == 1
    assert [what for _, what in doc["faults"]["events"]] == ["killed", "restarted", "ready"]
    run = doc["run"]
    assert run["clients"]["connected"] > 0
    reliable = run["delivery"]["reliable"]
    assert reliable["expected"] > 0, run["delivery"]
    assert reliable["lost"] == 0, run["errors"]
    assert doc["store_audit"]["acked"] > 0 and doc["store_audit"]["missing"] == 0
    assert (
        doc["checks"]["no_acked_reliable_lost"] and doc["checks"]["store_has_every_acked_reliable"]
    )
    # The clients noticed the crash and came back to the new process.
    assert run["handoffs"]["reconnects"]["automatic"] > 0
    plateau = doc["rss"]["plateau"]
    assert plateau["pid"] != doc["rss"]["samples"][0][1]  # measured on the restarted process
    assert set(plateau) >= PLATEAU_FIGURES, plateau
    assert plateau["samples"] >= MIN_PLATEAU_SAMPLES
    assert outcome.plot_path is not None and outcome.plot_path.stat().st_size > 10_000
