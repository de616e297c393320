"""What a worker's simulated clients share: the target, the run's settings, what to expect.

Kept apart from :mod:`loadgen.sim` so the runner (which only builds and merges these) does not
import the client machinery.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from loadgen.auth import TokenSource
from loadgen.relay import PathProfile
from loadgen.scenario import Scenario
from loadgen.schedule import HandoffMode
from loadgen.stats import Recorder

__all__ = ["DEFAULT_RELIABLE_ROOMS", "Expected", "SimContext", "Target", "resolve_target"]

DEFAULT_RELIABLE_ROOMS = ("group-*", "dm-*")  # the gateway's default core.group_rooms


@dataclass(frozen=True, slots=True)
class Target:
    """Where the gateway is, and the loopback/any hosts a relay uses to reach it."""

    url: str
    host: str
    port: int
    path: str
    family: int
    loopback: bool


def resolve_target(url: str) -> Target:
    """Parse and resolve ``url`` (https://host:port/path). Raises ``ValueError``/``OSError``."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"--target must look like https://host:port/path, got {url!r}")
    port = parts.port or 443
    info = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)[0]
    address = ipaddress.ip_address(info[4][0])
    return Target(url, str(address), port, parts.path or "/v1/chat", info[0], address.is_loopback)


@dataclass(frozen=True, slots=True)
class SimContext:
    """What every client of a worker shares. ``tokens``: where clients' tokens come from (None:
    no token, for a gateway in insecure-dev mode). ``reliable_rooms``: room patterns in which
    every message is reliable (the gateway's ``group_rooms``)."""

    scenario: Scenario
    target: Target
    mode: HandoffMode
    run_id: str
    client_options: dict[str, Any]
    recorder: Recorder
    profiles: dict[str, PathProfile]
    tokens: TokenSource | None = None
    reliable_rooms: tuple[str, ...] = DEFAULT_RELIABLE_ROOMS


@dataclass(frozen=True, slots=True)
class Expected:
    """What every member of a room should have had, once every publish is settled: ``counts``
    (room -> acked publishes by priority) and ``reliable`` (room -> publisher index -> the numbers
    of its acked reliable publishes)."""

    counts: dict[str, list[int]] = field(default_factory=dict)
    reliable: dict[str, dict[int, list[int]]] = field(default_factory=dict)
