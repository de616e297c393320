"""StoreConfig validates itself; stores open by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gateway.store.base import STORES, Retention, StoreConfig, open_store
from gateway.store.memory import MemoryStore
from gateway.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "postgres"},
        {"fsync": "sometimes"},
        {"retention_s": 0.0},
        {"retention_messages_per_shard": 0},
        {"retention_epochs_per_room": 0},
        {"trim_interval_s": math.inf},
        {"max_batch_messages": 0},
        {"max_batch_messages": 10, "max_queued_messages": 5},
        {"max_queued_bytes": 1000},
    ],
)
def test_invalid_configs_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        StoreConfig(**change)  # type: ignore[arg-type]


def test_retention_follows_the_config() -> None:
    config = StoreConfig(retention_s=math.inf, retention_messages_per_shard=5)
    assert config.retention == Retention(
        max_age_s=math.inf, max_messages_per_shard=5, max_epochs_per_room=64
    )
    assert config.retention.cutoff_ms(10_000) is None
    assert StoreConfig(retention_s=2.5).retention.cutoff_ms(10_000) == 7_500


def test_stores_open_by_name(tmp_path: Path) -> None:
    assert sorted(STORES) == ["memory", "sqlite"]
    sqlite = open_store(StoreConfig(path=tmp_path / "a" / "b.db", fsync="full"))
    memory = open_store(StoreConfig(kind="memory"))
    try:
        assert isinstance(sqlite, SqliteStore) and sqlite.fsync == "full"
        assert isinstance(memory, MemoryStore)
        assert (tmp_path / "a" / "b.db").exists()
    finally:
        sqlite.close()
        memory.close()
