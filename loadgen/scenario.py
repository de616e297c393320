"""Load scenarios: frozen, validated dataclasses read from TOML, with command-line overrides.

A scenario says how many mobile-like clients to run and how they behave: which rooms they join
(Zipf popularity), how often they publish (with room surges), what they send (sizes, priorities),
how often their network changes under them (handoffs of four kinds) and over which emulated paths
(:mod:`loadgen.relay` profiles). ``loadgen/scenarios/README.md`` documents every field and its unit.

:func:`load_scenario` takes a shipped name (``demo``) or a path; unknown keys are refused by name,
as the gateway's own config does, so a typo never passes silently. Every dataclass validates itself
when built and raises ``ValueError`` naming the offending field.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, get_args

from gateway.core.config import rename_old_keys
from loadgen.relay import PROFILES, PathProfile

__all__ = [
    "HANDOFF_KINDS",
    "PRIORITIES",
    "Burst",
    "HandoffConfig",
    "HandoffKind",
    "PathsConfig",
    "PublishConfig",
    "RoomsConfig",
    "Scenario",
    "StallConfig",
    "Weights",
    "apply_overrides",
    "list_scenarios",
    "load_scenario",
    "parse_scenario",
    "read_scenario_toml",
]

HandoffKind = Literal["migrate", "nat_rebind", "blackout", "reconnect"]
HANDOFF_KINDS: tuple[HandoffKind, ...] = get_args(HandoffKind)
PRIORITIES: tuple[str, ...] = ("chatter", "normal", "high")

Weights = tuple[tuple[str, float], ...]
"""Named non-negative weights, in the order given; at least one is positive."""

# Bounds that keep a typo from asking for something no machine can do (or a test that never ends).
MAX_CLIENTS = 100_000
MAX_DURATION_S = 24 * 3600.0
MAX_RATE_PER_S = 1000.0
MAX_BODY_BYTES = 16_384  # the gateway's default core.max_body_bytes
MIN_BODY_BYTES = 32  # room for loadgen's payload header
MAX_BLACKOUT_MS = 20_000.0  # well within the 30 s QUIC idle timeout
MAX_STALL_S = 20.0  # the same bound for a slow consumer's stall


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _finite(name: str, value: float, *, low: float, high: float = math.inf) -> None:
    _check(
        isinstance(value, int | float) and math.isfinite(value) and low <= value <= high,
        f"{name} must be a number in {low:g}..{high:g}, got {value!r}",
    )


def _weights(name: str, weights: Weights, allowed: Sequence[str] | None) -> None:
    _check(bool(weights), f"{name} needs at least one entry")
    for key, value in weights:
        if allowed is not None:
            _check(key in allowed, f"{name}: unknown {key!r}; known: {', '.join(allowed)}")
        _finite(f"{name}.{key}", value, low=0.0)
    _check(any(v > 0 for _, v in weights), f"{name}: at least one weight must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomsConfig:
    """``count`` rooms named ``{prefix}-{rank}``; rank 0 is the hottest.

    Each client joins ``per_client`` distinct rooms drawn with Zipf weights ``1 / (rank+1)**zipf_s``
    (0 = uniform; larger = a few hot rooms).
    """

    count: int = 4
    prefix: str = "room"
    zipf_s: float = 1.0
    per_client: int = 1

    def __post_init__(self) -> None:
        _check(1 <= self.count <= 100_000, "rooms.count must be 1..100000")
        _check(
            1 <= self.per_client <= min(self.count, 64), "rooms.per_client must be 1..count, <= 64"
        )
        _finite("rooms.zipf_s", self.zipf_s, low=0.0, high=10.0)
        _check(
            bool(self.prefix) and all(c.isalnum() or c in "_.:@-" for c in self.prefix),
            "rooms.prefix must be non-empty, of A-Z a-z 0-9 _ . : @ -",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Burst:
    """From ``at_s`` for ``duration_s`` (seconds into the run), publishing into the room of rank
    ``room_rank`` (every room if None) runs ``multiplier`` times faster: a goal in a stadium."""

    at_s: float
    duration_s: float
    multiplier: float
    room_rank: int | None = None

    def __post_init__(self) -> None:
        _finite("publish.bursts.at_s", self.at_s, low=0.0, high=MAX_DURATION_S)
        _finite("publish.bursts.duration_s", self.duration_s, low=0.0, high=MAX_DURATION_S)
        _finite("publish.bursts.multiplier", self.multiplier, low=0.0, high=1000.0)
        _check(
            self.room_rank is None or self.room_rank >= 0, "publish.bursts.room_rank must be >= 0"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishConfig:
    """Each client publishes ``rate_per_client_per_s`` messages a second on average (a Poisson
    process), spread evenly over its rooms, sped up in ``bursts``. Sizes are log-uniform in
    ``size_bytes_min..size_bytes_max``; priorities are drawn by weight. ``max_in_flight``
    unacknowledged publishes per client: beyond it the next waits (and its latency shows it)."""

    # Old key -> its name now: a scenario file with the old one still loads, with a FutureWarning.
    RENAMED_KEYS: ClassVar[Mapping[str, str]] = MappingProxyType(
        {"rate_per_client_hz": "rate_per_client_per_s"}
    )

    rate_per_client_per_s: float = 0.5
    size_bytes_min: int = 64
    size_bytes_max: int = 512
    priorities: Weights = (("normal", 1.0),)
    bursts: tuple[Burst, ...] = ()
    max_in_flight: int = 32

    def __post_init__(self) -> None:
        _finite(
            "publish.rate_per_client_per_s",
            self.rate_per_client_per_s,
            low=0.0,
            high=MAX_RATE_PER_S,
        )
        _check(
            MIN_BODY_BYTES <= self.size_bytes_min <= self.size_bytes_max <= MAX_BODY_BYTES,
            f"publish sizes need {MIN_BODY_BYTES} <= size_bytes_min <= size_bytes_max "
            f"<= {MAX_BODY_BYTES}",
        )
        _weights("publish.priorities", self.priorities, PRIORITIES)
        _check(1 <= self.max_in_flight <= 10_000, "publish.max_in_flight must be 1..10000")


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffConfig:
    """Each client's network changes every ``mean_interval_s`` on average (exponential intervals;
    0 = never), of a kind drawn by weight from ``kinds``. A ``blackout`` drops everything for
    ``blackout_ms`` first. Latency within ``window_s`` after a handoff counts as "handoff"."""

    mean_interval_s: float = 0.0
    window_s: float = 2.0
    blackout_ms: float = 500.0
    kinds: Weights = (("migrate", 1.0),)

    def __post_init__(self) -> None:
        _finite("handoffs.mean_interval_s", self.mean_interval_s, low=0.0, high=MAX_DURATION_S)
        _check(
            self.mean_interval_s == 0 or self.mean_interval_s >= 0.1,
            "handoffs.mean_interval_s must be 0 (never) or >= 0.1",
        )
        _finite("handoffs.window_s", self.window_s, low=0.0, high=600.0)
        _finite("handoffs.blackout_ms", self.blackout_ms, low=0.0, high=MAX_BLACKOUT_MS)
        _weights("handoffs.kinds", self.kinds, HANDOFF_KINDS)

    def weight(self, kind: HandoffKind) -> float:
        return dict(self.kinds).get(kind, 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class StallConfig:
    """Slow consumers: a ``fraction`` of the clients (drawn by seed) stall now and then, every
    ``mean_interval_s`` on average (exponential intervals), for ``stall_s_min..stall_s_max``
    (uniform): their path carries nothing, as when a phone's app stops reading. The gateway's
    backlog for them grows, so its send budget sheds their chatter and, over budget for its
    ``slow_consumer_s``, it disconnects them (SLOW_CONSUMER); they then come back as an app would
    (see :mod:`loadgen.sim`)."""

    fraction: float = 0.0
    mean_interval_s: float = 30.0
    stall_s_min: float = 2.0
    stall_s_max: float = 8.0

    def __post_init__(self) -> None:
        _finite("stalls.fraction", self.fraction, low=0.0, high=1.0)
        _finite("stalls.mean_interval_s", self.mean_interval_s, low=0.1, high=MAX_DURATION_S)
        _finite("stalls.stall_s_min", self.stall_s_min, low=0.0, high=MAX_STALL_S)
        _finite("stalls.stall_s_max", self.stall_s_max, low=self.stall_s_min, high=MAX_STALL_S)


@dataclass(frozen=True, slots=True, kw_only=True)
class PathsConfig:
    """The emulated network under each client. ``mix`` draws each client's path profile by weight
    (names from :data:`loadgen.relay.PROFILES` or ``custom``); ``switch_on_handoff`` draws a new one
    at each handoff (Wi-Fi to LTE). ``relay``: put each client behind its own impaired-path relay
    (None = whenever a profile or a handoff kind needs it)."""

    relay: bool | None = None
    mix: Weights = (("perfect", 1.0),)
    switch_on_handoff: bool = True
    custom: tuple[PathProfile, ...] = ()

    def __post_init__(self) -> None:
        names = [*PROFILES, *(p.name for p in self.custom)]
        _weights("paths.mix", self.mix, names)

    def profiles(self) -> dict[str, PathProfile]:
        return {**PROFILES, **{p.name: p for p in self.custom}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A whole load run. Units are in the names; see ``loadgen/scenarios/README.md``."""

    name: str
    description: str = ""
    clients: int = 20
    duration_s: float = 10.0
    drain_s: float = 10.0
    seed: int = 1
    connect_concurrency: int = 50
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    handoffs: HandoffConfig = field(default_factory=HandoffConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    stalls: StallConfig = field(default_factory=StallConfig)

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "a scenario needs a name")
        _check(1 <= self.clients <= MAX_CLIENTS, f"clients must be 1..{MAX_CLIENTS}")
        _finite("duration_s", self.duration_s, low=1.0, high=MAX_DURATION_S)
        _finite("drain_s", self.drain_s, low=0.0, high=600.0)
        _check(1 <= self.connect_concurrency <= 10_000, "connect_concurrency must be 1..10000")
        needs_relay = self._needs_relay()
        _check(
            self.paths.relay is not False or not needs_relay,
            "paths.relay = false, but nat_rebind/blackout handoffs, stalls or impaired path "
            "profiles need the relay",
        )

    def _needs_relay(self) -> bool:
        profiles = self.paths.profiles()
        impaired = any(
            w > 0 and profiles[name] != PROFILES["perfect"] for name, w in self.paths.mix
        )
        kinds = self.handoffs.mean_interval_s > 0 and any(
            self.handoffs.weight(k) > 0 for k in ("nat_rebind", "blackout")
        )
        return impaired or kinds or self.stalls.fraction > 0

    @property
    def uses_relay(self) -> bool:
        """Whether each client sits behind its own :class:`~loadgen.relay.UdpRelay`."""
        return self.paths.relay if self.paths.relay is not None else self._needs_relay()


# ---- building from TOML -------------------------------------------------------------------------

_TABLES: dict[str, type[Any]] = {
    "rooms": RoomsConfig,
    "publish": PublishConfig,
    "handoffs": HandoffConfig,
    "paths": PathsConfig,
    "stalls": StallConfig,
}


def _known(cls: type[Any], table: Mapping[str, Any], where: str) -> dict[str, Any]:
    table = rename_old_keys(cls, table, where)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) in [{where}]: {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return dict(table)


def _as_weights(where: str, value: Any) -> Weights:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a table of name = weight")
    return tuple((str(k), float(v)) for k, v in value.items())


def _build_table(name: str, table: Any) -> Any:
    if not isinstance(table, Mapping):
        raise ValueError(f"[{name}] must be a table")
    kw = _known(_TABLES[name], table, name)
    for key in ("priorities", "kinds", "mix"):
        if key in kw:
            kw[key] = _as_weights(f"{name}.{key}", kw[key])
    if name == "publish" and "bursts" in kw:
        kw["bursts"] = tuple(
            Burst(**_known(Burst, b, "publish.bursts")) for b in _as_list("bursts", kw["bursts"])
        )
    if name == "paths" and "custom" in kw:
        custom = kw["custom"]
        if not isinstance(custom, Mapping):
            raise ValueError("[paths.custom] must hold one table per profile")
        kw["custom"] = tuple(
            PathProfile(name=str(n), **_known(PathProfile, p, f"paths.custom.{n}"))
            for n, p in custom.items()
        )
    return _TABLES[name](**kw)


def _as_list(where: str, value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError(f"{where} must be an array of tables ([[publish.bursts]])")
    return value


def parse_scenario(data: Mapping[str, Any], *, default_name: str = "scenario") -> Scenario:
    """Build a :class:`Scenario` from a parsed TOML document. Raises ``ValueError``."""
    top = _known(Scenario, data, "top level")
    top.setdefault("name", default_name)
    for name in _TABLES:
        if name in top:
            top[name] = _build_table(name, top[name])
    try:
        return Scenario(**top)
    except TypeError as exc:  # a wrong type where a number or table belongs
        raise ValueError(str(exc)) from None


def _toml_value(text: str) -> Any:
    """A TOML literal (``3``, ``2.5``, ``true``, ``"x"``, ``{a = 1}``); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: Mapping[str, Any], settings: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``dotted.key=value`` of ``settings`` applied.

    Values are TOML literals (``handoffs.kinds={migrate=1}``). A setting replaces the same setting
    under an older or newer name (``publish.rate_per_client_hz`` and ``rate_per_client_per_s``).
    Raises ``ValueError`` for a setting without ``=``; unknown keys are refused later, when the
    scenario is built.
    """
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set wants key=value, got {setting!r}")
        *tables, leaf = key.strip().split(".")
        node = out
        for table in tables:
            child = node.setdefault(table, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: {table} is not a table")
            node = child
        for other in _spellings(leaf):  # the setting overrides the file whatever the spelling
            node.pop(other, None)
        node[leaf] = _toml_value(value.strip())
    return out


def _spellings(key: str) -> set[str]:
    """Every name of the setting ``key`` names (its old names and its name now)."""
    names = {key}
    for cls in _TABLES.values():
        for old, new in getattr(cls, "RENAMED_KEYS", {}).items():
            if key in (old, new):
                names |= {old, new}
    return names


def _shipped() -> Any:
    return resources.files("loadgen") / "scenarios"


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``loadgen/scenarios/``."""
    return sorted(p.name[:-5] for p in _shipped().iterdir() if p.name.endswith(".toml"))


def read_scenario_toml(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Read a shipped scenario by name, or a TOML file by path: (default name, document).

    Raises ``ValueError`` if there is no such scenario or the TOML is invalid.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read scenario {path}: {exc.strerror}") from None
        stem = path.stem
    else:
        entry = _shipped() / f"{name_or_path}.toml"
        if not entry.is_file():
            raise ValueError(
                f"no scenario {name_or_path!r}; shipped: {', '.join(list_scenarios())} "
                "(or give a path to a .toml file)"
            )
        text, stem = entry.read_text(encoding="utf-8"), name_or_path
    try:
        return stem, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"scenario {name_or_path}: invalid TOML: {exc}") from None


def load_scenario(name_or_path: str, *, settings: Sequence[str] = (), **overrides: Any) -> Scenario:
    """Load a scenario, apply ``--set`` style ``settings``, then top-level ``overrides``
    (``clients``, ``duration_s``, ``seed``...; None values are ignored). Raises ``ValueError``."""
    stem, data = read_scenario_toml(name_or_path)
    scenario = parse_scenario(apply_overrides(data, settings), default_name=stem)
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(scenario, **given) if given else scenario
