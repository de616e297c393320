"""Pure helpers of fan-out: cutting batches to size, and deciding what a lagging client is shed."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.shard import Entry
from gateway.wire import frames as f

__all__ = ["MAX_BATCH_BYTES", "batches", "capped", "plan_shedding"]

MAX_BATCH_BYTES = 1 << 20  # one Deliver/Fetched frame stays below this (clients allow 16 MiB)


def plan_shedding(
    priorities: list[f.Priority], backlog_bytes: int, budget_bytes: int
) -> list[bool]:
    """Which messages of a batch a connection with ``backlog_bytes`` waiting still gets.

    Lowest priority first: at or over the budget chatter is shed; at or over twice the budget
    normal messages too; high-priority messages are never shed. So a message is never shed while
    one of lower priority in the same batch is kept.
    """
    if backlog_bytes < budget_bytes:
        return [True] * len(priorities)
    floor = f.Priority.HIGH if backlog_bytes >= 2 * budget_bytes else f.Priority.NORMAL
    return [p >= floor for p in priorities]


def capped(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``entries`` whose encodings fit in ``max_bytes`` (at least one)."""
    size = 0
    for i, entry in enumerate(entries):
        size += len(entry.encoded)
        if size > max_bytes and i:
            return entries[:i]
    return entries


def batches(encoded: list[bytes], max_bytes: int, overhead: int = 0) -> Iterable[list[bytes]]:
    """Cut ``encoded`` into runs of at most ``max_bytes`` (each item counting ``overhead`` more);
    an item too big alone is a run of its own."""
    batch: list[bytes] = []
    size = 0
    for item in encoded:
        cost = len(item) + overhead
        if batch and size + cost > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += cost
    if batch:
        yield batch
