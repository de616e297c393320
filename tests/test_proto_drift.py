"""The committed generated code must be exactly what `make proto` produces from schemas/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "gateway" / "wire" / "_pb"


def test_generated_code_matches_the_schema(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'schemas'}",
            f"--python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            "skein/v1/frames.proto",
        ],
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2.py*"))
    assert fresh, "protoc produced nothing"
    for rel in fresh:
        committed = GENERATED / rel
        assert committed.exists(), f"{rel} is not committed: run `make proto`"
        assert committed.read_text() == (tmp_path / rel).read_text(), (
            f"{committed} differs from a fresh generation: run `make proto` and commit"
        )
