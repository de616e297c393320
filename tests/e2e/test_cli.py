"""The README's promise, as a user would run it: `skein serve`, then two `skein chat` terminals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.gateway import free_udp_port
from gateway.server.certs import CertPaths

DEADLINE_S = 30.0


def skein(*args: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "gateway.cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def read_until(proc: subprocess.Popen[str], needle: str, lines: list[str]) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return
    raise AssertionError(f"{needle!r} not seen; output so far:\n{''.join(lines)}")


SECRET = "a-test-secret-that-is-at-least-32-bytes-long"


@pytest.fixture
def served(certs: CertPaths, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`skein serve` as shipped: tokens required (an HS256 secret from the config)."""
    port = free_udp_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[auth]\nhs256_secrets = ["{SECRET}"]\n'
        f'[store]\nkind = "sqlite"\npath = "{tmp_path / "db"}"\n'
    )
    proc = skein(
        "serve",
        "--port",
        str(port),
        "--cert",
        str(certs.cert),
        "--key",
        str(certs.key),
        "--config",
        str(config),
        "--admin-port",
        "0",
    )
    try:
        read_until(proc, "serving HTTP/3", [])
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_two_chat_terminals_talk_and_serve_stops_cleanly_on_sigterm(
    served: tuple[subprocess.Popen[str], int], certs: CertPaths
) -> None:
    server, port = served
    url = f"https://127.0.0.1:{port}/v1/chat"
    common = ("--room", "lobby", "--url", url, "--ca", str(certs.ca_cert))
    tokens = {
        who: subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "token",
                "--sub",
                who,
                "--join",
                "lobby",
                "--publish",
                "lobby",
                "--secret",
                SECRET,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for who in ("alice", "bob")
    }
    alice = skein("chat", "--name", "alice", "--token", tokens["alice"], *common)
    bob = skein("chat", "--name", "bob", "--token", tokens["bob"], *common)
    try:
        a_out: list[str] = []
        b_out: list[str] = []
        read_until(alice, "joined lobby", a_out)
        read_until(bob, "joined lobby", b_out)
        assert alice.stdin is not None and bob.stdin is not None
        alice.stdin.write("hello from alice\n")
        alice.stdin.flush()
        read_until(bob, "alice: hello from alice", b_out)
        bob.stdin.write("hi alice\n")
        bob.stdin.flush()
        read_until(alice, "bob: hi alice", a_out)
        alice.stdin.close()  # Ctrl-D
        assert alice.wait(DEADLINE_S) == 0
    finally:
        for p in (alice, bob):
            if p.poll() is None:
                p.kill()
            p.wait(10)

    server.send_signal(signal.SIGTERM)
    assert server.wait(DEADLINE_S) == 0
    assert server.stdout is not None
    assert "skein: stopped" in server.stdout.read()


def test_serve_explains_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 1\n")
    proc = skein("serve", "--config", str(config))
    out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 2
    assert "unknown key(s) in [server]: prot" in out


def test_serve_without_certificates_says_what_to_do(tmp_path: Path) -> None:
    proc = skein(
        "serve",
        "--port",
        "0",
        "--cert",
        str(tmp_path / "none.pem"),
        "--key",
        str(tmp_path / "none.key"),
        "--config",
        "/dev/null",
        "--admin-port",
        "0",
    )
    out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 1
    assert "make certs" in out
