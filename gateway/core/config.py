"""Configuration of the sans-IO core. Units are in the names; every field has a safe default."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.limits import LimitsConfig
from gateway.core.sharder import ShardingConfig

__all__ = ["CoreConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    """What the core needs to know. Loaded from the ``[core]`` table of the server's TOML.

    - ``tick_ms``: how long new messages wait to be batched into one Deliver per room.
    - ``max_frame_bytes``: the largest frame a client may send (the length prefix is checked
      before any of it is buffered).
    - ``max_body_bytes``: the largest message body.
    - ``max_rooms_per_session`` / ``max_rooms``: bounds on joins per connection and rooms in all.
    - ``log_messages_per_shard``: the in-memory ring each shard keeps for fetches and resumes.
    - ``epochs_kept``: how many epochs (shard maps and their sealed shards' logs) a room keeps.
    - ``lz4_min_bytes``: a batch at least this large is also sent lz4-compressed, once, to the
      clients that negotiated lz4 (smaller ones don't gain enough to pay for it).
    - ``max_fetch_messages``: the most messages one Fetch returns (clients fetch again for more).
    - ``max_errors_per_session``: protocol errors a client may make before it is disconnected.
    - ``node_id``: a short name for this gateway, used in session ids.
    - ``send_budget_bytes``: how much may wait (queued or unacknowledged) for one connection
      before it is served less: chatter is shed above the budget, normal messages too above twice
      it; high-priority messages are never shed.
    - ``slow_consumer_s``: a connection over budget this long is disconnected (SLOW_CONSUMER).
    - ``max_backlog_bytes``: over this a connection is disconnected at once.
    - ``group_rooms``: glob patterns of room names in ``group`` mode (every message reliable:
      stored before it is acked and fanned out); other rooms are ``live`` (only HIGH messages
      take the reliable path).
    """

    tick_ms: float = 10.0
    max_frame_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024
    max_rooms_per_session: int = 64
    max_rooms: int = 100_000
    log_messages_per_shard: int = 10_000
    epochs_kept: int = 16
    lz4_min_bytes: int = 512
    max_fetch_messages: int = 1000
    max_errors_per_session: int = 20
    node_id: str = "n1"
    group_rooms: tuple[str, ...] = ("group-*", "dm-*")
    send_budget_bytes: int = 256 * 1024
    slow_consumer_s: float = 10.0
    max_backlog_bytes: int = 8 * 1024 * 1024
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self) -> None:
        if self.tick_ms < 0:
            raise ValueError("tick_ms must be >= 0")
        if self.max_body_bytes + 1024 > self.max_frame_bytes:
            raise ValueError("max_frame_bytes must exceed max_body_bytes by at least 1024")
        for name in (
            "max_rooms_per_session",
            "max_rooms",
            "log_messages_per_shard",
            "epochs_kept",
            "max_fetch_messages",
            "max_errors_per_session",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
