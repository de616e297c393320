"""The server's configuration: one dataclass, loadable from TOML and overridable from the command line.

A TOML file has a ``[server]`` table for :class:`ServerConfig` fields and a ``[core]`` table for
:class:`~gateway.core.config.CoreConfig` fields, with ``[core.sharding]`` inside it. Unknown keys
are an error that names the key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.core.sharder import ShardingConfig
from gateway.store.base import StoreConfig

__all__ = ["DEFAULT_CERT_DIR", "ServerConfig", "load_config"]

DEFAULT_CERT_DIR = Path("certs")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """How ``skein serve`` listens.

    - ``host`` / ``port``: the UDP address for QUIC (HTTP/3 and WebTransport).
    - ``certificate_file`` / ``private_key_file``: PEM files; by default the development pair in
      ``certs/`` (``make certs``). Point them at a real chain and key in production.
    - ``chat_path``: the WebTransport endpoint clients open sessions on.
    - ``idle_timeout_s``: QUIC idle timeout; clients ping well within it.
    - ``max_datagram_frame_bytes``: QUIC DATAGRAM support (WebTransport needs it).
    - ``stream_window_bytes``: flow-control window per stream and for the connection.
    - ``udp_buffer_bytes``: the receive and send buffer asked of the kernel for the UDP socket;
      0 (the default) keeps the system's (``net.core.rmem_default``, often 208 KiB). A bigger
      buffer absorbs bursts (a tick's ACKs from hundreds of subscribers) without drops, but
      while the gateway cannot keep up it turns drops into queueing delay: measured at 200
      subscribers x 100 msgs/s on a busy 2-core machine, 8 MiB took p99 from ~0.1 s to ~0.9 s
      (docs/performance.md). Raise it when the gateway has CPU to spare and
      ``skein_udp_receive_drops_total`` grows; it logs what it was granted and warns when
      ``net.core.rmem_max`` capped it.
    - ``log_level``: ``debug``, ``info``, ``warning`` or ``error``.
    - ``auth`` (the ``[auth]`` table): who may connect, join and publish (JWTs); ``mode =
      "insecure-dev"`` lets anyone do anything (``skein serve --insecure-dev``).
    - ``admin_host`` / ``admin_port``: the TCP HTTP port for health checks, Prometheus metrics
      and the browser chat page (0 picks a free port; -1 disables it).
    """

    host: str = "127.0.0.1"
    port: int = 4433
    certificate_file: Path = DEFAULT_CERT_DIR / "server.pem"
    private_key_file: Path = DEFAULT_CERT_DIR / "server.key"
    chat_path: str = "/v1/chat"
    idle_timeout_s: float = 30.0
    max_datagram_frame_bytes: int = 65536
    stream_window_bytes: int = 4 * 1024 * 1024
    udp_buffer_bytes: int = 0
    log_level: str = "info"
    admin_host: str = "127.0.0.1"
    admin_port: int = 9433
    core: CoreConfig = field(default_factory=CoreConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not -1 <= self.admin_port <= 65535:
            raise ValueError(f"admin_port must be -1 (off) or 0..65535, got {self.admin_port}")
        if not 0 <= self.udp_buffer_bytes <= 1 << 30:
            raise ValueError(f"udp_buffer_bytes must be 0..1 GiB, got {self.udp_buffer_bytes}")
        if self.idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be positive")
        if not self.chat_path.startswith("/"):
            raise ValueError("chat_path must start with /")
        if self.log_level not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be debug, info, warning or error")


def _build(cls: type[Any], table: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ValueError(
            f"unknown key(s) in [{where}]: {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    kwargs = dict(table)
    for key in ("certificate_file", "private_key_file", "path"):
        if key in kwargs:
            kwargs[key] = Path(kwargs[key])
    return cls(**kwargs)


def load_config(path: Path | None = None, **overrides: Any) -> ServerConfig:
    """Read ``path`` (TOML) if given, then apply non-None ``overrides`` to the [server] fields.

    Raises ValueError naming the offending key or value, and OSError if the file can't be read.
    """
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    unknown = sorted(set(data) - {"server", "core", "store", "auth"})
    if unknown:
        raise ValueError(
            f"unknown table(s) in {path}: {', '.join(unknown)}; known: server, core, store, auth"
        )
    auth_table = dict(data.get("auth", {}))
    if "hs256_secrets" in auth_table:
        auth_table["hs256_secrets"] = tuple(auth_table["hs256_secrets"])
    if "es256_public_key_files" in auth_table:
        auth_table["es256_public_key_files"] = tuple(
            Path(p) for p in auth_table["es256_public_key_files"]
        )
    if auth_table.get("dev_secret_file"):
        auth_table["dev_secret_file"] = Path(auth_table["dev_secret_file"])
    if overrides.pop("insecure_dev", False):
        auth_table["mode"] = "insecure-dev"
    auth = _build(AuthConfig, auth_table, "auth")
    core_table = dict(data.get("core", {}))
    sharding = _build(ShardingConfig, core_table.pop("sharding", {}), "core.sharding")
    limits = _build(LimitsConfig, core_table.pop("limits", {}), "core.limits")
    if "group_rooms" in core_table:
        core_table["group_rooms"] = tuple(core_table["group_rooms"])
    core = _build(CoreConfig, {**core_table, "sharding": sharding, "limits": limits}, "core")
    store = _build(StoreConfig, dict(data.get("store", {})), "store")
    server_table = {
        **data.get("server", {}),
        **{k: v for k, v in overrides.items() if v is not None},
    }
    config: ServerConfig = _build(
        ServerConfig, {**server_table, "core": core, "store": store, "auth": auth}, "server"
    )
    return config
