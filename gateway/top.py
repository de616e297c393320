"""``skein top``: a live terminal view of one gateway, read from the gateway's own endpoints.

Counters and gauges come from ``GET /metrics`` on the admin port (plain HTTP); rates are the
difference of two scrapes over the time between them. Rooms come from ``GET /v1/rooms`` and
``GET /v1/rooms/{room}`` over HTTP/3, all on one QUIC connection kept open between refreshes (so
watching does not add a handshake per room per second to what is watched).

``--once`` renders one frame to stdout and exits (two scrapes ``--interval-s`` apart, for the
rates): for scripts and tests. It exits 1 if either endpoint could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import ssl
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gateway.engine import (
    H3_ALPN,
    ConnectionTerminated,
    DataReceived,
    H3Connection,
    HeadersReceived,
    QuicConfiguration,
    QuicConnectionProtocol,
    QuicEvent,
    quic_connect,
)

__all__ = [
    "Scrape",
    "Snapshot",
    "add_arguments",
    "main",
    "parse_metrics",
    "render",
    "run",
    "run_args",
    "scrape",
]

DEFAULT_URL = "https://127.0.0.1:4433"
DEFAULT_ADMIN = "http://127.0.0.1:9433"
DEFAULT_CA = Path("certs/ca.pem")
_MAX_METRICS_BYTES = 8 << 20  # a scrape this large is not ours: refuse rather than buffer it
_MAX_BODY_BYTES = 16 << 20  # one JSON answer (the room list of a full gateway is a few MB)
_MAX_ROOMS_FETCHED = 200  # rooms read per refresh; the busiest --max-rooms of them are shown
_CONCURRENT_REQUESTS = 16  # below the gateway's QUIC stream limit
_PRIORITIES = ("high", "normal", "chatter")

LabelSet = tuple[tuple[str, str], ...]


# ---- /metrics -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scrape:
    """One reading of ``/metrics``: every sample by (name, sorted labels), taken at ``at_s``."""

    at_s: float
    samples: dict[tuple[str, LabelSet], float]

    def value(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted.issubset(ls))

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.samples)

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """A histogram's cumulative ``(le, count)`` pairs, ascending (``name`` without _bucket)."""
        out = [
            (float(dict(ls)["le"]), v)
            for (n, ls), v in self.samples.items()
            if n == f"{name}_bucket"
        ]
        return sorted(out)


def parse_metrics(text: str, at_s: float) -> Scrape:
    """Parse Prometheus text exposition. Raises ValueError if it is not that."""
    samples: dict[tuple[str, LabelSet], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(at_s, samples)


def _read_metrics(url: str, timeout_s: float) -> str:
    # The admin port is local to the gateway's network: never route it through an HTTP proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        body: bytes = response.read(_MAX_METRICS_BYTES + 1)
    if len(body) > _MAX_METRICS_BYTES:
        raise ValueError(f"{url} answered more than {_MAX_METRICS_BYTES} bytes")
    return body.decode("utf-8")


async def scrape(admin_url: str, timeout_s: float) -> Scrape:
    """GET ``{admin_url}/metrics`` (in a thread) and parse it. Raises OSError or ValueError."""
    url = admin_url.rstrip("/") + "/metrics"
    text = await asyncio.to_thread(_read_metrics, url, timeout_s)
    return parse_metrics(text, time.monotonic())


def _rate(now: Scrape, before: Scrape | None, name: str, **labels: str) -> float | None:
    if before is None or now.at_s <= before.at_s:
        return None
    delta = now.value(name, **labels) - before.value(name, **labels)
    if delta < 0:  # the gateway restarted between the scrapes
        delta = now.value(name, **labels)
    return delta / (now.at_s - before.at_s)


def _quantile(q: float, now: Scrape, before: Scrape | None, name: str) -> float | None:
    """``histogram_quantile`` over the interval (since start when there is no earlier scrape)."""
    buckets = now.buckets(name)
    if before is not None:
        earlier = dict(before.buckets(name))
        buckets = [(le, count - earlier.get(le, 0.0)) for le, count in buckets]
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if math.isinf(le):
                return lower_le  # as Prometheus does: the highest finite bound
            span = count - lower_count
            return lower_le + (le - lower_le) * ((target - lower_count) / span if span else 1.0)
        lower_le, lower_count = le, count
    return lower_le


# ---- HTTP/3 ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Response:
    done: asyncio.Future[None]
    status: int = 0
    body: bytearray = field(default_factory=bytearray)


class _H3Protocol(QuicConnectionProtocol):
    """A QUIC connection carrying any number of concurrent HTTP/3 GETs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3 = H3Connection(self._quic)
        self._responses: dict[int, _Response] = {}

    async def get(self, authority: str, path: str) -> tuple[int, bytes]:
        """GET ``path``; returns (status, body). Raises ConnectionError or ValueError."""
        stream_id = self._quic.get_next_available_stream_id()
        response = _Response(self._loop.create_future())
        self._responses[stream_id] = response
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"accept", b"application/json"),
        ]
        self._h3.send_headers(stream_id, headers, end_stream=True)
        self.transmit()
        try:
            await response.done
        finally:
            self._responses.pop(stream_id, None)
        return response.status, bytes(response.body)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            for waiting in self._responses.values():
                if not waiting.done.done():
                    waiting.done.set_exception(ConnectionError(event.reason_phrase or "closed"))
        for h3_event in self._h3.handle_event(event):
            if not isinstance(h3_event, HeadersReceived | DataReceived):
                continue
            response = self._responses.get(h3_event.stream_id)
            if response is None or response.done.done():
                continue
            if isinstance(h3_event, HeadersReceived):
                response.status = int(dict(h3_event.headers).get(b":status", b"0"))
            else:
                response.body += h3_event.data
            if len(response.body) > _MAX_BODY_BYTES:
                response.done.set_exception(ValueError("HTTP/3 answer too large"))
            elif h3_event.stream_ended:
                response.done.set_result(None)


class _RoomSource:
    """Reads rooms over one HTTP/3 connection, opened on first use and again after a failure."""

    def __init__(self, base_url: str, *, ca_file: Path | None, verify: bool, timeout_s: float):
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 443
        self._authority = f"{self._host}:{self._port}"
        self._ca_file, self._verify, self._timeout_s = ca_file, verify, timeout_s
        self._stack: contextlib.AsyncExitStack | None = None
        self._protocol: _H3Protocol | None = None

    async def _connect(self) -> _H3Protocol:
        if self._protocol is not None:
            return self._protocol
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=self._host)
        if not self._verify:
            config.verify_mode = ssl.CERT_NONE
        elif self._ca_file is not None:
            config.load_verify_locations(str(self._ca_file))
        stack = contextlib.AsyncExitStack()
        opening = quic_connect(
            self._host, self._port, configuration=config, create_protocol=_H3Protocol
        )
        protocol = await asyncio.wait_for(stack.enter_async_context(opening), self._timeout_s)
        assert isinstance(protocol, _H3Protocol)
        self._stack, self._protocol = stack, protocol
        return protocol

    async def get_json(self, path: str) -> tuple[int, Any]:
        protocol = await self._connect()
        try:
            status, body = await asyncio.wait_for(
                protocol.get(self._authority, path), self._timeout_s
            )
        except (ConnectionError, TimeoutError):
            await self.close()  # the next call dials again
            raise
        return status, json.loads(body or b"null")

    async def rooms(self, wanted: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
        """(room infos, how many rooms the gateway has). Rooms that vanished are left out."""
        names = list(wanted)
        if not names:
            _, listing = await self.get_json("/v1/rooms")
            names = list(listing["rooms"])
        slots = asyncio.Semaphore(_CONCURRENT_REQUESTS)

        async def one(name: str) -> dict[str, Any] | None:
            async with slots:
                status, info = await self.get_json(f"/v1/rooms/{quote(name, safe='')}")
            return info if status == 200 and isinstance(info, dict) else None

        infos = await asyncio.gather(*(one(n) for n in names[:_MAX_ROOMS_FETCHED]))
        return [i for i in infos if i is not None], len(names)

    async def close(self) -> None:
        stack, self._stack, self._protocol = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stack.aclose(), self._timeout_s)


# ---- rendering ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one frame shows: the latest scrape, the one before (for rates), rooms, problems."""

    now: Scrape | None
    before: Scrape | None
    rooms: list[dict[str, Any]]
    room_count: int
    problems: list[str]
    max_rooms: int = 20


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _header(now: Scrape, before: Scrape | None) -> Table:
    def total_and_rate(name: str, **labels: str) -> str:
        return f"{now.value(name, **labels):,.0f} ({_fmt(_rate(now, before, name, **labels))}/s)"

    lz4_out = now.value("skein_lz4_output_bytes_total")
    batches = _rate(now, before, "skein_batches_total")
    batch_msgs = _rate(now, before, "skein_batch_messages_total")
    grid = Table.grid(padding=(0, 2))
    for _ in range(3):
        grid.add_column(style="bold cyan", no_wrap=True)
        grid.add_column(overflow="fold")
    rows = [
        ("connections", f"{now.value('skein_connections'):,.0f}"),
        ("sessions", f"{now.value('skein_sessions'):,.0f}"),
        ("handshakes", total_and_rate("skein_handshakes_total")),
        ("migrations nat", total_and_rate("skein_migrations_total", kind="nat_rebinding")),
        ("migrations addr", total_and_rate("skein_migrations_total", kind="address_change")),
        ("resumes", total_and_rate("skein_resumes_total")),
        ("msgs in/s", _fmt(_rate(now, before, "skein_messages_in_total"))),
        ("deliveries/s", _fmt(_rate(now, before, "skein_deliveries_total"))),
        ("shed/s", _fmt(_rate(now, before, "skein_shed_messages_total"))),
        *(
            (f"in/s {p}", _fmt(_rate(now, before, "skein_messages_in_total", priority=p)))
            for p in _PRIORITIES
        ),
        ("rooms", f"{now.value('skein_rooms'):,.0f}"),
        ("shards", f"{now.value('skein_shards'):,.0f}"),
        (
            "splits/merges",
            f"{now.value('skein_reshards_total', direction='split'):,.0f} / "
            f"{now.value('skein_reshards_total', direction='merge'):,.0f}",
        ),
        ("batches/s", _fmt(batches)),
        ("msgs/batch", _fmt(batch_msgs / batches if batches and batch_msgs is not None else None)),
        (
            "lz4 ratio",
            _fmt(now.value("skein_lz4_input_bytes_total") / lz4_out, 2) if lz4_out else "-",
        ),
        ("fan-out wait p50", _fmt_s(_quantile(0.5, now, before, "skein_fanout_wait_seconds"))),
        ("fan-out wait p99", _fmt_s(_quantile(0.99, now, before, "skein_fanout_wait_seconds"))),
        ("errors/s", _fmt(_rate(now, before, "skein_errors_total"))),
    ]
    for i in range(0, len(rows), 3):
        cells = [c for row in rows[i : i + 3] for c in row]
        grid.add_row(*cells, *[""] * (6 - len(cells)))
    return grid


def _rooms_table(snapshot: Snapshot) -> Table:
    rooms = sorted(snapshot.rooms, key=lambda r: (-float(r.get("room_velocity", 0.0)), r["name"]))
    shown = rooms[: snapshot.max_rooms]
    return rooms_table(shown, title=f"rooms: {len(shown)} of {snapshot.room_count}, busiest first")


def rooms_table(rooms: list[dict[str, Any]], *, title: str | None = None) -> Table:
    """Rooms as ``GET /v1/rooms/{room}`` describes them, one row each (``skein rooms`` too)."""
    table = Table(
        "room",
        "mode",
        "epoch",
        "shards (id: last seq)",
        "msgs/s by shard",
        "room msgs/s",
        "subscribers",
        title=title,
        expand=False,
    )
    for column in table.columns:
        column.overflow = "fold"
    for room in rooms:
        shards = ", ".join(f"{k}: {v}" for k, v in room.get("shards", {}).items())
        rates = ", ".join(f"{k}: {v:.1f}" for k, v in room.get("velocities", {}).items())
        table.add_row(
            str(room["name"]),
            str(room.get("mode", "")),
            str(room.get("epoch", "")),
            shards,
            rates,
            f"{float(room.get('room_velocity', 0.0)):.1f}",
            str(room.get("subscribers", "")),
        )
    return table


def render(snapshot: Snapshot) -> RenderableType:
    """One frame: the gateway's counters and rates, its rooms, and what could not be read."""
    parts: list[RenderableType] = []
    if snapshot.now is not None:
        parts.append(Panel(_header(snapshot.now, snapshot.before), title="skein top"))
    parts.append(_rooms_table(snapshot))
    parts.extend(Text(problem, style="bold red") for problem in snapshot.problems)
    return Group(*parts)


# ---- the loop -------------------------------------------------------------------------------


class _Watcher:
    """Takes snapshots: keeps the previous scrape for rates and the HTTP/3 connection open."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        ca = args.ca or (DEFAULT_CA if DEFAULT_CA.exists() else None)
        base = args.url.split("/v1/", 1)[0]
        self._rooms = _RoomSource(
            base, ca_file=ca, verify=not args.insecure, timeout_s=args.timeout_s
        )
        self._last: Scrape | None = None

    async def snapshot(self) -> Snapshot:
        problems: list[str] = []
        before, now = self._last, None
        try:
            now = await scrape(self._args.admin, self._args.timeout_s)
            self._last = now
        except (OSError, ValueError) as exc:
            problems.append(f"metrics from {self._args.admin}: {exc}")
        rooms: list[dict[str, Any]] = []
        room_count = 0
        try:
            rooms, room_count = await self._rooms.rooms(self._args.room)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"rooms from {self._args.url}: {exc!r}")
        return Snapshot(now, before, rooms, room_count, problems, self._args.max_rooms)

    async def close(self) -> None:
        await self._rooms.close()


async def run(args: argparse.Namespace) -> int:
    """Render until interrupted (or once with ``args.once``). Returns the exit code."""
    console = Console()
    if args.once and not console.is_terminal:
        console.width = max(console.width, 120)  # a pipe's 80 columns would fold the header
    watcher = _Watcher(args)
    try:
        if args.once:
            await watcher.snapshot()
            await asyncio.sleep(args.interval_s)
            snapshot = await watcher.snapshot()
            console.print(render(snapshot))
            return 1 if snapshot.problems else 0
        with Live(render(await watcher.snapshot()), console=console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(args.interval_s)
                live.update(render(await watcher.snapshot()), refresh=True)
    finally:
        await watcher.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``skein top`` (for ``gateway.cli`` to mount as a subcommand)."""
    parser.add_argument("room", nargs="*", help="rooms to show (default: the busiest)")
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the gateway's HTTP/3 base URL (default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--admin",
        default=DEFAULT_ADMIN,
        help=f"the gateway's admin port, for /metrics (default {DEFAULT_ADMIN})",
    )
    parser.add_argument("--ca", type=Path, help="CA to verify the gateway (default certs/ca.pem)")
    parser.add_argument("--insecure", action="store_true", help="skip certificate verification")
    parser.add_argument(
        "--interval-s", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    parser.add_argument(
        "--timeout-s", type=float, default=5.0, help="give up on a request after (default 5)"
    )
    parser.add_argument(
        "--max-rooms", type=int, default=20, help="rooms shown, busiest first (default 20)"
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame to stdout and exit (for scripts)"
    )


def run_args(args: argparse.Namespace) -> int:
    """Run ``skein top`` with parsed arguments; Ctrl-C ends it cleanly."""
    if args.interval_s <= 0 or args.timeout_s <= 0 or args.max_rooms < 1:
        print(
            "skein top: --interval-s and --timeout-s must be > 0, --max-rooms >= 1", file=sys.stderr
        )
        return 2
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``skein top [room ...] [--url URL] [--admin URL] [--once] ...``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="skein top",
        description="A live view of a gateway: connections, migrations, rates, rooms and shards.",
    )
    add_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
