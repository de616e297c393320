"""loadgen.scenario: the shipped TOML files, validation, overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import pytest

from loadgen.scenario import (
    _TABLES,
    HandoffConfig,
    PathsConfig,
    Scenario,
    apply_overrides,
    list_scenarios,
    load_scenario,
    parse_scenario,
)


def test_the_shipped_scenarios_load() -> None:
    names = list_scenarios()
    assert {"demo", "commute", "stadium", "group-chats"} <= set(names)
    for name in names:
        scenario = load_scenario(name)
        assert scenario.name == name and scenario.description
    stadium = load_scenario("stadium")
    assert stadium.publish.bursts and stadium.publish.bursts[0].room_rank == 0
    assert load_scenario("commute").handoffs.mean_interval_s < 10
    assert dict(load_scenario("group-chats").publish.priorities)["high"] >= 0.5


def test_overrides_from_the_command_line() -> None:
    scenario = load_scenario(
        "demo",
        settings=[
            "handoffs.mean_interval_s=2.5",
            "handoffs.kinds={reconnect = 1}",
            "rooms.count=9",
        ],
        clients=7,
        duration_s=3.0,
        seed=None,
    )
    assert scenario.clients == 7 and scenario.duration_s == 3.0 and scenario.seed == 1
    assert scenario.handoffs.mean_interval_s == 2.5
    assert scenario.handoffs.kinds == (("reconnect", 1.0),)
    assert scenario.rooms.count == 9
    assert apply_overrides({}, ["name=x"]) == {"name": "x"}
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["nonsense"])


def test_a_scenario_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("clients = 3\n[rooms]\ncount = 2\n[paths.custom.tunnel]\nloss = 0.5\n")
    scenario = load_scenario(str(path), settings=["paths.mix={tunnel = 1}"])
    assert scenario.name == "mine" and scenario.clients == 3
    assert scenario.paths.profiles()["tunnel"].loss == 0.5
    assert scenario.uses_relay  # an impaired custom path needs the relay


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"clients": 0}, "clients"),
        ({"colour": "red"}, "unknown key"),
        ({"rooms": {"count": 2, "per_client": 3}}, "per_client"),
        ({"rooms": {"prefix": "no spaces"}}, "prefix"),
        ({"publish": {"size_bytes_min": 10}}, "size_bytes_min"),
        ({"publish": {"priorities": {"urgent": 1}}}, "urgent"),
        ({"publish": {"priorities": {"high": 0}}}, "weight must be > 0"),
        ({"publish": {"bursts": [{"at_s": 1, "duration_s": 1, "multiplier": -1}]}}, "multiplier"),
        ({"handoffs": {"kinds": {"teleport": 1}}}, "teleport"),
        ({"handoffs": {"blackout_ms": 1e6}}, "blackout_ms"),
        ({"paths": {"mix": {"5g": 1}}}, "5g"),
        ({"duration_s": float("nan")}, "duration_s"),
        (
            {
                "handoffs": {"mean_interval_s": 1, "kinds": {"blackout": 1}},
                "paths": {"relay": False},
            },
            "relay",
        ),
    ],
)
def test_invalid_scenarios_are_refused_by_name(document: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scenario(document)


def test_relay_is_used_only_when_needed() -> None:
    assert not Scenario(name="x").uses_relay
    migrate_only = Scenario(name="x", handoffs=HandoffConfig(mean_interval_s=1.0))
    assert not migrate_only.uses_relay
    rebinds = HandoffConfig(mean_interval_s=1.0, kinds=(("nat_rebind", 1.0),))
    assert Scenario(name="x", handoffs=rebinds).uses_relay
    assert Scenario(name="x", paths=PathsConfig(mix=(("lte", 1.0),))).uses_relay
    assert Scenario(name="x", paths=PathsConfig(relay=True)).uses_relay


def test_unknown_scenario_names_list_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match="demo"):
        load_scenario("no-such-scenario")


def test_every_rate_key_is_spelled_per_s() -> None:
    """Rates are ``_per_s`` in every scenario table (not ``_hz``, not ``_msgs_s``)."""
    tables = [Scenario, *(t for t in _TABLES.values())]
    spelled_otherwise = [
        f"{cls.__name__}.{f.name}"
        for cls in tables
        for f in dataclasses.fields(cls)
        if f.name.endswith(("_hz", "_msgs_s", "_msg_s", "_per_sec"))
    ]
    assert spelled_otherwise == []


def test_an_old_scenario_file_still_loads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("clients = 3\n[publish]\nrate_per_client_hz = 4.0\n")
    with pytest.warns(
        FutureWarning, match="rate_per_client_hz is deprecated .* rate_per_client_per_s"
    ):
        scenario = load_scenario(str(path))
    assert scenario.publish.rate_per_client_per_s == 4.0
    # On the command line either name overrides the file's, whichever name the file uses.
    old_file = str(path)
    assert load_scenario(old_file, settings=["publish.rate_per_client_per_s=2.0"]) == replace(
        scenario, publish=replace(scenario.publish, rate_per_client_per_s=2.0)
    )
    with pytest.warns(FutureWarning):
        assert load_scenario("demo", settings=["publish.rate_per_client_hz=2.5"]) == load_scenario(
            "demo", settings=["publish.rate_per_client_per_s=2.5"]
        )


def test_a_rate_under_both_names_is_refused() -> None:
    with pytest.raises(ValueError, match="give only rate_per_client_per_s"):
        parse_scenario({"publish": {"rate_per_client_hz": 1.0, "rate_per_client_per_s": 1.0}})
