"""The server's configuration: one dataclass, loadable from TOML and overridable from the command line.

A TOML file has a ``[server]`` table for :class:`ServerConfig` fields and a ``[core]`` table for
:class:`~gateway.core.config.CoreConfig` fields, with ``[core.sharding]`` inside it. Unknown keys
are an error that names the key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig, rename_old_keys, require_int, require_number
from gateway.core.limits import LimitsConfig
from gateway.core.sharder import ShardingConfig
from gateway.store.base import StoreConfig

__all__ = ["DEFAULT_CERT_DIR", "ServerConfig", "load_config"]

DEFAULT_CERT_DIR = Path("certs")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_TABLES = ("server", "core", "store", "auth")
# Float settings where an infinity means something ("never"); every other float must be finite.
_INFINITY_MEANS_NEVER = {(StoreConfig, "retention_s")}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """How ``skein serve`` listens.

    - ``host`` / ``port``: the UDP address for QUIC (HTTP/3 and WebTransport); port 0..65535.
    - ``certificate_file`` / ``private_key_file``: PEM files; by default the development pair in
      ``certs/`` (``make certs``). Point them at a real chain and key in production.
      :func:`gateway.server.certs.check_certificate_pair` loads and matches them at start-up.
    - ``chat_path``: the WebTransport endpoint clients open sessions on (starts with ``/``).
    - ``idle_timeout_s``: QUIC idle timeout, 0 < s <= 3600; clients ping well within it.
    - ``max_datagram_frame_bytes``: QUIC DATAGRAM support (WebTransport needs it), 1200..65536.
    - ``stream_window_bytes``: flow-control window per stream (x4 for the connection),
      16 KiB..1 GiB.
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
        for name in ("host", "admin_host"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or value != value.strip():
                raise ValueError(f"{name} must be a host name or address, got {value!r}")
        require_int(self, "port", 0, 65535)
        if self.admin_port != -1:
            require_int(self, "admin_port", 0, 65535)
        require_int(self, "udp_buffer_bytes", 0, 1 << 30)
        require_int(self, "max_datagram_frame_bytes", 1200, 65536)
        require_int(self, "stream_window_bytes", 16 * 1024, 1 << 30)
        require_number(self, "idle_timeout_s", 0, 3600, above=True)
        for name in ("certificate_file", "private_key_file"):
            if not isinstance(getattr(self, name), Path):
                raise ValueError(f"{name} must be a path, got {getattr(self, name)!r}")
        path = self.chat_path
        if not isinstance(path, str) or not path.startswith("/") or any(c in path for c in " ?#"):
            raise ValueError(f"chat_path must be a path starting with /, got {path!r}")
        if self.log_level not in _LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}"
            )
        for name, kind in (("core", CoreConfig), ("store", StoreConfig), ("auth", AuthConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")


# ---- loading -------------------------------------------------------------------------------------

_TOML_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


def _shown(key: str, value: object) -> str:
    """How an offending value is quoted in an error: its TOML type, and itself unless secret."""
    kind = next((n for t, n in _TOML_TYPES.items() if isinstance(value, t)), type(value).__name__)
    if "secret" in key and not key.endswith("_file"):
        return kind
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def _check(cls: type[Any], key: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` from the TOML table as the dataclass field wants it (a Path from a string, a
    tuple from a list, a float from an int), or ValueError naming ``[where] key``."""

    def wrong(expected: str) -> ValueError:
        return ValueError(f"[{where}] {key}: expected {expected}, got {_shown(key, value)}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        if value == "":  # TOML has no null: an empty string means "none"
            return None
        return _check(cls, key, value, inner, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        if math.isnan(value) or (math.isinf(value) and (cls, key) not in _INFINITY_MEANS_NEVER):
            raise wrong("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if hint is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise wrong("a file path (a non-empty string)")
        return Path(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        noun = "file paths" if item is Path else "strings"
        if not isinstance(value, list | tuple):
            raise wrong(f"a list of {noun}")
        items = []
        for i, element in enumerate(value):
            try:
                items.append(_check(cls, key, element, item, where))
            except ValueError:
                raise wrong(f"a list of {noun} (item {i + 1} is {_shown(key, element)})") from None
        return tuple(items)
    # A nested dataclass: it has a table of its own ([core.sharding] and the like).
    raise ValueError(f"[{where}] {key}: belongs in a [{key}] table of its own, not in [{where}]")


def _build(cls: type[Any], table: object, where: str, nested: dict[str, Any] | None = None) -> Any:
    """Build the dataclass ``cls`` from a TOML table: every key known, every value of its field's
    type (:func:`_check`), then ``cls``'s own range checks; any failure is a ValueError that
    starts with ``[where] key``. ``nested`` holds the fields built from their own tables."""
    if not isinstance(table, dict):
        raise ValueError(f"[{where}] must be a table, got {_shown(where, table)}")
    table = rename_old_keys(cls, table, where)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ValueError(
            f"unknown key(s) in [{where}]: {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {key: _check(cls, key, value, hints[key], where) for key, value in table.items()}
    kwargs.update(nested or {})
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if message.startswith("["):  # already names its table
            raise ValueError(message) from None
        raise ValueError(f"[{where}] {message}") from None


def _pop_table(table: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    sub = table.pop(key, {})
    if not isinstance(sub, dict):
        raise ValueError(f"[{where}] must be a table, got {_shown(key, sub)}")
    return sub


def load_config(path: Path | None = None, **overrides: Any) -> ServerConfig:
    """Read ``path`` (TOML) if given, then apply non-None ``overrides`` to the [server] fields.

    Every value is checked against its field's type and range. Raises ValueError naming the
    table, the key, what was expected and what it got (one line), and OSError if the file
    can't be read.
    """
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_TABLES))
    if unknown:
        raise ValueError(
            f"unknown table(s) in {path}: {', '.join(unknown)}; known: {', '.join(_TABLES)}"
        )
    auth_table = dict(_pop_table(dict(data), "auth", "auth"))
    if overrides.pop("insecure_dev", False):
        auth_table["mode"] = "insecure-dev"
    auth = _build(AuthConfig, auth_table, "auth")
    core_table = dict(_pop_table(dict(data), "core", "core"))
    sharding = _build(
        ShardingConfig, _pop_table(core_table, "sharding", "core.sharding"), "core.sharding"
    )
    limits = _build(LimitsConfig, _pop_table(core_table, "limits", "core.limits"), "core.limits")
    core = _build(CoreConfig, core_table, "core", {"sharding": sharding, "limits": limits})
    store = _build(StoreConfig, _pop_table(dict(data), "store", "store"), "store")
    server_table = {
        **_pop_table(dict(data), "server", "server"),
        **{k: v for k, v in overrides.items() if v is not None},
    }
    config: ServerConfig = _build(
        ServerConfig, server_table, "server", {"core": core, "store": store, "auth": auth}
    )
    return config
