"""Vector clocks as plain mappings: shard id -> last seq sequenced on that shard.

A clock is any ``Mapping[int, int]``. Entries with seq 0 are absent (a missing shard means "seen
nothing from it"); :func:`normalize` turns untrusted input into that form and is the only function
here that validates. The others run per message, so they assume normalized, non-negative input and
do no checking; the comparisons still treat an explicit zero entry like a missing one.

The order is the usual product order: ``a <= b`` when every entry of ``a`` is at most the matching
entry of ``b``. :func:`happened_before` is its strict part and :func:`concurrent` means neither
clock is ``<=`` the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

__all__ = [
    "Clock",
    "clock_sum",
    "concurrent",
    "dominates",
    "happened_before",
    "merge",
    "merge_into",
    "normalize",
]

Clock: TypeAlias = Mapping[int, int]


def merge(a: Clock, b: Clock) -> dict[int, int]:
    """Return the pointwise maximum of ``a`` and ``b`` as a new dict (the least upper bound).

    Needs normalized clocks; the inputs are not modified. Never raises.
    """
    # Copy the larger clock and walk the smaller one: merges are usually a big frontier and a
    # message clock that differs in a shard or two.
    if len(a) < len(b):
        a, b = b, a
    out = dict(a)
    merge_into(out, b)
    return out


def merge_into(target: dict[int, int], other: Clock) -> None:
    """Raise every entry of ``target`` to at least the matching entry of ``other``, in place.

    The allocation-free form of :func:`merge` for hot paths. Needs normalized clocks. Never raises.
    """
    get = target.get
    for shard, seq in other.items():
        if seq > get(shard, 0):
            target[shard] = seq


def dominates(a: Clock, b: Clock) -> bool:
    """Return True when ``a >= b`` pointwise (a missing entry counts as 0); reflexive.

    Only ``b``'s entries can make this false, so the cost is ``len(b)``. Never raises.
    """
    get = a.get
    return all(get(shard, 0) >= seq for shard, seq in b.items())


def happened_before(a: Clock, b: Clock) -> bool:
    """Return True when ``a <= b`` pointwise and the two differ (zero entries ignored).

    This is the strict causal order: irreflexive, transitive and antisymmetric. One pass over each
    clock at most. Never raises.
    """
    get_b = b.get
    strictly_less = False
    for shard, seq in a.items():
        other = get_b(shard, 0)
        if seq > other:
            return False
        if seq < other:
            strictly_less = True
    if strictly_less:
        return True
    # Every entry of a equals b's; b is strictly later only if it has something a lacks.
    get_a = a.get
    return any(seq > get_a(shard, 0) for shard, seq in b.items())


def concurrent(a: Clock, b: Clock) -> bool:
    """Return True when neither clock is ``<=`` the other (so equal clocks are not concurrent).

    Symmetric. Never raises.
    """
    return not dominates(a, b) and not dominates(b, a)


def clock_sum(a: Clock) -> int:
    """Return the sum of the seqs in ``a``: strictly increases along :func:`happened_before`."""
    return sum(a.values())


def normalize(a: Clock) -> dict[int, int]:
    """Return a new dict holding ``a``'s entries without the zero ones.

    Raises ValueError naming the entry when a shard id or a seq is negative.
    """
    out: dict[int, int] = {}
    for shard, seq in a.items():
        if shard < 0:
            raise ValueError(f"vector clock has a negative shard id: {shard}:{seq}")
        if seq < 0:
            raise ValueError(f"vector clock has a negative seq: {shard}:{seq}")
        if seq:
            out[shard] = seq
    return out
