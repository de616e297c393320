"""A gateway in its own process for ``make demo`` and ``make soak``: configured, started, killed.

:func:`start_gateway` writes a configuration into a results directory and starts
``python -m gateway.cli serve`` with it on 127.0.0.1. The gateway runs as deployed by default:
``[auth] mode = "jwt"``, with a random HS256 secret made for this run (:func:`new_secret`, a 0600
file in the results directory, also given to loadgen so that each client mints its own token),
and a SQLite store in the results directory, emptied first. ``auth=False`` runs it in
insecure-dev mode instead.

:class:`GatewayProcess` can :meth:`~GatewayProcess.kill` it (SIGKILL: a crash, nothing flushed)
and :meth:`~GatewayProcess.restart` it with the same configuration, so on the same ports and the
same store (the soak's crash test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.core.auth import dev_secret
from gateway.server.certs import ensure_dev_certs
from loadgen.runner import LoadgenError

__all__ = [
    "READY_TIMEOUT_S",
    "STOP_GRACE_S",
    "GatewayProcess",
    "new_secret",
    "pick_port",
    "render_toml",
    "start_gateway",
]

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
KILL_WAIT_S = 10.0


def _free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(kind: int, preferred: int) -> int:
    """``preferred`` if it is free, else (or if 0) a port the OS says is free now."""
    if preferred and _free(kind, preferred):
        return preferred
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_secret(path: Path) -> str:
    """A fresh random HS256 secret in ``path`` (replacing any old one; mode 0600), returned.
    Made by :func:`gateway.core.auth.dev_secret`, as ``skein token`` makes its own."""
    Path(path).unlink(missing_ok=True)
    return dev_secret(path)


def render_toml(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for ``{table: {key: value}}`` with string, number, boolean or string-list values
    (``json.dumps`` writes each as a valid TOML value). Tables are written in the given order."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it may hold a secret)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


class GatewayProcess:
    """A ``skein serve`` subprocess with its configuration. :meth:`stop` ends it (safe twice)."""

    def __init__(
        self,
        config: Path,
        port: int,
        admin_port: int,
        log: Path,
        secret: str | None,
        ca_file: Path,
    ) -> None:
        self.config = config
        self.ca_file = ca_file  # the CA that verifies its certificate
        self.port = port
        self.admin_port = admin_port
        self.log = log
        self.secret = secret  # the HS256 secret its [auth] holds (None: insecure-dev)
        self.restarts = 0
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "ab") as sink:  # a restart appends to the same log
            return subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1/chat"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll ``/readyz`` until it answers 200. Raises LoadgenError with the log's tail if the
        process exits or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LoadgenError(
                    f"the gateway exited with status {self.process.returncode}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise LoadgenError(
            f"the gateway did not become ready within {timeout_s:.0f} s ({url}):\n"
            + self._log_tail()
        )

    def kill(self) -> None:
        """SIGKILL the gateway (a crash: nothing is flushed or closed) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(KILL_WAIT_S)

    def restart(self) -> None:
        """Start the gateway again with the same configuration (ports, store, secret). Raises
        RuntimeError if it is still running (a second process could not bind its port)."""
        if self.process.poll() is None:
            raise RuntimeError("the gateway is still running: kill() or stop() it first")
        self.process = self._spawn()
        self.restarts += 1

    def stop(self) -> int | None:
        """SIGTERM, wait up to :data:`STOP_GRACE_S`, then SIGKILL. Returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)
        return self.process.returncode


def start_gateway(
    out_dir: Path,
    *,
    port: int = 4433,
    admin_port: int = 9433,
    certs_dir: Path = Path("certs"),
    name: str = "demo",
    auth: bool = True,
    core: Mapping[str, Any] | None = None,
) -> GatewayProcess:
    """Start a gateway on 127.0.0.1 (``port``, or a free one if taken or 0) with the development
    certificates in ``certs_dir`` (made if missing or near expiry).

    Writes ``<name>-gateway.toml`` (mode 0600), ``<name>-jwt-secret`` (with ``auth``; 0600),
    ``<name>-store.db`` (emptied first) and ``<name>-gateway.log`` to ``out_dir``. ``core`` adds
    keys to the ``[core]`` table. The caller must :meth:`~GatewayProcess.stop` it.
    """
    certs = ensure_dev_certs(certs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quic_port = pick_port(socket.SOCK_DGRAM, port)
    admin = pick_port(socket.SOCK_STREAM, admin_port)
    store = out_dir / f"{name}-store.db"
    for suffix in ("", "-wal", "-shm"):  # every run starts from empty rooms
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    secret = new_secret(out_dir / f"{name}-jwt-secret") if auth else None
    tables: dict[str, dict[str, Any]] = {
        "server": {
            "host": "127.0.0.1",
            "port": quic_port,
            "admin_port": admin,
            "certificate_file": str(certs.cert),
            "private_key_file": str(certs.key),
        },
        "core": dict(core or {}),
        # Every simulated phone connects from 127.0.0.1: lift the per-address cap.
        "core.limits": {"max_connections_per_address": 100_000},
        "store": {"kind": "sqlite", "path": str(store)},
        "auth": {"mode": "jwt", "hs256_secrets": [secret]} if secret else {"mode": "insecure-dev"},
    }
    config = out_dir / f"{name}-gateway.toml"
    _write_private(config, render_toml(tables))
    log = out_dir / f"{name}-gateway.log"
    log.unlink(missing_ok=True)
    return GatewayProcess(config, quic_port, admin, log, secret, certs.ca_cert)
