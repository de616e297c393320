"""Properties of gateway.core.vclock: merge is a join, happened_before a strict partial order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.vclock import (
    clock_sum,
    concurrent,
    dominates,
    happened_before,
    merge,
    merge_into,
    normalize,
)

# Derandomized: the same examples every run, so a failure always reproduces.
props = settings(derandomize=True, max_examples=100)

# Few shards and small seqs so that generated clocks often compare (equal, ordered, concurrent).
clocks = st.dictionaries(st.integers(0, 5), st.integers(1, 4), max_size=6)


def bump(clock: dict[int, int], shard: int, by: int) -> dict[int, int]:
    """A clock strictly after ``clock``: one shard advanced."""
    out = dict(clock)
    out[shard] = out.get(shard, 0) + by
    return out


# A chain a < b < c built by bumping, so transitivity is exercised on real chains, not just on the
# rare random triple that happens to be ordered.
chains = st.builds(
    lambda a, s1, b1, s2, b2: (a, bump(a, s1, b1), bump(bump(a, s1, b1), s2, b2)),
    clocks,
    st.integers(0, 7),
    st.integers(1, 3),
    st.integers(0, 7),
    st.integers(1, 3),
)


@props
@given(clocks, clocks)
def test_merge_is_commutative(a: dict[int, int], b: dict[int, int]) -> None:
    assert merge(a, b) == merge(b, a)


@props
@given(clocks, clocks, clocks)
def test_merge_is_associative(a: dict[int, int], b: dict[int, int], c: dict[int, int]) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@props
@given(clocks)
def test_merge_is_idempotent(a: dict[int, int]) -> None:
    assert merge(a, a) == a


@props
@given(clocks, clocks)
def test_merge_is_the_least_upper_bound(a: dict[int, int], b: dict[int, int]) -> None:
    m = merge(a, b)
    assert dominates(m, a)
    assert dominates(m, b)
    assert set(m) == set(a) | set(b)
    assert all(m[k] in (a.get(k), b.get(k)) for k in m)


@props
@given(clocks, clocks)
def test_merge_does_not_modify_inputs(a: dict[int, int], b: dict[int, int]) -> None:
    a0, b0 = dict(a), dict(b)
    merge(a, b)
    assert (a, b) == (a0, b0)


@props
@given(clocks, clocks)
def test_merge_into_matches_merge(a: dict[int, int], b: dict[int, int]) -> None:
    target = dict(a)
    merge_into(target, b)
    assert target == merge(a, b)


@props
@given(clocks)
def test_happened_before_is_irreflexive(a: dict[int, int]) -> None:
    assert not happened_before(a, a)
    assert not happened_before(a, dict(a))


@props
@given(clocks, clocks)
def test_happened_before_is_antisymmetric(a: dict[int, int], b: dict[int, int]) -> None:
    assert not (happened_before(a, b) and happened_before(b, a))


@props
@given(clocks, clocks, clocks)
def test_happened_before_is_transitive_on_random_triples(
    a: dict[int, int], b: dict[int, int], c: dict[int, int]
) -> None:
    if happened_before(a, b) and happened_before(b, c):
        assert happened_before(a, c)


@props
@given(chains)
def test_happened_before_is_transitive_on_chains(
    chain: tuple[dict[int, int], dict[int, int], dict[int, int]],
) -> None:
    a, b, c = chain
    assert happened_before(a, b)
    assert happened_before(b, c)
    assert happened_before(a, c)
    assert clock_sum(a) < clock_sum(b) < clock_sum(c)


@props
@given(clocks, clocks)
def test_happened_before_is_strict_dominance(a: dict[int, int], b: dict[int, int]) -> None:
    assert happened_before(a, b) == (dominates(b, a) and a != b)


@props
@given(clocks, clocks)
def test_concurrent_is_symmetric(a: dict[int, int], b: dict[int, int]) -> None:
    assert concurrent(a, b) == concurrent(b, a)


@props
@given(clocks, clocks)
def test_exactly_one_relation_holds(a: dict[int, int], b: dict[int, int]) -> None:
    relations = [a == b, happened_before(a, b), happened_before(b, a), concurrent(a, b)]
    assert relations.count(True) == 1


@props
@given(clocks, clocks)
def test_clock_sum_is_strictly_monotone(a: dict[int, int], b: dict[int, int]) -> None:
    if happened_before(a, b):
        assert clock_sum(a) < clock_sum(b)


@props
@given(clocks)
def test_zero_entries_are_ignored_by_the_comparisons(a: dict[int, int]) -> None:
    padded = {**a, 9: 0}
    assert not happened_before(a, padded)
    assert not happened_before(padded, a)
    assert not concurrent(a, padded)
    assert dominates(a, padded)
    assert dominates(padded, a)
    assert normalize(padded) == a


def test_missing_entries_count_as_zero() -> None:
    assert dominates({1: 1}, {})
    assert not dominates({}, {1: 1})
    assert happened_before({}, {1: 1})
    assert happened_before({1: 1}, {1: 1, 2: 1})
    assert concurrent({1: 2}, {2: 1})
    assert clock_sum({}) == 0


def test_normalize_drops_zeros_and_copies() -> None:
    source = {0: 0, 1: 3, 2: 0}
    out = normalize(source)
    assert out == {1: 3}
    out[5] = 1
    assert source == {0: 0, 1: 3, 2: 0}


@pytest.mark.parametrize(
    ("clock", "message"),
    [({-1: 3}, "negative shard id"), ({1: -3}, "negative seq"), ({-2: 0}, "negative shard id")],
)
def test_normalize_rejects_negatives(clock: dict[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize(clock)
