"""`make bench --quick` works end to end (how fast is the benchmarks' business, not this test's),
and the light subscribers count what the gateway sends exactly."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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
    assert set(result["suite_seconds"]) >= {"fanout", "capacity", "growth"}
