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

Slow consumers (``[stalls]``): the relay carries nothing for a while, so the gateway's backlog for
the client grows and its send budget applies. If the gateway ends the session (SLOW_CONSUMER, or
the SDK gives up reconnecting), the client comes back as an app would: a new session joined live,
and what it missed read from the room's stored history after its last cursor (reliable messages
only: chatter is not stored).

Reliable messages (high priority, or any message in a room matching ``reliable_rooms``: the
gateway's ``group_rooms``) are checked by identity: every member of a room must have every acked
one, by live delivery, resume or history (:meth:`SimClient.missing`, :meth:`SimClient.account`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from fnmatch import fnmatchcase
from typing import Any

from gateway.errors import ConnectionLost, GatewayError, LocalProtocolError
from gateway.sdk import Client, ClientStats, connect
from gateway.wire import frames as f
from gateway.wire.frames import Priority
from loadgen.auth import room_pattern
from loadgen.context import Expected, SimContext
from loadgen.history import before_join, read_history
from loadgen.payload import Payload, encode_body, handoff_flags
from loadgen.relay import UdpRelay
from loadgen.scenario import PRIORITIES
from loadgen.schedule import (
    HandoffEvent,
    client_rng,
    handoff_schedule,
    pick,
    plan_handoff,
    publish_schedule,
    stall_schedule,
)
from loadgen.tracker import ClientTracker

__all__ = ["HANDOFF_TIMEOUT_S", "SimClient"]

HANDOFF_TIMEOUT_S = 30.0  # a handoff that takes longer counts as failed
PUBLISH_GRACE_S = 5.0  # publishes still unsent this long after the end are given up (not_sent)
# Old client addresses a per-client relay keeps: only the latest matters after a migration; one
# more lets late datagrams from the previous socket through. Keeps fds per client constant.
RELAY_MAX_CLIENTS = 2
HISTORY_PER_ROOM = 256
COMEBACK_ATTEMPTS = 3
COMEBACK_RETRY_S = 1.0  # backoff before attempt n+1: n times this
LOST_NOTES = 3  # unreceived reliable messages named per client (all are counted)
HISTORY_ATTEMPTS = 5
HISTORY_RETRY_S = 2.0  # backoff before attempt n+1: n times this

_FAILURES = (GatewayError, OSError, TimeoutError, ConnectionError)
# A publish or a handoff failing in any other way is an SDK bug worth seeing in the report, not a
# reason for the generator to stop: it is counted and noted like the expected failures.
_ANY_FAILURE = Exception


class SimClient:
    """One client. ``start()``, ``run(start_ns, end_ns)``, then ``stop()``."""

    def __init__(self, ctx: SimContext, index: int, *, attempt: int = 1) -> None:
        self.ctx = ctx
        self.index = index
        self.attempt = attempt  # a retried connect gets other (still seeded) path impairments
        self.name = f"lg-{ctx.run_id}-{index}"
        self.tracker = ClientTracker(ctx.recorder, window_s=ctx.scenario.handoffs.window_s)
        self.client: Client | None = None
        self.relay: UdpRelay | None = None
        self.url = ctx.target.url
        self.ranks: tuple[int, ...] = ()
        self.rooms: dict[int, str] = {}  # rank -> room name
        self.acked: dict[str, list[int]] = {}  # room -> acked publishes by priority
        self.acked_reliable: dict[str, list[int]] = {}  # room -> numbers of acked reliable ones
        self.gone = False  # the session ended and could not be opened again: it did not stay
        self.coming_back = False  # between a session's end and the history read after it
        self._joined: dict[str, f.Joined] = {}  # room -> the latest session's Joined
        self._noted_publish_failure = False
        self._numbers: dict[str, int] = {}
        self._session: contextlib.AbstractAsyncContextManager[Client] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._comeback: asyncio.Task[None] | None = None
        self._inflight = asyncio.Semaphore(ctx.scenario.publish.max_in_flight)
        self._publishes: set[asyncio.Task[None]] = set()
        self._local_toggle = False
        self._stopping = False
        self._unreceived: list[tuple[str, int, int]] | None = None
        self._reliable_expected = 0

    @property
    def counters(self) -> Any:
        return self.ctx.recorder.counters

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, ranks: tuple[int, ...]) -> None:
        """Connect (through a fresh relay if the scenario uses one) and join the rooms of
        ``ranks``. Raises on failure, leaving nothing open."""
        self.ranks = ranks
        try:
            if self.ctx.scenario.uses_relay:
                self.url = await self._start_relay()
            await self._open()
        except BaseException:
            await self.stop()
            raise

    def _token(self) -> str:
        tokens = self.ctx.tokens
        if tokens is None:
            return ""
        rooms = room_pattern(self.ctx.scenario.rooms.prefix, self.ctx.run_id)
        return tokens.for_client(self.name, rooms, time.time())

    async def _open(self) -> None:
        """Open a session, join every room (live, from its frontier) and start consuming.
        Raises on failure, after closing what it opened."""
        sc = self.ctx.scenario
        session = connect(self.url, name=self.name, token=self._token(), **self.ctx.client_options)
        client = await session.__aenter__()
        self.client, self._session = client, session  # only once entered: stop() then exits it
        try:
            for rank in self.ranks:
                room = f"{sc.rooms.prefix}-{self.ctx.run_id}-{rank}"
                joined = self._joined[room] = await client.join(room)
                # The SDK keeps 10,000 delivered messages per room for ordered(); loadgen never
                # reads them, and thousands of clients cannot afford it. (Asked for as a
                # ClientConfig option; until then this private poke.)
                client.session.reconciler(room)._max_history = HISTORY_PER_ROOM
                self.tracker.joined(room, joined.frontier)
                self.rooms[rank] = room
                self.acked.setdefault(room, [0, 0, 0])
                self.acked_reliable.setdefault(room, [])
        except BaseException:
            await self._close_session()
            raise
        self._consumer = asyncio.get_running_loop().create_task(self._consume(client))

    async def _close_session(self) -> None:
        session, self._session, self.client = self._session, None, None
        if session is not None:
            with contextlib.suppress(*_FAILURES):
                await session.__aexit__(None, None, None)

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
        self._stopping = True
        for task in [*self._publishes, self._comeback]:
            if task is not None:
                task.cancel()
        if self._comeback is not None:
            with contextlib.suppress(asyncio.CancelledError, *_FAILURES):
                await self._comeback
        await self._close_session()
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
            return
        except GatewayError:
            pass  # the session ended for good (ServerError or ConnectionLost): come back below
        if not self._stopping and client is self.client:  # the session ended under us
            self._comeback = asyncio.get_running_loop().create_task(self._come_back(client))

    async def _come_back(self, old: Client) -> None:
        """The gateway ended the session (a slow consumer cut with SLOW_CONSUMER) or the SDK gave
        up reconnecting: open a new session, joined live, and read what was missed from the
        rooms' stored history after the old session's cursors. After COMEBACK_ATTEMPTS failures
        the client is gone (it did not stay)."""
        self.coming_back = True
        try:
            await self._come_back_from(old)
        finally:
            self.coming_back = False

    async def _come_back_from(self, old: Client) -> None:
        error = old.stats.last_error
        reason = error.code.name if error is not None and error.fatal else "connection_lost"
        self.counters[f"session_ended:{reason}"] += 1
        cursors = {room: old.session.reconciler(room).delivered for room in self.rooms.values()}
        self._add_sdk_stats(old.stats)
        await self._close_session()
        for attempt in range(1, COMEBACK_ATTEMPTS + 1):
            try:
                await self._open()
                break
            except _ANY_FAILURE as exc:
                self.ctx.recorder.note(f"client {self.index}: coming back: {exc!r}", force=True)
                await asyncio.sleep(COMEBACK_RETRY_S * attempt)
        else:
            self.counters["comeback_failed"] += 1
            self.gone = True
            return
        self.counters["comebacks"] += 1
        for room, after in cursors.items():
            await self._read_missed(room, after)

    async def _read_missed(self, room: str, after: dict[int, int]) -> None:
        """Read ``room``'s stored messages after ``after`` and count those the new session will
        not have live (:func:`loadgen.history.before_join`). Tries HISTORY_ATTEMPTS times (the
        gateway may be restarting)."""
        target, options = self.ctx.target, self.ctx.client_options
        host = f"[{target.host}]" if target.family == socket.AF_INET6 else target.host
        for attempt in range(1, HISTORY_ATTEMPTS + 1):
            try:
                stored = await read_history(
                    f"https://{host}:{target.port}",
                    room,
                    after,
                    ca_file=options.get("ca_file"),
                    verify=bool(options.get("verify", True)),
                    token=self._token(),
                )
                break
            except _ANY_FAILURE as exc:
                self.counters["history_retries"] += 1
                if attempt == HISTORY_ATTEMPTS:
                    self.counters["history_failed"] += 1
                    self.ctx.recorder.note(
                        f"client {self.index}: history of {room}: {exc!r}", force=True
                    )
                    return
                await asyncio.sleep(HISTORY_RETRY_S * attempt)
        for message in before_join(self._joined[room], stored):
            self.tracker.recovered(room, message.body, message.priority)

    # ---- the run --------------------------------------------------------------------------------

    async def run(self, start_ns: int, end_ns: int) -> None:
        """Publish, hand off and stall on schedule until ``end_ns``; then wait for every
        publish's ack."""
        await asyncio.gather(
            self._publish_loop(start_ns, end_ns),
            self._handoff_loop(start_ns, end_ns),
            self._stall_loop(start_ns, end_ns),
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
            flags = handoff_flags(self.tracker.window_kind(now))
            body = encode_body(Payload(intended, self.index, n, flags), event.size_bytes)
            self.ctx.recorder.publish_lag(now - intended)
            self.counters[f"published:{event.priority}"] += 1
            task = asyncio.get_running_loop().create_task(
                self._publish(room, n, body, event.priority)
            )
            self._publishes.add(task)
            task.add_done_callback(self._publishes.discard)

    def _reliable(self, room: str, priority: str) -> bool:
        return priority == "high" or any(fnmatchcase(room, p) for p in self.ctx.reliable_rooms)

    async def _publish(self, room: str, n: int, body: bytes, priority: str) -> None:
        try:
            client = self._client()
            await client.publish(room, body, priority=Priority[priority.upper()])
        except _ANY_FAILURE as exc:
            if not self._noted_publish_failure:  # the first per client: they come in runs
                self._noted_publish_failure = True
                self.ctx.recorder.note(f"client {self.index}: publish: {exc!r}")
            # Unacked: it may still be sequenced (the SDK re-sends it after a reconnect), but it
            # is not expected by anyone, so a receiver getting it cannot hide a loss elsewhere.
            self.counters["publish_failed"] += 1
        else:
            self.acked[room][PRIORITIES.index(priority)] += 1
            self.counters[f"acked:{priority}"] += 1
            if self._reliable(room, priority):
                self.acked_reliable[room].append(n)
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

    async def _stall_loop(self, start_ns: int, end_ns: int) -> None:
        """A slow consumer's stalls: its relay drops everything for each stall's length."""
        sc = self.ctx.scenario
        events = stall_schedule(client_rng(sc.seed, self.index, "stall"), sc.stalls, sc.duration_s)
        for event in events:
            await _sleep_until(start_ns + int(event.at_s * 1e9))
            relay = self.relay
            if relay is None or time.monotonic_ns() >= end_ns:
                return
            self.counters["stalls"] += 1
            relay.blackhole(True)
            try:
                await asyncio.sleep(event.length_s)
            finally:
                relay.blackhole(False)

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
        if self.client is None:
            raise ConnectionLost("not connected: the client is coming back")
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

    def unreceived(self, expected: Expected) -> list[tuple[str, int, int]]:
        """The acked reliable messages of this client's rooms it has not had yet, as (room,
        publisher, number). The first call lists them; later calls only re-check that list."""
        rooms = self.tracker.rooms
        if self._unreceived is None:
            self._unreceived = [
                (room, publisher, n)
                for room in rooms
                for publisher, numbers in expected.reliable.get(room, {}).items()
                for n in numbers
            ]
            self._reliable_expected = len(self._unreceived)
        self._unreceived = [m for m in self._unreceived if not rooms[m[0]].has(m[1], m[2])]
        return self._unreceived

    def missing(self, expected: Expected) -> int:
        """How many expected messages this client has not had: acked publishes to its rooms by
        count, plus acked reliable ones by identity."""
        counted = sum(
            max(0, want - got)
            for room, tracker in self.tracker.rooms.items()
            for want, got in zip(
                expected.counts.get(room, (0, 0, 0)), tracker.received, strict=True
            )
        )
        return counted + len(self.unreceived(expected))

    def account(self, expected: Expected) -> None:
        """Add this client's loss by priority, its reliable check and its SDK counters to the
        recorder."""
        counters = self.counters
        for room, tracker in self.tracker.rooms.items():
            want_all = expected.counts.get(room, [0, 0, 0])
            for name, want, got in zip(PRIORITIES, want_all, tracker.received, strict=True):
                counters[f"expected:{name}"] += want
                counters[f"received:{name}"] += got
                counters[f"loss:{name}"] += max(0, want - got)
        unreceived = self.unreceived(expected)
        # A client still coming back when the run ends did not stay either (it would read the
        # history next); it is counted apart, so a comeback that never ends shows.
        stayed = not self.gone and not self.coming_back
        counters["reliable_expected"] += self._reliable_expected
        counters["reliable_received"] += self._reliable_expected - len(unreceived)
        counters["reliable_lost" if stayed else "reliable_lost_gone"] += len(unreceived)
        counters["clients_gone"] += self.gone
        counters["clients_coming_back"] += self.coming_back
        if unreceived:
            self._note_lost(unreceived, stayed)
        if self.client is not None:
            self._add_sdk_stats(self.client.stats)

    def _note_lost(self, unreceived: list[tuple[str, int, int]], stayed: bool) -> None:
        """One note per client that misses reliable messages: how many, which, and its story."""
        stats = self.client.stats if self.client is not None else None
        story = (
            f"reconnects {stats.reconnects}, migrations {stats.migrations}, missed "
            f"{stats.missed}, room resets {stats.room_resets}, last error {stats.last_error!r}"
            if stats is not None
            else "no session"
        )
        which = ", ".join(f"#{n} of client {p} in {r}" for r, p, n in unreceived[:LOST_NOTES])
        state = "stayed" if stayed else ("gone" if self.gone else "still coming back")
        self.ctx.recorder.note(
            f"client {self.index} ({state}): {len(unreceived)} reliable messages never arrived "
            f"({which}); its session: {story}",
            force=True,
        )

    def _add_sdk_stats(self, stats: ClientStats) -> None:
        counters = self.counters
        counters["sdk_reconnects"] += stats.reconnects
        counters["sdk_migrations"] += stats.migrations
        counters["shed"] += stats.skipped
        counters["chatter_lost"] += stats.chatter_lost
        counters["missed"] += stats.missed
        counters["sdk_errors"] += stats.errors
        counters["room_resets"] += stats.room_resets


async def _sleep_until(at_ns: int) -> None:
    delay = at_ns - time.monotonic_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
