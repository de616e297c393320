"""`make bench --quick` works end to end (how fast is the benchmarks' business, not this test's)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.run import main


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
        assert fig["value"] == fig["value"], f"{fig['name']} is NaN"  # measured, not missing
