"""Fixtures: every store kind, fresh in tmp_path, for the shared contract tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.store.base import Store, StoreConfig, open_store
from tests.store.factories import with_rooms

STORE_KINDS = ["sqlite", "memory"]


@pytest.fixture(params=STORE_KINDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the parametrized kind of store on one path in tmp_path (closed at the end)."""
    opened: list[Store] = []

    def make() -> Store:
        store = open_store(StoreConfig(kind=request.param, path=tmp_path / "skein.db"))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    """A fresh store holding the records of the rooms the factories use (``ROOMS``): a store
    refuses messages of a room it has no record of."""
    return with_rooms(make_store())
