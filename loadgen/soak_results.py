"""What ``make soak`` concludes from what it saw (pure: no clock, no process, no network).

Two verdicts, each with its figures:

- **No acknowledged reliable message lost.** Every reliable message (high priority, or any in a
  group room) whose publish was acked must have reached every member of its room that stayed
  (live, by resume after the restart, or from the stored history after a slow-consumer cut): the
  loadgen run's identity check, ``delivery.reliable.lost`` (:mod:`loadgen.sim`). And every one
  must be in the gateway's store after the ``kill -9``: :func:`store_audit` compares the acked
  set with the rooms' history.
- **Memory plateau.** The gateway's RSS is sampled every second. After the restart, the new
  process's samples while clients publish are cut into thirds by time; RSS must grow from the
  middle third to the last by less than ``max(rss_growth_mib MiB, rss_growth_fraction x the
  middle third's mean)`` (means of each third, so one sample's noise does not decide). The first
  third is the warm-up (sessions resuming, buffers filling) and is not judged. The slope of a
  least-squares line through the middle and last thirds (MiB per minute) is reported beside the
  verdict: a slow rise within the bound shows there, and only a longer soak tells it apart from
  buffers still filling.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from loadgen.payload import decode_body

__all__ = ["MIN_PLATEAU_SAMPLES", "RssSample", "plateau", "soak_checks", "store_audit"]

MIN_PLATEAU_SAMPLES = 6  # fewer samples than this in the window: the plateau is not measured
_MIB = 2**20


@dataclass(frozen=True, slots=True)
class RssSample:
    """At ``t_s`` seconds into the soak, process ``pid`` (the gateway of the moment) held
    ``rss_bytes`` and used ``cpu_percent`` of one core since the previous sample."""

    t_s: float
    pid: int
    rss_bytes: int
    cpu_percent: float


def plateau(
    samples: Sequence[RssSample],
    *,
    pid: int,
    start_s: float,
    end_s: float,
    growth_mib: float,
    growth_fraction: float,
) -> dict[str, Any]:
    """The plateau figures of process ``pid`` between ``start_s`` and ``end_s`` (see the module
    docstring). ``ok`` is None when the window holds fewer than :data:`MIN_PLATEAU_SAMPLES`."""
    window = [s for s in samples if s.pid == pid and start_s <= s.t_s <= end_s]
    figures: dict[str, Any] = {
        "pid": pid,
        "window_s": [round(start_s, 1), round(end_s, 1)],
        "samples": len(window),
        "bound_mib": growth_mib,
        "bound_fraction": growth_fraction,
    }
    if len(window) < MIN_PLATEAU_SAMPLES:
        return {**figures, "ok": None, "why": f"fewer than {MIN_PLATEAU_SAMPLES} samples"}
    third = (end_s - start_s) / 3.0
    parts = [
        [s.rss_bytes for s in window if start_s + i * third <= s.t_s < start_s + (i + 1) * third]
        for i in range(3)
    ]
    parts[2].extend(s.rss_bytes for s in window if s.t_s == end_s)
    if not all(parts):
        return {**figures, "ok": None, "why": "a third of the window holds no sample"}
    first, middle, last = (statistics.fmean(p) / _MIB for p in parts)
    growth = last - middle
    bound = max(growth_mib, growth_fraction * middle)
    judged = [s for s in window if s.t_s >= start_s + third]
    slope = statistics.linear_regression(
        [s.t_s / 60.0 for s in judged], [s.rss_bytes / _MIB for s in judged]
    ).slope
    return {
        **figures,
        "first_third_mib": round(first, 1),
        "middle_third_mib": round(middle, 1),
        "last_third_mib": round(last, 1),
        "max_mib": round(max(s.rss_bytes for s in window) / _MIB, 1),
        "growth_mib": round(growth, 2),
        "growth_percent": round(100.0 * growth / middle, 2) if middle else None,
        "allowed_mib": round(bound, 2),
        "slope_mib_per_min": round(slope, 3),
        "ok": growth < bound,
    }


def store_audit(
    acked: Mapping[str, Mapping[int, Sequence[int]]], stored_bodies: Mapping[str, Iterable[bytes]]
) -> dict[str, Any]:
    """Compare the acked reliable messages (room -> publisher -> numbers) with the bodies each
    room's history holds. ``missing`` counts acked messages the store does not have."""
    missing: list[str] = []
    total = 0
    for room, by_publisher in acked.items():
        held = set()
        for body in stored_bodies.get(room, ()):
            payload = decode_body(body)
            if payload is not None:
                held.add((payload.publisher, payload.n))
        for publisher, numbers in by_publisher.items():
            for n in numbers:
                total += 1
                if (publisher, n) not in held:
                    missing.append(f"{room}: message {n} of client {publisher}")
    return {"acked": total, "missing": len(missing), "examples": missing[:10]}


def soak_checks(
    run: Mapping[str, Any],
    audit: Mapping[str, Any],
    rss: Mapping[str, Any],
    *,
    kills: int,
    restarted: bool,
) -> dict[str, bool]:
    """The soak's verdicts from the loadgen run summary, the store audit and the plateau.
    ``passed`` is their conjunction; a soak whose kill did not happen, or in which nothing
    reliable was acked, proves nothing and fails."""
    reliable = run["delivery"]["reliable"]
    clients = run["clients"]
    checks = {
        "all_connected": clients["connected"] == clients["requested"],
        "gateway_killed_and_restarted": kills >= 1 and restarted,
        "reliable_acked": reliable["expected"] > 0 and audit["acked"] > 0,
        "no_acked_reliable_lost": reliable["lost"] == 0,
        "store_has_every_acked_reliable": audit["missing"] == 0,
        "memory_plateau": rss.get("ok") is True,
    }
    return {**checks, "passed": all(checks.values())}
