"""Crash durability: every acked message survives kill -9 of the process that stored it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.store.base import next_cursor
from gateway.store.recovery import RESTART_EPOCH_GAP, RESTART_ID_GAP, recover
from gateway.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("crash_writer.py")
ACKS_BEFORE_KILL = 300


def acked_then_killed(db: Path, mode: str) -> list[int]:
    """Run the crash writer until it has acked ACKS_BEFORE_KILL seqs, then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(db), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        while len(acked) < ACKS_BEFORE_KILL:
            line = proc.stdout.readline()  # the writer stops by itself within 60 s
            if not line:
                break
            acked += [int(seq) for seq in line.split()]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.stderr is not None
    errors = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert len(acked) >= ACKS_BEFORE_KILL, f"the crash writer acked only {len(acked)}: {errors}"
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("mode", ["store", "writer"])
def test_acked_messages_survive_kill_9(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "crash.db"
    acked = acked_then_killed(db, mode)
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    store = SqliteStore(db)
    try:
        stored: list[int] = []
        cursor: dict[int, int] = {}
        while page := store.read_after("crash", cursor, 1000):
            stored += [m.seq for m in page]
            cursor = next_cursor(cursor, page)
        assert set(acked) <= set(stored)
        assert all(seq % 2 == 0 for seq in stored)  # exact seqs, holes kept, never renumbered
        assert stored == sorted(stored)
        mark = store.high_water("crash")[1]
        assert mark > max(acked)
        # The restart the gateway would do: seal shard 1 at its mark, move to fresh shards.
        (room,) = recover(store)
        assert room.room.incarnation == 4242
        assert room.current.sealed == {1: mark}
        assert room.current.epoch == 1 + RESTART_EPOCH_GAP
        assert room.current.shards == (1 + RESTART_ID_GAP,)
    finally:
        store.close()
