"""``skein top --once`` against a live gateway: one frame, read from /metrics and HTTP/3."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from rich.console import Console

from gateway import top
from gateway.sdk.client import connect
from gateway.server import metrics
from gateway.server.app import GatewayServer
from gateway.wire.frames import Priority
from tests.conftest import chat_url

TIMEOUT_S = 30.0


def top_argv(gateway: GatewayServer, ca_file: Path, *extra: str) -> list[str]:
    assert gateway.admin is not None
    host, port = gateway.address
    admin_host, admin_port = gateway.admin.address
    return [
        "--url",
        f"https://{host}:{port}",
        "--admin",
        f"http://{admin_host}:{admin_port}",
        "--ca",
        str(ca_file),
        "--once",
        "--interval-s",
        "0.2",
        *extra,
    ]


async def test_top_once_renders_rooms_and_counters(
    gateway: GatewayServer, ca_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics.install(gateway)
    async with connect(chat_url(gateway), name="alice", ca_file=ca_file) as alice:
        for room in ("lobby", "kitchen"):
            await alice.join(room)
            for i in range(5):
                await alice.publish(room, f"{room}-{i}".encode(), priority=Priority.HIGH)
        await alice.migrate()
        # top runs its own event loop; in a thread, so the gateway on this loop keeps serving.
        code = await asyncio.wait_for(
            asyncio.to_thread(top.main, top_argv(gateway, ca_file)), TIMEOUT_S
        )
    out = capsys.readouterr().out
    assert code == 0, out
    for needle in ("skein top", "connections", "handshakes", "migrations nat", "deliveries/s"):
        assert needle in out
    assert "lobby" in out and "kitchen" in out
    assert "rooms: 2 of 2" in out
    assert "1: 5" in out  # a shard id and its last seq


async def test_top_once_reports_an_unreachable_admin_port(
    gateway: GatewayServer, ca_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on (bound, then released)
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    argv = top_argv(gateway, ca_file, "--admin", f"http://127.0.0.1:{closed_port}")
    code = await asyncio.wait_for(asyncio.to_thread(top.main, argv), TIMEOUT_S)
    out = capsys.readouterr().out
    assert code == 1
    assert "metrics from" in out
    assert "rooms: 0 of 0" in out  # the HTTP/3 side still answered


def test_render_copes_with_a_first_scrape_and_no_rooms() -> None:
    text = "# TYPE skein_connections gauge\nskein_connections 3\n"
    snapshot = top.Snapshot(top.parse_metrics(text, 1.0), None, [], 0, [])
    console = Console(width=120, record=True)
    console.print(top.render(snapshot))
    out = console.export_text()
    assert "connections" in out and "3" in out
    assert "rooms: 0 of 0" in out


def test_rates_and_quantiles_come_from_two_scrapes() -> None:
    before = top.parse_metrics(
        "# TYPE skein_deliveries_total counter\nskein_deliveries_total 100\n"
        "# TYPE skein_fanout_wait_seconds histogram\n"
        'skein_fanout_wait_seconds_bucket{le="0.01"} 0\n'
        'skein_fanout_wait_seconds_bucket{le="0.02"} 0\n'
        'skein_fanout_wait_seconds_bucket{le="+Inf"} 0\n'
        "skein_fanout_wait_seconds_count 0\nskein_fanout_wait_seconds_sum 0\n",
        10.0,
    )
    now = top.parse_metrics(
        "# TYPE skein_deliveries_total counter\nskein_deliveries_total 300\n"
        "# TYPE skein_fanout_wait_seconds histogram\n"
        'skein_fanout_wait_seconds_bucket{le="0.01"} 50\n'
        'skein_fanout_wait_seconds_bucket{le="0.02"} 100\n'
        'skein_fanout_wait_seconds_bucket{le="+Inf"} 100\n'
        "skein_fanout_wait_seconds_count 100\nskein_fanout_wait_seconds_sum 1.2\n",
        12.0,
    )
    assert top._rate(now, before, "skein_deliveries_total") == pytest.approx(100.0)
    assert top._rate(now, None, "skein_deliveries_total") is None
    assert top._quantile(0.5, now, before, "skein_fanout_wait_seconds") == pytest.approx(0.01)
    assert top._quantile(0.75, now, before, "skein_fanout_wait_seconds") == pytest.approx(0.015)
    assert top._quantile(0.5, before, None, "skein_fanout_wait_seconds") is None
