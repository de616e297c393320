"""Metrics, health checks and structured logs, against a real gateway and real SDK clients."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.stats import Histogram
from gateway.sdk.client import Client, connect
from gateway.server import metrics
from gateway.server.app import GatewayServer
from gateway.server.logs import setup_logging
from gateway.server.udp import BufferSizes
from gateway.top import Scrape, parse_metrics
from gateway.wire.frames import Priority
from tests.conftest import chat_url

TIMEOUT_S = 20.0
DOCS = Path(__file__).resolve().parent.parent / "docs"


async def admin_request(gateway: GatewayServer, method: str, path: str) -> tuple[bytes, bytes]:
    """One request to the admin port over a plain TCP connection (it closes after one reply):
    the reply's head and body."""
    assert gateway.admin is not None
    host, port = gateway.admin.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), TIMEOUT_S)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


async def admin_get(gateway: GatewayServer, path: str) -> tuple[int, str]:
    head, body = await admin_request(gateway, "GET", path)
    return int(head.split(b" ", 2)[1]), body.decode()


async def scrape(gateway: GatewayServer) -> Scrape:
    status, text = await admin_get(gateway, "/metrics")
    assert status == 200
    return parse_metrics(text, 0.0)


async def receive(client: Client, count: int) -> None:
    async def run() -> None:
        seen = 0
        async for _ in client.messages():
            seen += 1
            if seen == count:
                return

    await asyncio.wait_for(run(), TIMEOUT_S)


async def test_metrics_move_after_chat_and_a_migration(
    gateway: GatewayServer, ca_file: Path
) -> None:
    metrics.install(gateway)
    url = chat_url(gateway)
    async with (
        connect(url, name="alice", ca_file=ca_file) as alice,
        connect(url, name="bob", ca_file=ca_file) as bob,
    ):
        await alice.join("lobby")
        await bob.join("lobby")
        got = [asyncio.create_task(receive(c, 20)) for c in (alice, bob)]
        for i in range(10):
            await alice.publish("lobby", f"a{i}".encode())
            await bob.publish("lobby", f"b{i}".encode(), priority=Priority.HIGH)
        await asyncio.gather(*got)
        await alice.migrate()

        # The gateway counts the migration when a datagram arrives from the new address, which
        # migrate() has already waited for; poll anyway, briefly, rather than trust the order.
        for _ in range(100):
            now = await scrape(gateway)
            if now.value("skein_migrations_total", kind="nat_rebinding") >= 1:
                break
            await asyncio.sleep(0.05)

        assert now.value("skein_migrations_total", kind="nat_rebinding") >= 1
        assert now.value("skein_handshakes_total") >= 2
        assert now.value("skein_connections") == 2
        assert now.value("skein_sessions") == 2
        assert now.value("skein_rooms") == 1
        assert now.value("skein_messages_in_total", priority="normal") == 10
        assert now.value("skein_messages_in_total", priority="high") == 10
        assert now.value("skein_messages_in_total", priority="chatter") == 0
        assert now.value("skein_deliveries_total") == 40  # 20 messages x 2 subscribers
        assert now.value("skein_acks_total") == 20
        assert now.value("skein_batches_total") >= 1
        assert now.value("skein_fanout_bytes_total") > 0
        assert now.value("skein_ready") == 1
        assert now.value("skein_shards") == 1
        assert now.value("skein_messages_out_total", priority="high") == 20
        assert now.value("skein_messages_out_total", priority="normal") == 20
        assert now.value("skein_fanout_wait_seconds_count") == 20
        assert now.value("skein_batch_size_messages_count") == now.value("skein_batches_total")
        assert now.has("skein_send_queue_bytes")
        # What did not happen in this run is still exported, at zero.
        assert now.value("skein_shed_messages_total") == 0
        assert now.value("skein_store_commit_seconds_count") == 10  # one per awaited HIGH publish
        assert now.has("process_cpu_seconds_total") or now.has("python_info")


async def test_health_endpoints_answer_for_load_balancers(gateway: GatewayServer) -> None:
    metrics.install(gateway)
    assert await admin_get(gateway, "/healthz") == (200, "ok\n")
    assert await admin_get(gateway, "/readyz") == (200, "ready\n")
    gateway.ready = False  # what close() sets first: a draining gateway takes no new sessions
    try:
        assert (await admin_get(gateway, "/readyz"))[0] == 503
        assert (await admin_get(gateway, "/healthz"))[0] == 200  # alive, only not ready
        assert (await scrape(gateway)).value("skein_ready") == 0
    finally:
        gateway.ready = True
    assert (await admin_get(gateway, "/nothing"))[0] == 404
    # HEAD: the same status and headers as GET, no body.
    head, body = await admin_request(gateway, "HEAD", "/readyz")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 6" in head and body == b""
    head, _ = await admin_request(gateway, "POST", "/readyz")
    assert head.startswith(b"HTTP/1.1 405")


async def test_each_gateway_has_its_own_registry(gateway: GatewayServer) -> None:
    first, second = metrics.install(gateway), metrics.install(gateway)
    assert first is not second
    text = generate_latest(first).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"skein_connections", "skein_deliveries", "skein_fanout_wait_seconds"} <= names


def exported_families() -> set[str]:
    """Every skein_* family name as exposed (counters with _total), from a fresh gateway's view."""
    text = generate_latest(metrics.install(_Idle())).decode()  # type: ignore[arg-type]
    return set(re.findall(r"^# TYPE (skein_\w+) ", text, re.MULTILINE))


class _Idle:
    """Just enough of a GatewayServer for the collector: nothing has happened yet."""

    def __init__(self) -> None:
        from collections import Counter

        from gateway.core.hub import Hub

        self.hub = Hub()
        self.admin = None
        self.ready = True
        self.connection_count = 0
        self.counters: Counter[str] = Counter()
        self.migrations: Counter[str] = Counter()
        self.admissions: Counter[str] = Counter()
        self.udp_buffers = BufferSizes(0, 0, 0)
        self.guard = None

    def udp_drops(self) -> int:
        return 0

    def udp_receive_queue(self) -> int:
        return 0

    datagram_counts = (0, None, None)


def test_every_family_is_documented_and_on_the_dashboard() -> None:
    families = exported_families()
    assert len(families) > 30
    operations = (DOCS / "operations.md").read_text()
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for family in sorted(families):
        assert f"`{family}`" in operations, f"{family} is not in docs/operations.md"
        assert family in exprs, f"{family} has no panel in docs/grafana-dashboard.json"


def test_dashboard_is_importable_json() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_histogram_buckets_are_fixed_and_cumulative() -> None:
    h = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 2.0, 3.0):
        h.observe(value)
    h.observe(0.5, times=3)
    assert h.cumulative() == [(0.01, 2), (0.1, 3), (1.0, 6), (math.inf, 8)]
    assert h.count == 8 and h.total == pytest.approx(0.005 + 0.01 + 0.05 + 5.0 + 1.5)
    assert len(h.counts) == 4  # however many observations
    for bad in ((), (1.0, 1.0), (2.0, 1.0), (1.0, math.inf)):
        with pytest.raises(ValueError):
            Histogram(bad)


def test_json_logs_are_one_object_per_line_with_the_extras() -> None:
    root, quic = logging.getLogger(), logging.getLogger("quic")
    level, quic_level = root.level, quic.level
    out = io.StringIO()
    handler = setup_logging("debug", stream=out)
    try:
        setup_logging("info", stream=out)  # a second call replaces the first handler
        log = logging.getLogger("skein.test")
        log.debug("not at info")
        log.info(
            "connection migrated",
            extra={"event": "migration", "conn": 7, "cid": "ab12", "room": "lobby", "from": "x"},
        )
        log.warning("admin route %s failed", "/metrics", extra={"level": "shadowed"})
        try:
            raise RuntimeError("boom\nsecond line")
        except RuntimeError:
            log.exception("route failed")
        # aioquic's per-connection adapter: "[id] " before every message; chatty at info.
        quic_log = logging.LoggerAdapter(quic)
        quic_log.info("[%s] ALPN negotiated protocol %s", "03fe56", "h3")
        quic_log.warning("[03fe56] Stream %d reset", 4)
    finally:
        for h in [h for h in root.handlers if type(h) is type(handler)]:
            root.removeHandler(h)
        root.setLevel(level)
        quic.setLevel(quic_level)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    first, second, third, fourth = (json.loads(line) for line in lines)
    assert first["event"] == "migration" and first["message"] == "connection migrated"
    assert (first["conn"], first["cid"], first["room"], first["from"]) == (7, "ab12", "lobby", "x")
    assert first["level"] == "info" and first["logger"] == "skein.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert second["event"] == "admin_route_failed"  # from the template, not the argument
    assert second["message"] == "admin route /metrics failed"
    assert second["level"] == "warning" and second["extra_level"] == "shadowed"
    assert "RuntimeError: boom" in third["exc"] and third["level"] == "error"
    assert (fourth["logger"], fourth["event"], fourth["tag"]) == ("quic", "stream_reset", "03fe56")


def test_text_logs_and_bad_levels() -> None:
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    handler = setup_logging("INFO", json=False, stream=out)
    try:
        logging.getLogger("skein.test").info("session opened", extra={"conn": 3, "room": "r"})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert "session opened event=session_opened conn=3 room=r" in out.getvalue()
    with pytest.raises(ValueError, match="log level"):
        setup_logging("verbose")
