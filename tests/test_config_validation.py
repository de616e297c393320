"""Every setting is type- and range-checked, and a bad one is one line naming ``[table] key``.

``load_config`` is checked field by field, generically (every field of every table gets a value
of the wrong type), then with the cases of issue 21; ``skein serve`` is run on each of those
cases and must exit 2 with one line on stderr, no traceback, before it says it is serving.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.core.sharder import ShardingConfig
from gateway.server.certs import CertPaths, ensure_dev_certs
from gateway.server.config import ServerConfig, load_config
from gateway.store.base import StoreConfig

REPO = Path(__file__).resolve().parent.parent
TABLES: dict[str, type[Any]] = {
    "server": ServerConfig,
    "core": CoreConfig,
    "core.sharding": ShardingConfig,
    "core.limits": LimitsConfig,
    "store": StoreConfig,
    "auth": AuthConfig,
}
NESTED = {"core", "store", "auth", "sharding", "limits"}


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("nan" if math.isnan(value) else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def load(tmp_path: Path, table: str, body: str) -> ServerConfig:
    path = tmp_path / "gateway.toml"
    path.write_text(f"[{table}]\n{body}\n")
    return load_config(path)


def settings() -> list[tuple[str, str, Any]]:
    """Every (table, key, annotation) a TOML file may set."""
    found = []
    for table, cls in TABLES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in NESTED:
                found.append((table, f.name, hints[f.name]))
    return found


def test_every_default_written_out_loads_back_as_the_defaults(tmp_path: Path) -> None:
    lines = []
    for table, cls in TABLES.items():
        lines.append(f"[{table}]")
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name) if f.name not in NESTED else None
            if f.name not in NESTED and default is not None:
                lines.append(f"{f.name} = {toml_value(default)}")
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    assert load_config(path) == ServerConfig()


WRONG = {int: '"1"', float: '"1.5"', str: "1", bool: '"yes"', Path: "1"}


@pytest.mark.parametrize(("table", "key", "hint"), settings(), ids=lambda v: str(v))
def test_every_setting_refuses_a_value_of_the_wrong_type(
    tmp_path: Path, table: str, key: str, hint: Any
) -> None:
    args = typing.get_args(hint)
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    wrong = "3" if typing.get_origin(base) is tuple else WRONG[base]  # a tuple wants a list
    with pytest.raises(ValueError) as info:
        load(tmp_path, table, f"{key} = {wrong}")
    message = str(info.value)
    assert message.startswith(f"[{table}] {key}: expected "), message
    assert "got " in message and "\n" not in message


FLOATS = [(t, k) for t, k, hint in settings() if hint is float]


@pytest.mark.parametrize(("table", "key"), FLOATS, ids=lambda v: str(v))
def test_no_float_setting_takes_nan_and_only_retention_takes_inf(
    tmp_path: Path, table: str, key: str
) -> None:
    with pytest.raises(ValueError, match=rf"^\[{table}\] {key}: expected a finite number"):
        load(tmp_path, table, f"{key} = nan")
    if (table, key) == ("store", "retention_s"):
        assert math.isinf(load(tmp_path, table, f"{key} = inf").store.retention_s)  # "never"
        return
    for value in ("inf", "-inf"):
        with pytest.raises(ValueError, match=rf"^\[{table}\] {key}"):
            load(tmp_path, table, f"{key} = {value}")


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ('[server]\nport = "4433"', "[server] port: expected an integer, got '4433' (a string)"),
        ('[core]\ntick_ms = "fast"', "[core] tick_ms: expected a number, got 'fast' (a string)"),
        ("[server]\nidle_timeout_s = nan", "[server] idle_timeout_s: expected a finite number"),
        ("[server]\nidle_timeout_s = inf", "[server] idle_timeout_s: expected a finite number"),
        ("[core]\ntick_ms = nan", "[core] tick_ms: expected a finite number, got nan"),
        ('[core]\ngroup_rooms = "group-*"', "[core] group_rooms: expected a list of strings"),
        ('[core]\ngroup_rooms = ["a", 1]', "[core] group_rooms: expected a list of strings"),
        ("[server]\nport = 70000", "[server] port must be an integer 0..65535, got 70000"),
        ("[server]\nport = true", "[server] port: expected an integer, got True"),
        ("[core]\ntick_ms = -1", "[core] tick_ms must be a finite number >= 0"),
        ("[core]\ntick_ms = 5000", "[core] tick_ms must be a finite number >= 0 and <= 1000"),
        ("[server]\nidle_timeout_s = 0", "[server] idle_timeout_s must be a finite number > 0"),
        ('[server]\nchat_path = "chat"', "[server] chat_path must be a path starting with /"),
        ('[core]\nnode_id = ""', "[core] node_id must be 1-64 characters"),
        ("[core]\nslow_consumer_s = 0", "[core] slow_consumer_s must be a finite number > 0"),
        ("[core]\nroom_idle_s = 0", "[core] room_idle_s must be a finite number > 0"),
        (
            "[core.limits]\nroom_create_burst_per_principal = 0.5",
            "[core.limits] room_create_burst_per_principal must be a finite number >= 1",
        ),
        ("[core.limits]\nmax_connections = 0", "[core.limits] max_connections must be"),
        ("[core.limits]\nhandshake_burst = 0.5", "[core.limits] handshake_burst must be"),
        ('[core.limits]\nretry = "never"', "[core.limits] retry must be one of off, always"),
        ('[core.sharding]\nmax_shards = "8"', "[core.sharding] max_shards: expected an integer"),
        ("[store]\npath = 1", "[store] path: expected a file path"),
        ('[store]\npath = ""', "[store] path: expected a file path (a non-empty string)"),
        ('[store]\nfsync = "sometimes"', "[store] fsync must be one of off, normal, full"),
        ('[auth]\nhs256_secrets = "not-a-list"', "[auth] hs256_secrets: expected a list"),
        ("[auth]\nleeway_s = -1", "[auth] leeway_s must be a number within 0..3600"),
        ("[server]\ncore = 1", "[server] core: belongs in a [core] table of its own"),
        ("server = 1", "[server] must be a table, got 1 (an integer)"),
        ("[core]\nlimits = 1", "[core.limits] must be a table"),
        ("[serve]\nport = 1", "unknown table(s)"),
        ("[server]\nport = ", "is not valid TOML"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, toml: str, says: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_secrets_are_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load(tmp_path, "auth", 'hs256_secrets = "my-very-secret-value-that-is-long-enough"')
    assert "my-very-secret" not in str(info.value)


def test_an_empty_string_means_none_for_optional_settings(tmp_path: Path) -> None:
    config = load(tmp_path, "auth", 'mode = "insecure-dev"\ndev_secret_file = ""\naudience = ""')
    assert config.auth.dev_secret_file is None and config.auth.audience is None


def test_values_are_converted_to_their_field_types(tmp_path: Path) -> None:
    config = load(tmp_path, "core", 'tick_ms = 5\ngroup_rooms = ["g-*"]')
    assert config.core.tick_ms == 5.0 and isinstance(config.core.tick_ms, float)
    assert config.core.group_rooms == ("g-*",)
    config = load(tmp_path, "auth", 'es256_public_key_files = ["a.pem", "b.pem"]')
    assert config.auth.es256_public_key_files == (Path("a.pem"), Path("b.pem"))


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: CoreConfig(tick_ms=math.nan), "tick_ms must be a finite number"),
        (lambda: CoreConfig(tick_ms=math.inf), "tick_ms must be a finite number"),
        (lambda: CoreConfig(group_rooms="group-*"), "group_rooms must be a list"),  # type: ignore[arg-type]
        (lambda: CoreConfig(max_body_bytes=True), "max_body_bytes must be an integer"),
        (lambda: ServerConfig(idle_timeout_s=math.nan), "idle_timeout_s must be a finite"),
        (lambda: ServerConfig(idle_timeout_s=math.inf), "idle_timeout_s must be a finite"),
        (lambda: ServerConfig(port="4433"), "port must be an integer"),  # type: ignore[arg-type]
        (lambda: ServerConfig(certificate_file="x.pem"), "certificate_file must be a path"),  # type: ignore[arg-type]
        (lambda: LimitsConfig(max_connections=1.5), "max_connections must be an integer"),  # type: ignore[arg-type]
        (lambda: LimitsConfig(publish_rate_per_room_per_s=math.nan), "must be a finite number"),
        (lambda: AuthConfig(leeway_s=math.nan), "leeway_s must be a number within"),
        (lambda: AuthConfig(hs256_secrets="x" * 40), "hs256_secrets must be a list"),  # type: ignore[arg-type]
    ],
)
def test_direct_construction_is_checked_too(build: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        build()


# ---- skein serve ---------------------------------------------------------------------------------


def serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("SKEIN_JWT_SECRET", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=30,  # a gateway that wrongly starts is killed
    )


def read_only_store(tmp_path: Path) -> Path:
    if os.geteuid() == 0:  # root writes anywhere it may chmod; /proc takes no files from anyone
        return Path("/proc/skein-test.db")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "skein.db"


SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("garbage certificate", "holds no PEM certificate"),
        ("empty certificate", "is empty"),
        ("key as certificate", "holds a private key, not a certificate"),
        ("mismatched pair", "does not match the certificate"),
        ('port = "4433"', "[server] port: expected an integer, got '4433'"),
        ('tick_ms = "fast"', "[core] tick_ms: expected a number, got 'fast'"),
        ("idle_timeout_s = nan", "[server] idle_timeout_s: expected a finite number, got nan"),
        ("tick_ms = nan", "[core] tick_ms: expected a finite number, got nan"),
        ('group_rooms = "group-*"', "[core] group_rooms: expected a list of strings"),
        ("read-only store", "[store] path "),
    ],
)
def test_serve_refuses_bad_configuration_in_one_line(
    certs: CertPaths, tmp_path: Path, case: str, says: str
) -> None:
    cert, key = certs.cert, certs.key
    tables = {
        "server": ["port = 0", "admin_port = 0"],
        "core": [],
        "auth": [f'hs256_secrets = ["{SECRET}"]'],
        "store": ['kind = "memory"'],
    }
    if case == "garbage certificate":
        cert = tmp_path / "garbage.pem"
        cert.write_bytes(b"\x00garbage\xff\n")
    elif case == "empty certificate":
        cert = tmp_path / "empty.pem"
        cert.write_bytes(b"")
    elif case == "key as certificate":
        cert = certs.key
    elif case == "mismatched pair":
        key = ensure_dev_certs(tmp_path / "other").key
    elif case == "read-only store":
        store = read_only_store(tmp_path)
        tables["store"] = [f'path = "{store}"']
        says += str(store)
    elif case.startswith("port"):
        tables["server"] = [case, "admin_port = 0"]
    else:
        tables["server" if case.startswith("idle") else "core"].append(case)
    toml = "".join(
        f"[{name}]\n" + "".join(f"{line}\n" for line in body) for name, body in tables.items()
    )
    config = tmp_path / "gateway.toml"
    config.write_text(toml)
    done = serve(tmp_path, "--config", str(config), "--cert", str(cert), "--key", str(key))
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("skein serve: bad configuration: ")
    assert says in lines[0]
    if case.endswith(("certificate", "pair")):
        assert str(cert) in lines[0] and str(key) in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert "serving" not in done.stdout  # refused before it said it was ready


# ---- renamed keys: rates are spelled _per_s, and files with the old names go on loading --------


def test_every_rate_setting_is_spelled_per_s() -> None:
    spelled_otherwise = [
        f"[{table}] {key}"
        for table, key, _ in settings()
        if key.endswith(("_hz", "_msgs_s", "_msg_s", "_per_sec"))
    ]
    assert spelled_otherwise == []


def test_the_old_sharding_keys_still_load_with_a_warning(tmp_path: Path) -> None:
    new = load(tmp_path, "core.sharding", "split_above_per_s = 900.0\nmerge_below_per_s = 90.0")
    with pytest.warns(FutureWarning) as caught:
        old = load(
            tmp_path, "core.sharding", "split_above_msgs_s = 900.0\nmerge_below_msgs_s = 90.0"
        )
    assert old == new and old.core.sharding.split_above_per_s == 900.0
    said = sorted(str(w.message) for w in caught)
    assert said == [
        "[core.sharding] merge_below_msgs_s is deprecated and will go: call it merge_below_per_s",
        "[core.sharding] split_above_msgs_s is deprecated and will go: call it split_above_per_s",
    ]


def test_a_setting_under_its_old_and_new_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^\[core.sharding\] split_above_msgs_s and split_above"):
        load(tmp_path, "core.sharding", "split_above_msgs_s = 900.0\nsplit_above_per_s = 900.0")


def test_skein_serve_says_an_old_key_is_deprecated_and_serves_on(tmp_path: Path) -> None:
    """The warning reaches an operator's terminal (FutureWarning is shown by default); here the
    gateway then stops at the missing certificate, after reading the whole configuration."""
    (tmp_path / "gateway.toml").write_text("[core.sharding]\nsplit_above_msgs_s = 9000.0\n")
    done = serve(tmp_path, "--config", "gateway.toml", "--port", "0", "--admin-port", "-1")
    assert "split_above_msgs_s is deprecated and will go: call it split_above_per_s" in done.stderr
    assert "bad configuration" not in done.stderr
    assert done.returncode == 1 and "make certs" in done.stderr  # got past the configuration
