"""The rooms a hub holds in memory: made new, taken up from the store, reclaimed when idle.

A room is made on its first Join (a new incarnation, in ``group`` mode if its name matches
``group_rooms``), or taken up from the durable store (at start-up, or on a Join after it was
reclaimed), and reclaimed once it has had no subscriber and nothing pending for ``room_idle_s``
(:mod:`gateway.core.reclaim`). Sans-IO: ``now`` is passed in; what must be stored the caller
emits (it decides when a room's creation is recorded).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from gateway.core.config import CoreConfig
from gateway.core.limits import TokenBucket
from gateway.core.outputs import RoomInfo
from gateway.core.reclaim import Reclaimer
from gateway.core.room import Room, RoomMode
from gateway.core.sharder import make_policy
from gateway.core.stats import HubStats
from gateway.wire import frames as f

__all__ = ["Rooms"]


class Rooms:
    """Rooms by name (``held``), and the reclaimer that knows which are idle, dormant (in the
    store only) or being loaded."""

    __slots__ = ("_config", "_durable", "_stats", "held", "reclaim")

    def __init__(self, config: CoreConfig, *, durable: bool, stats: HubStats) -> None:
        self._config = config
        self._durable = durable
        self._stats = stats
        self.held: dict[str, Room] = {}
        self.reclaim = Reclaimer(config.room_idle_s)

    def __len__(self) -> int:
        return len(self.held)

    def get(self, name: str) -> Room | None:
        return self.held.get(name)

    def make(self, name: str, now: float) -> Room:
        """A new room (a new incarnation), held. The caller records it (RoomChanged)."""
        config = self._config
        room = Room(
            name,
            mode=RoomMode.GROUP if config.is_group_room(name) else RoomMode.LIVE,
            policy=make_policy(config.sharding),
            now=now,
            log_messages=config.log_messages_per_shard,
            epochs_kept=config.epochs_kept,
            initial_shards=config.sharding.min_shards,
            incarnation=secrets.randbits(63) or 1,
        )
        self._hold(room, now)
        return room

    def restore(
        self,
        name: str,
        *,
        incarnation: int,
        mode: str,
        maps: list[f.ShardMap],
        high_water: dict[int, int],
        next_shard_id: int,
        now: float,
        recent: Iterable[tuple[str, str, int, int]] = (),
    ) -> None:
        """Hold a room taken up from the store (see :meth:`gateway.core.hub.Hub.restore_room`)."""
        config = self._config
        room = Room(
            name,
            policy=make_policy(config.sharding),
            now=now,
            mode=RoomMode(mode),
            log_messages=config.log_messages_per_shard,
            epochs_kept=config.epochs_kept,
            incarnation=incarnation,
        )
        room.restore(maps, high_water, next_shard_id, now)
        for sender, client_msg_id, shard, seq in recent:
            room.remember(sender, client_msg_id, shard, seq)
        self._hold(room, now)

    def _hold(self, room: Room, now: float) -> None:
        limits = self._config.limits
        room.bucket = TokenBucket(limits.publish_rate_per_room_per_s, limits.publish_burst_per_room)
        self.held[room.name] = room
        self.reclaim.add(room.name, now)
        self._stats.shards_opened += len(room.current_shards)

    def reclaim_idle(self, now: float) -> list[Room]:
        """Drop the rooms idle for ``room_idle_s`` and return them; a durable hub keeps their
        names (dormant), to take them up from the store on their next Join."""
        gone = self.reclaim.due(now, self.held)
        for room in gone:
            del self.held[room.name]
            self._stats.rooms_reclaimed += 1
            self._stats.shards_sealed += len(room.current_shards)  # no longer live here
            if self._durable:
                self.reclaim.dormant.add(room.name)
        return gone

    def names(self, mode: str | None = None) -> list[str]:
        """Every held room's name, sorted; only those in ``mode`` (``"live"``, ``"group"``)."""
        if mode is None:
            return sorted(self.held)
        return sorted(name for name, room in self.held.items() if room.mode.value == mode)

    def info(self, name: str, now: float) -> RoomInfo | None:
        room = self.held.get(name)
        if room is None:
            return None
        return RoomInfo(
            name=name,
            mode=room.mode.value,
            epoch=room.shard_map.epoch,
            shards={s.id: s.last_seq for s in room.current_shards},
            velocities=room.policy.velocities(now),
            room_velocity=room.policy.room_velocity(now),
            subscribers=len(room.subscribers),
        )

    def high_water(self, name: str) -> dict[int, int]:
        """The last seq each current shard of a room assigned (stored with each commit)."""
        room = self.held.get(name)
        if room is None:
            return {}
        return {s.id: s.last_seq for s in room.current_shards if s.last_seq}
