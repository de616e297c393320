"""A slow consumer cut by the gateway comes back and loses no reliable message.

A real gateway with a tiny send budget and little patience; some clients stall (their relay
carries nothing for seconds) while their room keeps talking, so the gateway sheds their chatter
and disconnects them (SLOW_CONSUMER). They come back with a new session and read what they missed
from the stored history: every acked reliable message must reach every member. Counts only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from loadgen.auth import TokenSource
from loadgen.runner import RunOptions, run_load
from loadgen.scenario import parse_scenario
from loadgen.schedule import client_rng, stall_schedule
from tests.conftest import GENEROUS, chat_url, server_config

SECRET = "another-test-secret-long-enough-for-hs256"
SCENARIO = {
    "name": "slow",
    "clients": 6,
    "duration_s": 10.0,
    "drain_s": 30.0,
    "seed": 2,
    "rooms": {"count": 1, "prefix": "slow", "per_client": 1},
    "publish": {
        "rate_per_client_per_s": 5.0,
        "size_bytes_min": 200,
        "size_bytes_max": 400,
        "priorities": {"chatter": 1, "high": 1},
    },
    "paths": {"relay": True, "mix": {"perfect": 1}},
    "stalls": {"fraction": 0.34, "mean_interval_s": 1.0, "stall_s_min": 4.0, "stall_s_max": 5.0},
}


@pytest.fixture
async def impatient_gateway(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    core = CoreConfig(limits=GENEROUS, send_budget_bytes=1024, slow_consumer_s=0.5)
    config = server_config(certs, core, auth=AuthConfig(mode="jwt", hs256_secrets=(SECRET,)))
    server = GatewayServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_a_slow_consumer_is_cut_comes_back_and_loses_nothing_reliable(
    impatient_gateway: GatewayServer, ca_file: Path
) -> None:
    scenario = parse_scenario(SCENARIO)
    stalls = [
        stall_schedule(client_rng(scenario.seed, i, "stall"), scenario.stalls, 10.0)
        for i in range(scenario.clients)
    ]
    assert 0 < sum(bool(s) for s in stalls) < scenario.clients  # some stall, some do not
    options = RunOptions(
        target_url=chat_url(impatient_gateway),
        ca_file=ca_file,
        workers=2,
        gateway_pid=os.getpid(),
        tokens=TokenSource(secret=SECRET),
        request_timeout_s=30.0,
        # A stall here cuts the path both ways; a client publishing through one would take it
        # for a dead gateway after 3 s and reconnect by itself, before the gateway's cut arrives.
        # The test is about the cut: let the 4-5 s stalls pass for slowness.
        dead_after_s=10.0,
    )
    result = await run_load(scenario, options)

    run = result.summary
    sessions, delivery = run["sessions"], run["delivery"]
    assert run["clients"]["connected"] == 6
    assert sessions["stalls"] > 0
    assert sessions["slow_consumer_cuts"] > 0, (sessions, run["errors"])
    assert sessions["comebacks"] == sum(sessions["ended"].values()) and sessions["gone"] == 0
    assert delivery["reliable"]["expected"] > 0
    assert delivery["reliable"]["lost"] == 0 and delivery["reliable_loss"] == 0, run["errors"]
    assert delivery["loss"]["high"] == 0
