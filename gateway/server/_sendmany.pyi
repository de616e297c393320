from collections.abc import Sequence
from typing import Any

BATCH_MAX: int

def send_many(fd: int, datagrams: Sequence[tuple[bytes, tuple[Any, ...]]], /) -> int: ...
