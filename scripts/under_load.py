"""Run a command several times while another process keeps one core busy; report each run.

    python scripts/under_load.py --runs 3 -- make test

How `make test-under-load` checks that the suite passes on a loaded 2-core machine, as CI's may
be. The burner is a separate process that spins for at most ``--burn-limit-s`` and is stopped
when the runs end (or on Ctrl-C), so it never outlives the check. Each run's exit code and wall
time are printed, with the lines of failed tests from pytest's summary; the exit code is 0 only
if every run passed. ``--log-dir`` keeps each run's whole output.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import subprocess
import sys
import time
from pathlib import Path

_FAILED = re.compile(r"^(FAILED|ERROR) ")


def burn(limit_s: float) -> None:
    """Spin one core until ``limit_s`` has passed (the parent normally stops it sooner)."""
    end = time.monotonic() + limit_s
    spins = 0
    while time.monotonic() < end:
        spins += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a command N times in a row while a bounded CPU burner keeps one core busy.",
    )
    parser.add_argument("--runs", type=int, default=3, help="how many runs in a row (default 3)")
    parser.add_argument(
        "--burn-limit-s",
        type=float,
        default=3600.0,
        help="the burner stops by itself after this long, whatever happens (default 3600)",
    )
    parser.add_argument(
        "--log-dir", type=Path, default=Path("results/under-load"), help="each run's output"
    )
    parser.add_argument("command", nargs="+", help="the command to run, after --")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    args.log_dir.mkdir(parents=True, exist_ok=True)
    burner = multiprocessing.Process(target=burn, args=(args.burn_limit_s,), daemon=True)
    burner.start()
    outcomes: list[tuple[int, float, list[str]]] = []
    try:
        for run in range(1, args.runs + 1):
            log_path = args.log_dir / f"run-{run}.log"
            print(f"under-load: run {run}/{args.runs}: {' '.join(args.command)} (log {log_path})")
            started = time.monotonic()
            with log_path.open("w") as log:
                code = subprocess.call(args.command, stdout=log, stderr=subprocess.STDOUT)
            wall_s = time.monotonic() - started
            failed = [
                line.rstrip() for line in log_path.read_text().splitlines() if _FAILED.match(line)
            ]
            outcomes.append((code, wall_s, failed))
            verdict = "passed" if code == 0 else f"FAILED (exit {code})"
            print(f"under-load: run {run}: {verdict} in {wall_s:.0f} s")
            for line in failed:
                print(f"    {line}")
    finally:
        burner.terminate()
        burner.join(5)
    passed = sum(1 for code, _, _ in outcomes if code == 0)
    walls = sorted(wall for _, wall, _ in outcomes)
    print(
        f"under-load: {passed}/{len(outcomes)} runs passed; wall time median "
        f"{walls[len(walls) // 2]:.0f} s (min {walls[0]:.0f}, max {walls[-1]:.0f})"
    )
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
