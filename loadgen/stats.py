"""Latency and gap histograms: recorded per worker, shipped encoded, merged (sans-IO).

All values are recorded in microseconds in HDR histograms (the ``hdrhistogram`` package), from
:data:`LOWEST_US` to :data:`HIGHEST_US` at :data:`SIGNIFICANT_FIGURES` significant figures;
a larger value is clamped to the top and counted in ``clamped`` (nothing is silently dropped).
HDR histograms merge exactly, so percentiles over all workers are the percentiles of all samples,
not averages of per-worker percentiles.

A latency sample is *handoff* when it falls within ``window_s`` after the receiving client's
latest handoff began (:func:`in_handoff_window`), or when its publisher sent it within its own
window; every other sample is *steady*. A handoff sample is also recorded under the kind of
handoff it was within (``latency_handoff:<kind>``): the receiver's or the publisher's, whichever
was in a window, or both's when they are of one kind; when they are in windows of two different
kinds it goes under :data:`MIXED` instead (a publisher's blackout must not be charged to its
receiver's migration). The per-kind and mixed counts add up to the handoff count.
A worker's :class:`Recorder` takes samples with the time passed in; :meth:`Recorder.snapshot` gives a picklable :class:`Snapshot`; :func:`merge` combines
any number of them into a :class:`Merged`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = [
    "HIGHEST_US",
    "LATENCY_NAMES",
    "LOWEST_US",
    "MAX_MARKS",
    "MAX_TIMELINE_BUCKETS",
    "MIXED",
    "SIGNIFICANT_FIGURES",
    "Merged",
    "Recorder",
    "Snapshot",
    "Summary",
    "decode",
    "encode",
    "in_handoff_window",
    "merge",
    "merge_encoded",
    "new_histogram",
    "record_us",
    "timeline_bucket_s",
]

LOWEST_US = 1
HIGHEST_US = 600_000_000  # 10 minutes: far beyond any timeout in a run
SIGNIFICANT_FIGURES = 3
TIMELINE_FIGURES = 2  # one histogram per time bucket: 24 KiB each instead of 170 KiB
MAX_TIMELINE_BUCKETS = 2_000  # samples later than this many buckets go into the last one
MAX_MARKS = 2_000  # handoff marks kept per worker for the plot; later ones are only counted
MAX_NOTES = 10  # failure descriptions kept per worker

LATENCY_NAMES = ("steady", "handoff")
MIXED = "mixed"
"""The kind of a handoff sample whose receiver and publisher were in windows of different kinds."""
_FIXED = ("latency_steady", "latency_handoff", "gap", "interarrival", "publish_lag")


def new_histogram(significant_figures: int = SIGNIFICANT_FIGURES) -> Any:
    """An empty histogram of microseconds, ``LOWEST_US..HIGHEST_US``."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, significant_figures)


def record_us(histogram: Any, value_us: float) -> bool:
    """Record ``value_us`` (clamped to the histogram's range). Returns True if it was clamped."""
    value = max(LOWEST_US, round(value_us))
    clamped = value > HIGHEST_US
    histogram.record_value(min(value, HIGHEST_US))
    return clamped


def encode(histogram: Any) -> str:
    """The compressed, base64 HDR encoding (the standard "HISTFAAA..." form)."""
    data: bytes = histogram.encode()
    return data.decode("ascii")


def decode(text: str) -> Any:
    return HdrHistogram.decode(text.encode("ascii"))


def merge_encoded(encoded: Iterable[str], significant_figures: int = SIGNIFICANT_FIGURES) -> Any:
    """One histogram holding every sample of the encoded ``encoded`` histograms."""
    total = new_histogram(significant_figures)
    for text in encoded:
        part = decode(text)
        # Adding an empty histogram would reset the minimum to 0 (an hdrhistogram quirk).
        if part.get_total_count():
            total.add(part)
    return total


def timeline_bucket_s(duration_s: float) -> float:
    """The latency timeline's bucket width for a run of ``duration_s``: about 150 points."""
    return min(max(duration_s / 150.0, 0.2), 10.0)


def in_handoff_window(at_ns: int, last_handoff_ns: int | None, window_ns: int) -> bool:
    """True if ``at_ns`` is within ``window_ns`` after ``last_handoff_ns`` (None: never)."""
    return last_handoff_ns is not None and 0 <= at_ns - last_handoff_ns <= window_ns


@dataclass(frozen=True, slots=True)
class Summary:
    """Percentiles of one histogram, in milliseconds (0 when it is empty)."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count cannot be negative")

    @classmethod
    def of(cls, histogram: Any) -> Summary:
        count = int(histogram.get_total_count())
        if count == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

        def at(p: float) -> float:
            return round(float(histogram.get_value_at_percentile(p)) / 1000.0, 3)

        return cls(
            count=count,
            mean_ms=round(histogram.get_mean_value() / 1000.0, 3),
            p50_ms=at(50.0),
            p90_ms=at(90.0),
            p99_ms=at(99.0),
            p999_ms=at(99.9),
            max_ms=round(histogram.get_max_value() / 1000.0, 3),
        )

    def as_dict(self) -> dict[str, float | int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A worker's recorded samples, picklable: histograms as their HDR encodings.

    ``histograms``: latency_steady, latency_handoff, gap, interarrival, publish_lag, and per
    handoff kind seen ``latency_handoff:<kind>`` and ``gap:<kind>``. ``timeline``: bucket index -> encoded latency histogram.
    ``marks``: (seconds from the origin, kind) of the first :data:`MAX_MARKS` handoffs.
    ``notes``: the first :data:`MAX_NOTES` failures, described.
    """

    histograms: Mapping[str, str]
    timeline: Mapping[int, str]
    counters: Mapping[str, int]
    marks: tuple[tuple[float, str], ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class Merged:
    """Every worker's samples together (histogram objects, ready for percentiles and plots)."""

    histograms: dict[str, Any]
    timeline: dict[int, Any]
    counters: Counter[str] = field(default_factory=Counter)
    marks: list[tuple[float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, name: str) -> Summary:
        histogram = self.histograms.get(name)
        return Summary.of(histogram if histogram is not None else new_histogram())

    def combined_latency(self) -> Any:
        """Steady and handoff samples in one histogram."""
        total = new_histogram()
        for name in ("latency_steady", "latency_handoff"):
            total.add(self.histograms[name])
        return total


def merge(snapshots: Iterable[Snapshot]) -> Merged:
    """Merge workers' snapshots: histograms added exactly, counters summed, marks in time order."""
    snaps = list(snapshots)
    names = sorted({name for s in snaps for name in s.histograms} | set(_FIXED))
    histograms = {
        n: merge_encoded(s.histograms[n] for s in snaps if n in s.histograms) for n in names
    }
    buckets = sorted({b for s in snaps for b in s.timeline})
    timeline = {
        b: merge_encoded((s.timeline[b] for s in snaps if b in s.timeline), TIMELINE_FIGURES)
        for b in buckets
    }
    counters: Counter[str] = Counter()
    marks: list[tuple[float, str]] = []
    notes: list[str] = []
    for s in snaps:
        counters.update(s.counters)
        marks.extend(s.marks)
        notes.extend(s.notes)
    marks.sort()
    return Merged(histograms, timeline, counters, marks, notes)


class Recorder:
    """One worker's histograms and counters. Times are ``time.monotonic_ns()`` values passed in.

    ``origin_ns`` is the run's start (shared by every worker); the latency timeline has one
    histogram per ``bucket_s`` of receive time since then, at most :data:`MAX_TIMELINE_BUCKETS`.
    Memory is fixed by the bucket count and the number of handoff kinds, not by traffic.
    """

    def __init__(self, *, origin_ns: int, bucket_s: float) -> None:
        if not math.isfinite(bucket_s) or bucket_s <= 0:
            raise ValueError("bucket_s must be > 0")
        self.origin_ns = origin_ns
        self.bucket_ns = int(bucket_s * 1e9)
        self.histograms: dict[str, Any] = {name: new_histogram() for name in _FIXED}
        self.timeline: dict[int, Any] = {}
        self.counters: Counter[str] = Counter()
        self.marks: list[tuple[float, str]] = []
        self.notes: list[str] = []

    def note(self, text: str, *, force: bool = False) -> None:
        """Keep the first :data:`MAX_NOTES` failure descriptions (all failures are counted);
        ``force``: keep it up to three times that many (a loss must be described)."""
        if len(self.notes) < (3 * MAX_NOTES if force else MAX_NOTES):
            self.notes.append(text)

    def latency(
        self, latency_ns: int, at_ns: int, *, handoff: bool, kind: str | None = None
    ) -> None:
        """A message delivered at ``at_ns``, ``latency_ns`` after its intended send time;
        ``handoff``: within a handoff window, of ``kind`` if known (also kept per kind)."""
        us = latency_ns / 1000.0
        name = "latency_handoff" if handoff else "latency_steady"
        if record_us(self.histograms[name], us):
            self.counters["clamped"] += 1
        if handoff and kind is not None:
            by_kind = self.histograms.get(f"latency_handoff:{kind}")
            if by_kind is None:
                by_kind = self.histograms[f"latency_handoff:{kind}"] = new_histogram()
            record_us(by_kind, us)
        bucket = min(max(0, (at_ns - self.origin_ns) // self.bucket_ns), MAX_TIMELINE_BUCKETS - 1)
        histogram = self.timeline.get(bucket)
        if histogram is None:
            histogram = self.timeline[bucket] = new_histogram(TIMELINE_FIGURES)
        record_us(histogram, us)

    def gap(self, gap_ns: int, kind: str) -> None:
        """The first delivery to a client came ``gap_ns`` after its handoff of ``kind`` began."""
        for name in ("gap", f"gap:{kind}"):
            histogram = self.histograms.get(name)
            if histogram is None:
                histogram = self.histograms[name] = new_histogram()
            record_us(histogram, gap_ns / 1000.0)

    def interarrival(self, gap_ns: int) -> None:
        """Time between two deliveries to one client, both outside any handoff window."""
        record_us(self.histograms["interarrival"], gap_ns / 1000.0)

    def publish_lag(self, lag_ns: int) -> None:
        """How late the generator sent a publish after its intended time (its own overload)."""
        record_us(self.histograms["publish_lag"], lag_ns / 1000.0)

    def mark(self, at_ns: int, kind: str) -> None:
        """A handoff of ``kind`` began at ``at_ns`` (kept for the plot, up to MAX_MARKS)."""
        if len(self.marks) < MAX_MARKS:
            self.marks.append((round((at_ns - self.origin_ns) / 1e9, 4), kind))
        else:
            self.counters["marks_dropped"] += 1

    def snapshot(self) -> Snapshot:
        return Snapshot(
            histograms={name: encode(h) for name, h in self.histograms.items()},
            timeline={b: encode(h) for b, h in self.timeline.items()},
            counters=dict(self.counters),
            marks=tuple(self.marks),
            notes=tuple(self.notes),
        )
