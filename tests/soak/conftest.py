"""The soak's attacks and audits: minutes long, so they run in `make soak` (SKEIN_SOAK=1), not in
`make test`, where they are skipped with the reason."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("SKEIN_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="a soak test: run by `make soak` (SKEIN_SOAK=1)")
    for item in items:
        if "tests/soak/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(skip)
