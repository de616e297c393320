"""Message-rate tracking and the policy that decides how many shards sequence a room.

A room is sequenced by 1..K shards. Every re-shard (split or merge) starts a new epoch with a new
shard count and new shard ids; a :class:`ShardPolicy` only decides the *count*, the caller carries it
out and then calls :meth:`ShardPolicy.reset` with the new epoch's shards.

Sans-IO: nothing here reads a clock. Every call takes ``now``, a virtual time in seconds, and time
never goes backwards (an earlier ``now`` than one already seen is treated as that time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Protocol, runtime_checkable

__all__ = [
    "POLICIES",
    "FixedPolicy",
    "ShardPolicy",
    "ShardingConfig",
    "Velocity",
    "VelocityPolicy",
    "make_policy",
]

# How far past the computed threshold crossing next_check() points, so that at the returned time
# the decayed rate is strictly below the threshold despite rounding (else a timer loop could spin).
_CROSSING_MARGIN_S = 1e-6


class Velocity:
    """An exponentially smoothed message rate (msgs/s) on irregular virtual time.

    Each :meth:`observe` adds ``count / tau_s`` after decaying the previous rate by
    ``exp(-dt / tau_s)``, so a steady stream of ``r`` msgs/s converges to ``r`` with time constant
    ``tau_s``. Sums of velocities with the same ``tau_s`` are exact: the velocity of a merged stream
    is the sum of the velocities of its parts.
    """

    __slots__ = ("_last", "_rate", "_tau")

    def __init__(self, tau_s: float, *, rate_per_s: float = 0.0, now: float | None = None) -> None:
        """Start at ``rate_per_s`` (default 0) as of ``now`` (default: the first observation).

        Raises ValueError unless ``tau_s`` is positive and finite and ``rate_per_s`` is
        non-negative and finite.
        """
        if not (tau_s > 0 and math.isfinite(tau_s)):
            raise ValueError(f"velocity tau_s must be positive and finite, got {tau_s!r}")
        if not (rate_per_s >= 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"initial rate must be non-negative and finite, got {rate_per_s!r}")
        self._tau = tau_s
        self._rate = rate_per_s
        self._last = now

    def observe(self, count: int, now: float) -> None:
        """Record ``count`` messages at ``now``. Raises ValueError when ``count`` is negative."""
        if count < 0:
            raise ValueError(f"message count must be non-negative, got {count}")
        last = self._last
        if last is None:
            self._last = now
        elif now > last:
            self._rate *= math.exp((last - now) / self._tau)
            self._last = now
        self._rate += count / self._tau

    def rate(self, now: float) -> float:
        """Return the rate in msgs/s decayed to ``now``, without changing any state."""
        last = self._last
        if last is None or now <= last:
            return self._rate
        return self._rate * math.exp((last - now) / self._tau)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardingConfig:
    """How a room's shard count follows its message rate. Validated on construction.

    Attributes:
        policy: name of the policy in :data:`POLICIES` (``"velocity"`` or ``"fixed"``).
        split_above_per_s: a shard whose smoothed rate exceeds this (msgs/s) is overloaded.
        split_after_s: how long a shard must stay overloaded, without a dip, before a split.
        merge_below_per_s: the room (all shards together) is idle below this rate (msgs/s).
        merge_after_s: how long the room must stay idle, without a spike, before a merge.
        max_shards: a split never goes above this many shards.
        min_shards: a merge never goes below this many; also the count of a new room and the
            count the ``"fixed"`` policy keeps.
        velocity_tau_s: time constant (s) of the rate smoothing; larger is smoother but slower.
        cooldown_s: no decision is made within this long (s) after the last re-shard.
        split_factor: a split multiplies the count by this (capped at ``max_shards``); a merge
            divides it (floored at ``min_shards``).
    """

    # Old TOML keys and their names now: loaders still accept an old one, with a FutureWarning
    # (gateway.server.config.rename_old_keys). Rates are spelled ``_per_s`` everywhere.
    RENAMED_KEYS: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"split_above_msgs_s": "split_above_per_s", "merge_below_msgs_s": "merge_below_per_s"}
    )

    policy: str = "velocity"
    split_above_per_s: float = 5000.0
    split_after_s: float = 2.0
    merge_below_per_s: float = 500.0
    merge_after_s: float = 10.0
    max_shards: int = 16
    min_shards: int = 1
    velocity_tau_s: float = 1.0
    cooldown_s: float = 5.0
    split_factor: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.policy, str) or not self.policy:
            raise ValueError(f"sharding policy must be a non-empty name, got {self.policy!r}")
        for name in (
            "split_above_per_s",
            "split_after_s",
            "merge_below_per_s",
            "merge_after_s",
            "velocity_tau_s",
            "cooldown_s",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"sharding {name} must be a number, got {value!r}")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"sharding {name} must be positive and finite, got {value!r}")
        for name in ("max_shards", "min_shards", "split_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"sharding {name} must be an integer, got {value!r}")
        if not 1 <= self.min_shards <= self.max_shards:
            raise ValueError(
                f"sharding needs 1 <= min_shards <= max_shards, "
                f"got min_shards={self.min_shards}, max_shards={self.max_shards}"
            )
        if self.split_factor < 2:
            raise ValueError(f"sharding split_factor must be at least 2, got {self.split_factor}")
        if self.merge_below_per_s * self.split_factor >= self.split_above_per_s:
            raise ValueError(
                f"sharding thresholds leave no hysteresis: merge_below_per_s * split_factor "
                f"({self.merge_below_per_s} * {self.split_factor}) must be < split_above_per_s "
                f"({self.split_above_per_s}); a merge folds split_factor shards into one, so "
                f"without that margin a room merged just under the merge threshold could be "
                f"pushed straight back over the split threshold and flap between the two"
            )


@runtime_checkable
class ShardPolicy(Protocol):
    """Decides a room's shard count from the messages sequenced on its shards."""

    def observe(self, shard: int, count: int, now: float) -> None:
        """Record ``count`` messages sequenced on ``shard`` at ``now``. Called per message/batch."""
        ...

    def decide(self, shards: Sequence[int], now: float) -> int | None:
        """Return the new shard count for a room now sequenced by ``shards``, or None to keep it.

        Decides nothing by itself: until the caller applies a target with :meth:`reset`, later
        calls may return it again.
        Raises ValueError when ``shards`` is empty.
        """
        ...

    def reset(self, shards: Sequence[int], now: float) -> None:
        """Start a new epoch sequenced by ``shards`` at ``now`` (begins the cooldown).

        Raises ValueError when ``shards`` is empty or has duplicates.
        """
        ...

    def velocities(self, now: float) -> dict[int, float]:
        """Return the smoothed rate (msgs/s) of each current shard at ``now``."""
        ...

    def room_velocity(self, now: float) -> float:
        """Return the smoothed rate (msgs/s) of the whole room at ``now``."""
        ...

    def next_check(self, now: float) -> float | None:
        """Return when :meth:`decide` must next run even if no message arrives, or None.

        Lets a quiet room still merge: a caller that only calls decide() on messages also arms a
        timer for this time. Never earlier than ``now``; None when no decision can come due.
        """
        ...


class _Tracker:
    """Per-shard and room-wide velocities for the current epoch; a policy that never re-shards.

    Until the shard set is known (reset or decide) shards are learnt from observe(); afterwards a
    shard outside the set belongs to a stale epoch and counts towards the room's rate only.
    """

    __slots__ = ("_bound", "_config", "_now", "_room", "_vel")

    def __init__(self, config: ShardingConfig) -> None:
        self._config = config
        self._room = Velocity(config.velocity_tau_s)
        self._vel: dict[int, Velocity] = {}
        self._bound = False
        self._now = -math.inf

    def observe(self, shard: int, count: int, now: float) -> None:
        """See :meth:`ShardPolicy.observe`. Raises ValueError when ``count`` is negative."""
        now = self._advance(now)
        self._room.observe(count, now)
        vel = self._lookup(shard)
        if vel is not None:
            vel.observe(count, now)

    def decide(self, shards: Sequence[int], now: float) -> int | None:
        """Always None: see :meth:`ShardPolicy.decide`."""
        self._bind(shards, self._advance(now))
        return None

    def reset(self, shards: Sequence[int], now: float) -> None:
        """See :meth:`ShardPolicy.reset`."""
        if not shards:
            raise ValueError("a room needs at least one shard")
        if len(set(shards)) != len(shards):
            raise ValueError(f"shard ids must be distinct, got {list(shards)}")
        now = self._advance(now)
        # The room's rate carries over; how it spreads over the new shards is unknown (routing is
        # by sender), so assume an even spread and let the smoothing correct it within tau.
        each = self._room.rate(now) / len(shards)
        tau = self._config.velocity_tau_s
        self._vel = {s: Velocity(tau, rate_per_s=each, now=now) for s in shards}
        self._bound = True

    def velocities(self, now: float) -> dict[int, float]:
        """See :meth:`ShardPolicy.velocities`."""
        return {s: v.rate(now) for s, v in self._vel.items()}

    def room_velocity(self, now: float) -> float:
        """See :meth:`ShardPolicy.room_velocity`."""
        return self._room.rate(now)

    def next_check(self, now: float) -> float | None:
        """Always None: nothing ever comes due."""
        return None

    def _advance(self, now: float) -> float:
        if now > self._now:
            self._now = now
        return self._now

    def _lookup(self, shard: int) -> Velocity | None:
        vel = self._vel.get(shard)
        if vel is None and not self._bound:
            vel = self._vel[shard] = Velocity(self._config.velocity_tau_s)
        return vel

    def _bind(self, shards: Sequence[int], now: float) -> bool:
        """Make ``shards`` the current set (new ones start at 0); True when the set changed."""
        if not shards:
            raise ValueError("a room needs at least one shard")
        self._bound = True
        old = self._vel
        if len(shards) == len(old) and all(s in old for s in shards):
            return False
        tau = self._config.velocity_tau_s
        self._vel = {s: old[s] if s in old else Velocity(tau, now=now) for s in shards}
        return True


class FixedPolicy(_Tracker):
    """Never re-shards: the room keeps its count (``min_shards`` for a new room).

    Still tracks velocities so operators can see the load of each shard.
    """

    __slots__ = ()


class VelocityPolicy(_Tracker):
    """Splits hot rooms and merges quiet ones, with hysteresis so it never flaps.

    Split (count * split_factor, capped at max_shards) when any shard's smoothed rate has stayed
    above ``split_above_per_s`` for ``split_after_s``. Merge (count // split_factor, floored at
    min_shards) when the room's smoothed rate has stayed below ``merge_below_per_s`` for
    ``merge_after_s``. Nothing is decided within ``cooldown_s`` of the last :meth:`reset`, and each
    epoch must see its own full ``split_after_s``/``merge_after_s``: a condition that already holds
    when the epoch starts is timed from the start. Conditions are checked at observe() and
    decide() times, so a dip or a spike between two calls may go unnoticed; the error is bounded
    by the gap between calls, and :meth:`next_check` says when to call with no traffic.
    A count outside [min_shards, max_shards] (the config changed under a live room) is moved into
    range at the first decision. A fresh policy assumes ``min_shards`` shards until told.
    """

    __slots__ = ("_above_since", "_below_since", "_changed_at", "_count")

    def __init__(self, config: ShardingConfig) -> None:
        super().__init__(config)
        self._count = config.min_shards
        self._above_since: dict[int, float] = {}
        self._below_since: float | None = None
        self._changed_at: float | None = None

    def observe(self, shard: int, count: int, now: float) -> None:
        """See :meth:`ShardPolicy.observe`. Raises ValueError when ``count`` is negative."""
        now = self._advance(now)
        self._room.observe(count, now)
        vel = self._lookup(shard)
        if vel is not None:
            # The decayed rate just before this batch is the lowest since the last one: if it
            # dipped under the threshold, the overload was not continuous.
            self._track_shard(shard, vel.rate(now), now)
            vel.observe(count, now)
            self._track_shard(shard, vel.rate(now), now)
        # Just after a batch is the highest the room gets until the next one.
        self._track_room(now)

    def decide(self, shards: Sequence[int], now: float) -> int | None:
        """See :meth:`ShardPolicy.decide`."""
        cfg = self._config
        now = self._advance(now)
        if self._bind(shards, now):
            self._above_since = {s: t for s, t in self._above_since.items() if s in self._vel}
        n = self._count = len(shards)
        for shard, vel in self._vel.items():
            self._track_shard(shard, vel.rate(now), now)
        self._track_room(now)
        if self._changed_at is not None and now - self._changed_at < cfg.cooldown_s:
            return None
        if not cfg.min_shards <= n <= cfg.max_shards:
            return min(max(n, cfg.min_shards), cfg.max_shards)
        if n < cfg.max_shards and any(
            now - since >= cfg.split_after_s for since in self._above_since.values()
        ):
            return min(n * cfg.split_factor, cfg.max_shards)
        below = self._below_since
        if n > cfg.min_shards and below is not None and now - below >= cfg.merge_after_s:
            return max(n // cfg.split_factor, cfg.min_shards)
        return None

    def reset(self, shards: Sequence[int], now: float) -> None:
        """See :meth:`ShardPolicy.reset`."""
        super().reset(shards, now)
        cfg = self._config
        now = self._now
        self._count = len(shards)
        self._changed_at = now
        room = self._room.rate(now)
        overloaded = room / len(shards) > cfg.split_above_per_s
        self._above_since = dict.fromkeys(shards, now) if overloaded else {}
        self._below_since = now if room < cfg.merge_below_per_s else None

    def next_check(self, now: float) -> float | None:
        """See :meth:`ShardPolicy.next_check`."""
        cfg = self._config
        now = max(now, self._now)
        due: list[float] = []
        if self._count < cfg.max_shards and self._above_since:
            due.append(min(self._above_since.values()) + cfg.split_after_s)
        if self._count > cfg.min_shards:
            if self._below_since is not None:
                due.append(self._below_since + cfg.merge_after_s)
            else:
                due.append(self._quiet_from(now))
        if not due:
            return None
        when = min(due)
        if self._changed_at is not None:
            when = max(when, self._changed_at + cfg.cooldown_s)
        return max(when, now)

    def _track_shard(self, shard: int, rate: float, now: float) -> None:
        if rate > self._config.split_above_per_s:
            self._above_since.setdefault(shard, now)
        else:
            self._above_since.pop(shard, None)

    def _track_room(self, now: float) -> None:
        if self._room.rate(now) >= self._config.merge_below_per_s:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now

    def _quiet_from(self, now: float) -> float:
        """When the room's rate, left to decay, falls below the merge threshold."""
        room = self._room.rate(now)
        threshold = self._config.merge_below_per_s
        if room < threshold:
            return now
        return now + self._config.velocity_tau_s * math.log(room / threshold) + _CROSSING_MARGIN_S


POLICIES: dict[str, Callable[[ShardingConfig], ShardPolicy]] = {
    "velocity": VelocityPolicy,
    "fixed": FixedPolicy,
}


def make_policy(config: ShardingConfig) -> ShardPolicy:
    """Build the policy named by ``config.policy``. Raises ValueError for an unknown name."""
    factory = POLICIES.get(config.policy)
    if factory is None:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown sharding policy {config.policy!r}; known policies: {known}")
    return factory(config)
