"""docs/protocol.md's tables against the code: a stale row fails here, not in a stranger's client.

Checked: the error table of section 8 (every code and name, both ways) and the limits table of
section 9, whose "Config key" column names config fields (their defaults must be the row's
numbers, in order) or says ``fixed`` (the constant behind the row must be among its numbers).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.core.auth import MAX_SUB_CHARS, AuthConfig
from gateway.core.batching import MAX_BATCH_BYTES
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.core.room import DEDUPE_WINDOW
from gateway.core.sharder import ShardingConfig
from gateway.errors import ErrorCode
from gateway.server import protocol as server_protocol
from gateway.server.config import ServerConfig
from gateway.store.base import StoreConfig
from gateway.store.writer import StoreWriter
from gateway.wire import frames

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
SECTIONS: dict[str, type[Any]] = {
    "core": CoreConfig,
    "core.limits": LimitsConfig,
    "core.sharding": ShardingConfig,
    "store": StoreConfig,
    "server": ServerConfig,
    "auth": AuthConfig,
}
# Rows of section 9 marked "fixed": the constant each one must state.
FIXED: dict[str, int] = {
    "room name": frames.MAX_ROOM_CHARS,
    "`client_msg_id`": frames.MAX_CLIENT_MSG_ID_CHARS,
    "`Hello` capabilities": frames.MAX_CAPABILITIES,
    "`client_name`": MAX_SUB_CHARS,
    "clock entries": frames.MAX_CLOCK_ENTRIES,
    "retry dedupe window": DEDUPE_WINDOW,
    "early stream data before its CONNECT": server_protocol._MAX_EARLY_SESSIONS,
    "store reads waiting": inspect.signature(StoreWriter).parameters["max_reads"].default,
    "`Deliver` / replay batch": MAX_BATCH_BYTES,
}
_UNITS = {"KiB": 1024, "MiB": 1 << 20, "day": 86400, "days": 86400}
_NUMBER = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*(KiB|MiB|days?)?")
_KEY = re.compile(r"`([a-z_][a-z0-9_.]*)`")


def section(number: int) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {number}. ")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row (header and rule rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def numbers(text: str) -> list[float]:
    """The numbers in a cell, units applied: ``256 KiB`` -> 262144, ``7 days`` -> 604800."""
    return [
        float(n.replace(",", "")) * _UNITS.get(unit or "", 1) for n, unit in _NUMBER.findall(text)
    ]


def config_keys(cell: str) -> list[tuple[type[Any], str]]:
    """``core.limits.a``, ``b`` -> [(LimitsConfig, "a"), (LimitsConfig, "b")]: a bare name
    belongs to the section of the dotted name before it."""
    keys: list[tuple[type[Any], str]] = []
    current: str | None = None
    for name in _KEY.findall(cell):
        if "." in name:
            current, _, name = name.rpartition(".")
        if current is None or current not in SECTIONS:
            raise AssertionError(f"{cell!r}: {name!r} is in no known config section")
        keys.append((SECTIONS[current], name))
    return keys


def default(cls: type[Any], name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise AssertionError(f"{cls.__name__} has no field {name!r}")


def test_every_error_code_has_its_row_and_every_row_its_code() -> None:
    documented = {
        int(cells[0]): cells[1].strip("`") for cells in table_rows(section(8)) if cells[0].isdigit()
    }
    assert documented == {code.value: code.name for code in ErrorCode}


LIMIT_ROWS = [cells for cells in table_rows(section(9)) if len(cells) == 4 and cells[0] != "What"]


def test_the_limits_table_is_there() -> None:
    assert len(LIMIT_ROWS) > 30
    assert {cells[0] for cells in LIMIT_ROWS if cells[2].startswith("fixed")} >= set(FIXED)


@pytest.mark.parametrize("cells", LIMIT_ROWS, ids=[cells[0][:40] for cells in LIMIT_ROWS])
def test_each_limit_row_states_the_code_defaults(cells: list[str]) -> None:
    what, stated, where, _ = cells
    if where.startswith("fixed"):
        if numbers(stated):  # a new fixed row names its constant in FIXED
            assert FIXED[what] in numbers(stated), f"{what}: the code says {FIXED[what]}"
        return
    if "*" in where or not any("." in key for key in _KEY.findall(where)):
        return  # a policy summary (core.sharding.*), a query parameter, the token itself
    keys = config_keys(where)
    values = [default(cls, name) for cls, name in keys]
    wanted = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    assert numbers(stated)[: len(wanted)] == wanted, f"{what}: the defaults are {values}"
    for value in values:
        texts = [value] if isinstance(value, str) else value if isinstance(value, tuple) else []
        for text in texts:
            assert f"`{text}`" in stated, f"{what}: the default {text!r} is not in {stated!r}"
