"""One simulated mobile client: an SDK session, optionally behind its own impaired-path relay.

A :class:`SimClient` connects (through a :class:`~loadgen.relay.UdpRelay` when the scenario
impairs paths or needs NAT rebinds and blackouts), joins its rooms, consumes every delivered
message into its :class:`~loadgen.tracker.ClientTracker`, publishes on its schedule and goes
through its handoffs. All of it on the worker's event loop; all of it counted in the worker's
:class:`~loadgen.stats.Recorder`.

Handoffs, by plan (:func:`loadgen.schedule.plan_handoff`): the path change first (``nat_rebind``:
the relay's upstream socket changes, so the gateway sees a new port; ``blackout``: the relay drops
everything for ``blackout_ms``), then the recovery (``migrate``: ``client.migrate()`` to a new local
socket, alternating 127.0.0.1 and 127.0.0.2 without a relay so the gateway sees a new address;
``reconnect``: ``client.reconnect()``, a new connection resumed from the cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import GatewayError, LocalProtocolError
from gateway.sdk.client import Client, connect
from gateway.wire.frames import Priority
from loadgen.payload import FLAG_HANDOFF, Payload, encode_body
from loadgen.relay import PathProfile, UdpRelay
from loadgen.scenario import PRIORITIES, Scenario
from loadgen.schedule import (
    HandoffEvent,
    HandoffMode,
    client_rng,
    handoff_schedule,
    pick,
    plan_handoff,
    publish_schedule,
)
from loadgen.stats import Recorder
from loadgen.tracker import ClientTracker

__all__ = ["HANDOFF_TIMEOUT_S", "SimClient", "SimContext", "Target", "resolve_target"]

HANDOFF_TIMEOUT_S = 30.0  # a handoff that takes longer counts as failed
PUBLISH_GRACE_S = 5.0  # publishes still unsent this long after the end are given up (not_sent)
# Old client addresses a per-client relay keeps: only the latest matters after a migration; one
# more lets late datagrams from the previous socket through. Keeps fds per client constant.
RELAY_MAX_CLIENTS = 2
HISTORY_PER_ROOM = 256

_FAILURES = (GatewayError, OSError, TimeoutError, ConnectionError)
# A publish or a handoff failing in any other way is an SDK bug worth seeing in the report, not a
# reason for the generator to stop: it is counted and noted like the expected failures.
_ANY_FAILURE = Exception


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
    """What every client of a worker shares."""

    scenario: Scenario
    target: Target
    mode: HandoffMode
    run_id: str
    client_options: dict[str, Any]
    recorder: Recorder
    profiles: dict[str, PathProfile]


class SimClient:
    """One client. ``start()``, ``run(start_ns, end_ns)``, then ``stop()``."""

    def __init__(self, ctx: SimContext, index: int, *, attempt: int = 1) -> None:
        self.ctx = ctx
        self.index = index
        self.attempt = attempt  # a retried connect gets other (still seeded) path impairments
        self.tracker = ClientTracker(ctx.recorder, window_s=ctx.scenario.handoffs.window_s)
        self.client: Client | None = None
        self.relay: UdpRelay | None = None
        self.rooms: dict[int, str] = {}  # rank -> room name
        self.acked: dict[str, list[int]] = {}  # room -> acked publishes by priority
        self._numbers: dict[str, int] = {}
        self._session: contextlib.AbstractAsyncContextManager[Client] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._inflight = asyncio.Semaphore(ctx.scenario.publish.max_in_flight)
        self._publishes: set[asyncio.Task[None]] = set()
        self._local_toggle = False

    @property
    def counters(self) -> Any:
        return self.ctx.recorder.counters

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, ranks: tuple[int, ...]) -> None:
        """Connect (through a fresh relay if the scenario uses one) and join the rooms of
        ``ranks``. Raises on failure, leaving nothing open."""
        ctx, sc = self.ctx, self.ctx.scenario
        url = ctx.target.url
        try:
            if sc.uses_relay:
                url = await self._start_relay()
            name = f"lg-{ctx.run_id}-{self.index}"
            session = connect(url, name=name, **ctx.client_options)
            self.client = await session.__aenter__()
            self._session = session  # only once entered: stop() then exits it
            for rank in ranks:
                room = f"{sc.rooms.prefix}-{ctx.run_id}-{rank}"
                joined = await self.client.join(room)
                # The SDK keeps 10,000 delivered messages per room for ordered(); loadgen never
                # reads them, and thousands of clients cannot afford it. (Asked for as a
                # ClientConfig option; until then this private poke.)
                self.client.session.reconciler(room)._max_history = HISTORY_PER_ROOM
                self.tracker.joined(room, joined.frontier)
                self.rooms[rank] = room
                self.acked[room] = [0, 0, 0]
        except BaseException:
            await self.stop()
            raise
        self._consumer = asyncio.get_running_loop().create_task(self._consume(self.client))

    async def _start_relay(self) -> str:
        target = self.ctx.target
        v6 = target.family == socket.AF_INET6
        loop_host = "::1" if v6 else "127.0.0.1"
        upstream = loop_host if target.loopback else ("::" if v6 else "0.0.0.0")
        rng = client_rng(self.ctx.scenario.seed, self.index, f"path:{self.attempt}")
        profile = self.ctx.profiles[pick(rng, self.ctx.scenario.paths.mix)]
        self.relay = await UdpRelay.start(
            (target.host, target.port),
            listen_host=loop_host,
            upstream_host=upstream,
            profile=profile,
            seed=rng.getrandbits(32),
            max_clients=RELAY_MAX_CLIENTS,
        )
        host = f"[{loop_host}]" if v6 else loop_host
        return f"https://{host}:{self.relay.address[1]}{target.path}"

    async def stop(self) -> None:
        """Close the session and the relay. Safe to call twice."""
        for task in list(self._publishes):
            task.cancel()
        session, self._session = self._session, None
        if session is not None:
            with contextlib.suppress(*_FAILURES):
                await session.__aexit__(None, None, None)
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        if self.relay is not None:
            await self.relay.close()
        self.tracker.finish()

    async def _consume(self, client: Client) -> None:
        try:
            async for event in client.messages():
                self.tracker.delivered(event.room, event.message, time.monotonic_ns())
        except LocalProtocolError:
            self.counters["consumer_overflow"] += 1  # the SDK's queue overflowed: we fell behind

    # ---- the run --------------------------------------------------------------------------------

    async def run(self, start_ns: int, end_ns: int) -> None:
        """Publish and hand off on schedule until ``end_ns``; then wait for every publish's ack."""
        await asyncio.gather(
            self._publish_loop(start_ns, end_ns), self._handoff_loop(start_ns, end_ns)
        )
        if self._publishes:
            await asyncio.wait(list(self._publishes))

    async def _publish_loop(self, start_ns: int, end_ns: int) -> None:
        sc = self.ctx.scenario
        rng = client_rng(sc.seed, self.index, "publish")
        events = publish_schedule(rng, tuple(self.rooms), sc.publish, sc.duration_s)
        give_up_ns = end_ns + int(PUBLISH_GRACE_S * 1e9)
        for event in events:
            intended = start_ns + int(event.at_s * 1e9)
            await _sleep_until(intended)
            await self._inflight.acquire()
            now = time.monotonic_ns()
            if now > give_up_ns:
                self._inflight.release()
                self.counters["not_sent"] += 1 + sum(1 for _ in events)
                return
            room = self.rooms[event.room_rank]
            n = self._numbers[room] = self._numbers.get(room, 0) + 1
            flags = FLAG_HANDOFF if self.tracker.in_window(now) else 0
            body = encode_body(Payload(intended, self.index, n, flags), event.size_bytes)
            self.ctx.recorder.publish_lag(now - intended)
            self.counters[f"published:{event.priority}"] += 1
            task = asyncio.get_running_loop().create_task(self._publish(room, body, event.priority))
            self._publishes.add(task)
            task.add_done_callback(self._publishes.discard)

    async def _publish(self, room: str, body: bytes, priority: str) -> None:
        assert self.client is not None
        try:
            await self.client.publish(room, body, priority=Priority[priority.upper()])
        except _ANY_FAILURE as exc:
            self.ctx.recorder.note(f"client {self.index}: publish: {exc!r}")
            # Unacked: it may still be sequenced (the SDK re-sends it after a reconnect), but it
            # is not expected by anyone, so a receiver getting it cannot hide a loss elsewhere.
            self.counters["publish_failed"] += 1
        else:
            self.acked[room][PRIORITIES.index(priority)] += 1
            self.counters[f"acked:{priority}"] += 1
        finally:
            self._inflight.release()

    async def _handoff_loop(self, start_ns: int, end_ns: int) -> None:
        sc = self.ctx.scenario
        rng = client_rng(sc.seed, self.index, "handoff")
        events = handoff_schedule(rng, sc.handoffs, sc.paths, sc.duration_s)
        for done, event in enumerate(events):
            await _sleep_until(start_ns + int(event.at_s * 1e9))
            if time.monotonic_ns() >= end_ns:
                # Earlier handoffs overran (each is bounded by HANDOFF_TIMEOUT_S): the run is
                # over, and handoffs after it would only blur the drain.
                self.counters["handoffs_not_done"] += len(events) - done
                return
            await self.handoff(event)

    async def handoff(self, event: HandoffEvent) -> None:
        """Go through one handoff; count it ok or failed by kind and by recovery."""
        plan = plan_handoff(event.kind, self.ctx.mode)
        self.tracker.handoff(time.monotonic_ns(), event.kind)
        counters = self.counters
        counters[f"handoff:{event.kind}"] += 1
        try:
            async with asyncio.timeout(HANDOFF_TIMEOUT_S):
                await self._change_path(plan.path, event.profile)
                if plan.recovery == "migrate":
                    await self._client().migrate(local_addr=self._next_local_host())
                elif plan.recovery == "reconnect":
                    await self._client().reconnect()
        except _ANY_FAILURE as exc:
            self.ctx.recorder.note(f"client {self.index}: {event.kind} ({plan.recovery}): {exc!r}")
            counters[f"handoff_failed:{event.kind}"] += 1
            counters[f"{plan.recovery}_failed"] += 1
        else:
            counters[f"handoff_ok:{event.kind}"] += 1
            counters[f"{plan.recovery}_ok"] += 1

    async def _change_path(self, change: str, profile: str | None) -> None:
        relay = self.relay
        if relay is None:
            return
        if profile is not None:
            relay.set_profile(self.ctx.profiles[profile])
        if change == "nat_rebind":
            relay.rebind()
        elif change == "blackout":
            relay.blackhole(True)
            try:
                await asyncio.sleep(self.ctx.scenario.handoffs.blackout_ms / 1000.0)
            finally:
                relay.blackhole(False)

    def _client(self) -> Client:
        assert self.client is not None
        return self.client

    def _next_local_host(self) -> str | None:
        """Without a relay, alternate loopback addresses so the gateway sees a new address."""
        if self.relay is not None or not self.ctx.target.loopback:
            return None  # a new local port (behind the relay, a new port at the gateway too)
        if self.ctx.target.family != socket.AF_INET:
            return None
        self._local_toggle = not self._local_toggle
        return "127.0.0.2" if self._local_toggle else "127.0.0.1"

    # ---- the end --------------------------------------------------------------------------------

    def missing(self, expected: dict[str, list[int]]) -> int:
        """How many expected messages (acked publishes to its rooms) this client has not had."""
        return sum(
            max(0, want - got)
            for room, tracker in self.tracker.rooms.items()
            for want, got in zip(expected.get(room, (0, 0, 0)), tracker.received, strict=True)
        )

    def account(self, expected: dict[str, list[int]]) -> None:
        """Add this client's loss by priority and its SDK counters to the recorder."""
        counters = self.counters
        for room, tracker in self.tracker.rooms.items():
            want_all = expected.get(room, [0, 0, 0])
            for name, want, got in zip(PRIORITIES, want_all, tracker.received, strict=True):
                counters[f"expected:{name}"] += want
                counters[f"received:{name}"] += got
                counters[f"loss:{name}"] += max(0, want - got)
        if self.client is not None:
            stats = self.client.stats
            counters["sdk_reconnects"] += stats.reconnects
            counters["sdk_migrations"] += stats.migrations
            counters["shed"] += stats.skipped
            counters["missed"] += stats.missed
            counters["sdk_errors"] += stats.errors


async def _sleep_until(at_ns: int) -> None:
    delay = at_ns - time.monotonic_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
