"""Prometheus metrics on the admin port, pulled at scrape time from the gateway's live objects.

Nothing is pushed and nothing is copied on the hot path: the hub and the server bump plain
integers (:class:`~gateway.core.stats.HubStats`, ``GatewayServer.counters`` and ``.migrations``),
and :class:`GatewayCollector` turns them into metric families only when ``GET /metrics`` arrives.
Each gateway gets its own ``CollectorRegistry`` (never the process-global one), so several gateways
in one process (tests) keep apart.

Scrapes run on the event loop thread (the admin server's route), the same thread that mutates the
hub, so a scrape sees one consistent moment. Do not hand the registry to another thread's HTTP
server. Every family is listed in ``docs/operations.md``.

No family has a per-room or per-connection label: rooms are named by users and come and go, so
their names would make unbounded series. ``skein top`` and ``GET /v1/rooms/{room}`` show rooms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway.core.stats import Histogram, HubStats
from gateway.errors import ErrorCode
from gateway.server.admin import Reply
from gateway.server.listener import ADMISSION_OUTCOMES
from gateway.wire.frames import Priority

if TYPE_CHECKING:
    from gateway.server.app import GatewayServer

__all__ = ["METRICS_PATH", "GatewayCollector", "install"]

METRICS_PATH = "/metrics"

# Label values that exist before their first event, so rate() and dashboards work from the start.
_PRIORITIES = tuple(p.name.lower() for p in Priority)
_MIGRATION_KINDS = ("nat_rebinding", "address_change")
_ERROR_CODES = tuple(c.name for c in ErrorCode if c is not ErrorCode.UNSPECIFIED)


def _version() -> str:
    try:
        return metadata.version("skein")
    except metadata.PackageNotFoundError:
        return "unknown"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled_counter(
    name: str, doc: str, label: str, counts: Mapping[str, int], seed: Iterable[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted({*seed, *counts}):
        family.add_metric([key], counts.get(key, 0))
    return family


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if math.isinf(bound) else repr(bound), count)
        for bound, count in histogram.cumulative()
    ]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram.total)


def _optional_number(owners: Iterable[object], name: str) -> float | None:
    """The first ``owner.name`` that is a number (or a method returning one), else None.

    For gauges whose source another part of the gateway grows into (the send queues): until it
    exists the family is exported with no sample, rather than a 0 that would claim "empty".
    """
    for owner in owners:
        value: Any = getattr(owner, name, None)
        if callable(value):
            value = value()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


class GatewayCollector:
    """A prometheus_client collector reading one :class:`GatewayServer` at each scrape."""

    def __init__(self, server: GatewayServer) -> None:
        self._server = server
        self._version = _version()

    def describe(self) -> list[Metric]:
        # Registering would otherwise call collect() once to learn the names; nothing clashes
        # in a registry of our own, so skip that.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._process()
        yield from self._connections()
        yield from self._rooms()
        yield from self._messages(self._server.hub.stats)
        yield from self._fan_out(self._server.hub.stats)
        yield from self._queues_and_store(self._server.hub.stats)

    def _process(self) -> Iterator[Metric]:
        server = self._server
        info = GaugeMetricFamily(
            "skein_build_info", "Always 1; labels say what is running.", labels=["version", "node"]
        )
        info.add_metric([self._version, server.hub.config.node_id], 1)
        yield info
        yield _gauge(
            "skein_ready", "1 while the gateway accepts new sessions (as /readyz).", server.ready
        )

    def _connections(self) -> Iterator[Metric]:
        server, stats = self._server, self._server.hub.stats
        yield _gauge(
            "skein_connections", "Open QUIC connections (handshake done).", server.connection_count
        )
        yield _counter(
            "skein_handshakes_total",
            "QUIC handshakes completed (full or resumed).",
            server.counters["handshakes"],
        )
        yield _labelled_counter(
            "skein_handshake_admissions_total",
            "First Initials of new connections by outcome: accepted (handshake started), retried "
            "(answered with a QUIC Retry), dropped (over the handshake rate).",
            "outcome",
            server.admissions,
            ADMISSION_OUTCOMES,
        )
        yield from self._overload()
        yield _counter(
            "skein_connections_refused_total",
            "Connections closed with CONNECTION_REFUSED after the handshake (connection caps).",
            server.counters["connections_refused"],
        )
        yield _counter(
            "skein_udp_receive_drops_total",
            "Datagrams the kernel dropped at the gateway's UDP port because its receive buffer was "
            "full (the event loop fell behind reading); each is a loss QUIC must repair.",
            server.udp_drops(),
        )
        yield _gauge(
            "skein_udp_receive_queue_bytes",
            "Bytes the kernel holds for the gateway's UDP socket that the event loop has not read "
            "yet: near 0 while it keeps up; growing, it is a delay no other metric shows.",
            server.udp_receive_queue(),
        )
        received, sent, send_calls = server.datagram_counts
        yield _counter(
            "skein_udp_datagrams_received_total",
            "UDP datagrams the gateway read (in a hot room mostly the subscribers' ACKs).",
            received,
        )
        sent_family = CounterMetricFamily(
            "skein_udp_datagrams_sent_total",
            "UDP datagrams the gateway sent, and the sendmmsg calls that sent them (no sample "
            "when sends are not batched: one sendto each).",
            labels=["what"],
        )
        if sent is not None and send_calls is not None:
            sent_family.add_metric(["datagrams"], sent)
            sent_family.add_metric(["system_calls"], send_calls)
        yield sent_family
        buffers = server.udp_buffers
        yield _gauge(
            "skein_udp_receive_buffer_bytes",
            "The UDP receive buffer the kernel granted (udp_buffer_bytes asks for it).",
            buffers.receive_bytes,
        )
        yield _gauge(
            "skein_udp_send_buffer_bytes",
            "The UDP send buffer the kernel granted.",
            buffers.send_bytes,
        )
        yield _counter(
            "skein_connections_closed_total",
            "QUIC connections that ended, for any reason.",
            server.counters["connections_closed"],
        )
        yield _counter(
            "skein_sessions_refused_total",
            "WebTransport sessions the gateway refused.",
            server.counters["sessions_refused"],
        )
        yield _counter(
            "skein_requests_refused_total",
            "HTTP/3 request streams reset over max_request_header_bytes or request_deadline_s.",
            server.counters["requests_refused"],
        )
        yield _counter(
            "skein_unread_released_total",
            "Ended sessions whose unread bytes were dropped after unread_grace_s (the client "
            "never read them).",
            server.counters["unread_released"],
        )
        c = server.counters
        yield _labelled_counter(
            "skein_chatter_datagrams_total",
            "Chatter Deliver frames per recipient by how they went: as a QUIC datagram (sent), "
            "on the stream because the client's QUIC has no datagrams or it did not fit "
            "(stream), or dropped while the connection had too many datagrams waiting (dropped).",
            "outcome",
            {
                "sent": c["datagrams_sent"],
                "stream": c["datagrams_on_stream"],
                "dropped": c["datagrams_dropped"],
            },
            ("sent", "stream", "dropped"),
        )
        yield _gauge("skein_sessions", "Open chat sessions.", server.hub.session_count)
        yield _counter(
            "skein_sessions_opened_total", "Chat sessions opened.", stats.sessions_opened
        )
        yield _counter(
            "skein_sessions_closed_total", "Chat sessions closed.", stats.sessions_closed
        )
        yield _labelled_counter(
            "skein_migrations_total",
            "Peer address changes of live connections, by kind (nat_rebinding: same host, new "
            "port; address_change: new host).",
            "kind",
            server.migrations,
            _MIGRATION_KINDS,
        )
        yield _counter(
            "skein_resumes_total", "Joins that carried a cursor (a resume).", stats.resumes
        )
        yield _counter(
            "skein_replayed_messages_total",
            "Messages replayed from shard logs to resuming clients.",
            stats.replayed,
        )
        yield _counter("skein_fetches_total", "Fetch requests answered.", stats.fetches)

    def _overload(self) -> Iterator[Metric]:
        guard = self._server.guard
        yield _gauge(
            "skein_retry_active",
            "1 while new clients are asked to prove their address with a QUIC Retry (always "
            "with retry = always; with auto, under a handshake flood or while overloaded).",
            guard is not None and guard.retrying(self._server.now()),
        )
        episodes = CounterMetricFamily(
            "skein_overload_episodes_total",
            "Times the gateway found itself overloaded (retry = auto then sends Retries), by "
            "what showed it: standing_queue, loop_lag, drops, queue.",
            labels=["reason"],
        )
        for reason, count in (guard.overload.episodes if guard is not None else {}).items():
            episodes.add_metric([reason], count)
        yield episodes
        yield _gauge(
            "skein_event_loop_lag_seconds",
            "How late the listener's 100 ms load probe last ran (event-loop lag).",
            guard.overload.last_lag_s if guard is not None else 0.0,
        )

    def _rooms(self) -> Iterator[Metric]:
        stats = self._server.hub.stats
        yield _gauge(
            "skein_rooms", "Rooms this gateway holds in memory.", len(self._server.hub.room_names())
        )
        yield _counter(
            "skein_rooms_reclaimed_total",
            "Rooms dropped from memory after room_idle_s with no subscriber and nothing pending.",
            stats.rooms_reclaimed,
        )
        yield _gauge(
            "skein_shards",
            "Live shards across all rooms (each room has 1..max_shards).",
            stats.shards_opened - stats.shards_sealed,
        )
        reshards = CounterMetricFamily(
            "skein_reshards_total",
            "Room reshards, each of which starts a new epoch, by direction (split or merge).",
            labels=["direction"],
        )
        reshards.add_metric(["split"], stats.splits)
        reshards.add_metric(["merge"], stats.merges)
        yield reshards

    def _messages(self, stats: HubStats) -> Iterator[Metric]:
        yield _counter(
            "skein_frames_in_total", "Frames received from clients (all kinds).", stats.frames_in
        )
        yield _labelled_counter(
            "skein_messages_in_total",
            "Messages published and sequenced, by priority (retries not counted).",
            "priority",
            stats.published,
            _PRIORITIES,
        )
        yield _counter(
            "skein_duplicates_total",
            "Publish retries recognised by client message id and acked again.",
            stats.duplicates,
        )
        yield _counter("skein_acks_total", "Publishes acked.", stats.acks)
        yield _labelled_counter(
            "skein_errors_total",
            "Error frames sent to clients, by error code.",
            "code",
            stats.errors,
            _ERROR_CODES,
        )
        yield _counter(
            "skein_deliveries_total",
            "Messages handed to subscribers' connections (messages x recipients).",
            stats.deliveries,
        )
        yield _labelled_counter(
            "skein_messages_out_total",
            "Deliveries (messages x recipients) by priority.",
            "priority",
            stats.delivered,
            _PRIORITIES,
        )
        yield _labelled_counter(
            "skein_shed_messages_total",
            "Deliveries shed for connections over their send budget (a tombstone went "
            "instead), by priority.",
            "priority",
            stats.shed,
            _PRIORITIES,
        )
        yield _labelled_counter(
            "skein_room_rate_refused_total",
            "Publishes refused (RATE_LIMITED) because their room was over its publish rate, by "
            "priority: chatter first, normal once the room's bucket is empty, high never.",
            "priority",
            stats.room_rate_refused,
            _PRIORITIES,
        )
        yield _counter(
            "skein_slow_consumer_disconnects_total",
            "Sessions closed for falling too far behind (the SLOW_CONSUMER errors).",
            stats.errors["SLOW_CONSUMER"],
        )

    def _fan_out(self, stats: HubStats) -> Iterator[Metric]:
        yield _counter("skein_batches_total", "Deliver frames built by fan-out.", stats.batches)
        yield _counter(
            "skein_batch_messages_total", "Messages in those frames.", stats.batch_messages
        )
        yield _histogram(
            "skein_batch_size_messages", "Messages per Deliver frame.", stats.batch_size_messages
        )
        yield _counter(
            "skein_datagram_batches_total",
            "Deliver frames of live chatter built to go as QUIC datagrams (each sent to many).",
            stats.datagram_batches,
        )
        yield _counter(
            "skein_datagram_batch_messages_total",
            "Messages in those frames.",
            stats.datagram_messages,
        )
        yield _counter(
            "skein_fanout_bytes_total",
            "Fan-out bytes handed to connections, after lz4 (bytes x recipients).",
            stats.bytes_out,
        )
        yield _counter(
            "skein_lz4_input_bytes_total",
            "Deliver bytes before lz4, for the batches that were compressed (once per batch).",
            stats.lz4_in,
        )
        yield _counter(
            "skein_lz4_output_bytes_total",
            "The same batches' bytes after lz4 (once per batch).",
            stats.lz4_out,
        )
        ratio = GaugeMetricFamily(
            "skein_lz4_compression_ratio",
            "lz4 input bytes / output bytes since start (no sample until something compressed).",
        )
        if stats.lz4_out:
            ratio.add_metric([], stats.lz4_in / stats.lz4_out)
        yield ratio
        yield _histogram(
            "skein_fanout_wait_seconds",
            "From a message's receipt (= its sequencing) to its batch being handed to the "
            "subscribers' connections, per message.",
            stats.fanout_wait_seconds,
        )

    def _queues_and_store(self, stats: HubStats) -> Iterator[Metric]:
        owners = (self._server.hub, self._server)
        for name, doc in (
            ("send_queue_bytes", "Bytes queued or unacknowledged, all connections."),
            ("send_queue_max_bytes", "Bytes queued or unacknowledged, the most backed-up one."),
        ):
            family = GaugeMetricFamily(f"skein_{name}", doc)
            value = _optional_number(owners, name)
            if value is not None:
                family.add_metric([], value)
            yield family
        yield _histogram(
            "skein_store_commit_seconds",
            "Durable store commits (write + fsync of a batch).",
            stats.store_commit_seconds,
        )


def install(server: GatewayServer) -> CollectorRegistry:
    """Serve ``GET /metrics`` (Prometheus text format) on the server's admin port.

    Builds a registry of this gateway's own (its collector, plus process, platform and GC
    metrics) and returns it, for callers that want to register more collectors or read it
    directly. Call once per server, before or after ``start()``. With the admin port disabled
    (``admin_port = -1``) nothing is served, but the registry is still returned.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(server))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    if server.admin is not None:

        def metrics(_query: str) -> Reply:
            return Reply(200, CONTENT_TYPE_LATEST, generate_latest(registry))

        server.admin.routes[METRICS_PATH] = metrics
    return registry
