"""Counters the hub keeps as it works; exporters read them when scraped (nothing is pushed).

Plain integers bumped on the hot path: reading them is the exporter's cost, not the hub's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["HubStats"]


@dataclass(slots=True)
class HubStats:
    """Monotonic counters since the hub started (gauges live on the hub itself)."""

    sessions_opened: int = 0
    sessions_closed: int = 0
    frames_in: int = 0
    published: Counter[str] = field(default_factory=Counter)  # by priority name
    duplicates: int = 0  # retries recognised by client_msg_id
    acks: int = 0
    batches: int = 0  # Deliver frames built by fan-out (each sent to many)
    batch_messages: int = 0  # messages in them
    deliveries: int = 0  # messages x recipients
    bytes_out: int = 0  # fan-out bytes handed to connections (after lz4)
    lz4_in: int = 0  # Deliver bytes before compression, when compressed
    lz4_out: int = 0  # and after
    errors: Counter[str] = field(default_factory=Counter)  # by ErrorCode name
    splits: int = 0
    merges: int = 0
    fetches: int = 0
    replayed: int = 0  # messages replayed to resuming clients
    resumes: int = 0  # joins that carried a cursor
