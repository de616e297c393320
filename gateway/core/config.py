"""Configuration of the sans-IO core. Units are in the names; every field has a safe default."""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.limits import LimitsConfig
from gateway.core.sharder import ShardingConfig

__all__ = ["MAX_DATAGRAM_BYTES", "CoreConfig", "rename_old_keys", "require_int", "require_number"]

_NODE_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_TICK_MS = 1000.0
MAX_DATAGRAM_BYTES = 1100  # a DATAGRAM frame fits in a 1200-byte QUIC packet with its headers


def require_int(obj: object, name: str, lo: int, hi: int | None = None) -> None:
    """Raise ValueError unless ``obj.name`` is an int (not a bool) within ``lo..hi``."""
    value = getattr(obj, name)
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {span}, got {value!r}")


def require_number(
    obj: object, name: str, lo: float, hi: float | None = None, *, above: bool = False
) -> None:
    """Raise ValueError unless ``obj.name`` is a finite int or float (not a bool), at least
    ``lo`` (above it if ``above``) and at most ``hi``. NaN and infinities never pass."""
    value = getattr(obj, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if above else value >= lo) and (hi is None or value <= hi)
    if not ok:
        low = f"> {lo:g}" if above else f">= {lo:g}"
        span = low if hi is None else f"{low} and <= {hi:g}"
        raise ValueError(f"{name} must be a finite number {span}, got {value!r}")


def rename_old_keys(cls: type[Any], table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Return a copy of ``table`` (a TOML table for the dataclass ``cls``) with each old key in
    ``cls.RENAMED_KEYS`` (old name -> name now, if ``cls`` has them) under its name now.

    So a config or scenario file written before a rename goes on working: each old key found
    issues a :class:`FutureWarning` (shown to users by default) naming both. Raises ValueError,
    starting with ``[where]``, when a table gives a setting under both names.
    """
    renamed: Mapping[str, str] = getattr(cls, "RENAMED_KEYS", {})
    out = dict(table)
    for old, new in renamed.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(
                f"[{where}] {old} and {new} are the same setting ({old} is its old name): "
                f"give only {new}"
            )
        warnings.warn(
            f"[{where}] {old} is deprecated and will go: call it {new}",
            FutureWarning,
            stacklevel=2,
        )
        out[new] = out.pop(old)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    """What the core needs to know. Loaded from the ``[core]`` table of the server's TOML.

    Every field is checked on construction (ValueError naming it, the range and the value): sizes
    and counts are integers, times are finite numbers (never NaN or infinite).

    - ``tick_ms``: how long new messages wait to be batched into one Deliver per room, 0..1000.
    - ``max_frame_bytes``: the largest frame a client may send (the length prefix is checked
      before any of it is buffered); at most 16 MiB, at least ``max_body_bytes`` + 1024.
    - ``max_body_bytes``: the largest message body.
    - ``max_rooms_per_session`` / ``max_rooms``: bounds on joins per connection and rooms in all
      (rooms held in memory, and rooms being taken up from the store).
    - ``room_idle_s``: a room with no subscriber and no pending work (nothing waiting for
      fan-out or for the store) for this long is reclaimed: dropped from memory, so that
      ``max_rooms`` counts only live rooms. A durable gateway keeps its state in the store and
      takes it up again on the next Join (:mod:`gateway.core.reclaim`).
    - ``log_messages_per_shard``: the in-memory ring each shard keeps for fetches and resumes.
    - ``epochs_kept``: how many epochs (shard maps and their sealed shards' logs) a room keeps.
    - ``lz4_min_bytes``: a batch at least this large is also sent lz4-compressed, once, to the
      clients that negotiated lz4 (smaller ones don't gain enough to pay for it).
    - ``chatter_datagram_bytes``: chatter of live rooms goes to the clients that negotiated
      ``datagrams`` as QUIC datagrams of at most this many bytes (a ServerFrame each), where a
      lost packet delays nothing else; the rest of a batch, and chatter too large for one
      datagram, take the stream. 0 sends everything on the stream. At most 1100 (a datagram
      must fit in QUIC's smallest packet, 1200 bytes, with its headers).
    - ``max_fetch_messages``: the most messages one Fetch returns (clients fetch again for more).
    - ``max_errors_per_session``: protocol errors a client may make before it is disconnected.
    - ``node_id``: a short name for this gateway, used in session ids (1-64 of A-Z a-z 0-9 _ . : -).
    - ``send_budget_bytes``: how much may wait (queued or unacknowledged) for one QUIC
      connection, all its sessions and HTTP/3 responses together, before it is served less:
      chatter is shed above the budget, normal messages too above twice it; high-priority
      messages are never shed. Replays and fetch answers go out only while the connection is
      under half of it, in pieces of at most half of it (:mod:`gateway.core.pacing`).
    - ``slow_consumer_s``: a connection over budget this long is disconnected (SLOW_CONSUMER);
      so is a session whose replay could not move (its connection never got under half the
      budget) this long.
    - ``max_backlog_bytes``: over this a connection's sessions are disconnected at once.
    - ``group_rooms``: a tuple (in TOML a list) of glob patterns of room names in ``group`` mode
      (every message reliable: stored before it is acked and fanned out); other rooms are
      ``live`` (only HIGH messages take the reliable path).
    """

    tick_ms: float = 10.0
    max_frame_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024
    max_rooms_per_session: int = 64
    max_rooms: int = 100_000
    room_idle_s: float = 300.0
    log_messages_per_shard: int = 10_000
    epochs_kept: int = 16
    lz4_min_bytes: int = 512
    chatter_datagram_bytes: int = 1100
    max_fetch_messages: int = 1000
    max_errors_per_session: int = 20
    node_id: str = "n1"
    group_rooms: tuple[str, ...] = ("group-*", "dm-*")
    send_budget_bytes: int = 256 * 1024
    slow_consumer_s: float = 10.0
    max_backlog_bytes: int = 8 * 1024 * 1024
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def is_group_room(self, name: str) -> bool:
        """Whether a room of this name is made in ``group`` mode (it matches ``group_rooms``)."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.group_rooms)

    def __post_init__(self) -> None:
        require_number(self, "tick_ms", 0, _MAX_TICK_MS)
        require_int(self, "max_frame_bytes", 1024, 16 << 20)
        require_int(self, "max_body_bytes", 1)
        if self.max_body_bytes + 1024 > self.max_frame_bytes:
            raise ValueError(
                f"max_frame_bytes must exceed max_body_bytes by at least 1024, got "
                f"max_frame_bytes={self.max_frame_bytes}, max_body_bytes={self.max_body_bytes}"
            )
        for name in (
            "max_rooms_per_session",
            "max_rooms",
            "log_messages_per_shard",
            "epochs_kept",
            "max_fetch_messages",
            "max_errors_per_session",
            "send_budget_bytes",
            "max_backlog_bytes",
        ):
            require_int(self, name, 1)
        require_int(self, "lz4_min_bytes", 0)
        require_int(self, "chatter_datagram_bytes", 0, MAX_DATAGRAM_BYTES)
        require_number(self, "slow_consumer_s", 0, above=True)
        require_number(self, "room_idle_s", 0, 30 * 24 * 3600.0, above=True)
        if not isinstance(self.node_id, str) or not _NODE_ID_RE.fullmatch(self.node_id):
            raise ValueError(
                f"node_id must be 1-64 characters of A-Z a-z 0-9 _ . : -, got {self.node_id!r}"
            )
        # A string here would be taken letter by letter ("group-*" has the pattern "*": every
        # room would be a group room), so only a tuple of non-empty patterns passes.
        rooms = self.group_rooms
        if not isinstance(rooms, tuple) or not all(
            isinstance(p, str) and p.strip() == p and 0 < len(p) <= 128 for p in rooms
        ):
            raise ValueError(
                f"group_rooms must be a list of room patterns (non-empty strings without spaces), "
                f"got {rooms!r}"
            )
        if not isinstance(self.sharding, ShardingConfig):
            raise ValueError(f"sharding must be a ShardingConfig, got {self.sharding!r}")
        if not isinstance(self.limits, LimitsConfig):
            raise ValueError(f"limits must be a LimitsConfig, got {self.limits!r}")
