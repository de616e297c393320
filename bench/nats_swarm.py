"""NATS subscribers and a NATS publisher in one process: :mod:`bench.swarm`'s counterpart for the
peer suite (:mod:`bench.peer`).

It answers the same commands as :mod:`bench.swarm` (so :class:`bench.load.Fleet` and
:func:`bench.load.measure` drive it unchanged), with NATS meanings:

- ``open URL CA ROOM COUNT SAMPLE_EVERY [ROOMS FIRST]``: open nats-py connections to URL
  (``nats://...``; CA is ignored) until COUNT are live, each subscribed to its room's subject
  (subscriber ``i`` of the fleet to room ``i % ROOMS`` of :func:`bench.clientproc.room_names`);
  every SAMPLE_EVERY-th decodes each body's send time and records latency, the rest only count
- ``reset`` / ``snap``: the counters since the last reset (``udp_drops`` always 0: TCP)
- ``publish URL CA ROOM RATE_HZ BODY_BYTES [ROOMS]``: a fresh connection subscribes to every
  room's subject (a chat publisher is a member of its rooms: it gets its own messages back, as on
  the gateway) and publishes RATE_HZ into each, message ``i`` to room ``i % ROOMS``, each body
  the loadgen payload with the time it was due
- ``stop``: stop publishing, flush (a PING/PONG round trip: the server has read everything),
  close -> what it sent, ``acked`` = sent once the flush came back, its worst lag
- ``close``: close every connection

One connection per subscriber, as each Skein subscriber has its own QUIC connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.clientproc import (
    Paced,
    Tally,
    body,
    open_missing,
    record_latency,
    room_names,
    serve_process,
)

__all__ = ["NatsSwarm", "main"]

OPEN_PARALLEL = 32
OPEN_TIMEOUT_S = 30
PENDING_BYTES = 64 << 20  # the client's outgoing buffer: never the limit at these rates
FLUSH_TIMEOUT_S = 10


class Subscriber:
    """One connection with one subscription, counting into the process's current tally."""

    def __init__(self, owner: NatsSwarm, room: int, full: bool) -> None:
        self.owner = owner
        self.room = room
        self.full = full
        self.ended = False
        self.nc: Client | None = None

    async def start(self, url: str, subject: str) -> None:
        """Connect and subscribe; returns once the server has the subscription."""
        self.nc = await nats.connect(
            url,
            allow_reconnect=False,
            connect_timeout=OPEN_TIMEOUT_S,
            pending_size=PENDING_BYTES,
            disconnected_cb=self._gone,
            error_cb=self._error,
        )
        await self.nc.subscribe(subject, cb=self._full if self.full else self._count)
        await self.nc.flush(OPEN_TIMEOUT_S)

    async def _count(self, msg: Msg) -> None:
        self.owner.tally.messages += 1
        self.owner.tally.batches += 1

    async def _full(self, msg: Msg) -> None:
        tally = self.owner.tally
        tally.messages += 1
        tally.batches += 1
        record_latency(tally, msg.data, time.monotonic_ns())

    async def _gone(self) -> None:
        if not self.ended:
            self.ended = True
            self.owner.tally.lost += 1

    async def _error(self, exc: Exception) -> None:
        self.owner.tally.errors += 1

    async def end(self) -> None:
        self.ended = True
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()


class NatsPublisher:
    """A connection that is a member of every room and publishes into them on a schedule."""

    def __init__(self, nc: Client, subjects: list[str], rate_per_s: float, body_bytes: int) -> None:
        self.nc = nc

        async def emit(due: list[tuple[int, int]]) -> None:
            for index, intended_ns in due:
                subject = subjects[index % len(subjects)]
                await nc.publish(subject, body(index, intended_ns, body_bytes))

        self.schedule = Paced(rate_per_s * len(subjects), emit)


class NatsSwarm:
    """The process's subscribers, their one shared tally, and at most one publisher."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.subscribers: list[Subscriber] = []
        self.opened = 0  # subscribers ever opened: picks which ones record latency
        self.publisher: NatsPublisher | None = None

    async def open(
        self,
        url: str,
        ca: str,
        room: str,
        count: str,
        every: str,
        rooms: str = "1",
        first: str = "0",
    ) -> dict[str, Any]:
        """Open subscribers until ``count`` are live (a few rounds of retries)."""
        for gone in [s for s in self.subscribers if s.ended]:
            await gone.end()
        self.subscribers = [s for s in self.subscribers if not s.ended]
        names = room_names(room, int(rooms))
        gate = asyncio.Semaphore(OPEN_PARALLEL)

        async def one(index: int, room_index: int) -> Subscriber:
            sub = Subscriber(self, room_index, index % int(every) == 0)
            async with gate:
                try:
                    await sub.start(url, names[room_index])
                except BaseException:
                    await sub.end()
                    raise
            return sub

        self.opened, reply = await open_missing(
            self.subscribers, _room_of, self.opened, int(first), int(count), len(names), one
        )
        return reply

    async def reset(self) -> dict[str, Any]:
        self.tally = Tally()
        return {}

    async def snap(self) -> dict[str, Any]:
        return {**self.tally.as_json(), "udp_drops": 0}

    async def close(self) -> dict[str, Any]:
        closed, subscribers, self.subscribers = len(self.subscribers), self.subscribers, []
        await asyncio.gather(*(s.end() for s in subscribers))
        return {"closed": closed}

    async def publish(
        self, url: str, ca: str, room: str, rate_per_s: str, body_bytes: str, rooms: str = "1"
    ) -> dict[str, Any]:
        """Connect a publisher, subscribe it to every room, start its schedule."""
        if self.publisher is not None:
            raise RuntimeError("already publishing: stop first")
        subjects = room_names(room, int(rooms))
        nc = await nats.connect(
            url, allow_reconnect=False, connect_timeout=OPEN_TIMEOUT_S, pending_size=PENDING_BYTES
        )
        try:
            sink = _Echo()
            for subject in subjects:
                await nc.subscribe(subject, cb=sink.echo)
            await nc.flush(OPEN_TIMEOUT_S)
            self.publisher = NatsPublisher(nc, subjects, float(rate_per_s), int(body_bytes))
        except BaseException:
            await nc.close()
            raise
        return {"started": True}

    async def stop(self) -> dict[str, Any]:
        """Stop publishing, flush, close the publisher's connection."""
        publisher, self.publisher = self.publisher, None
        if publisher is None:
            raise RuntimeError("not publishing")
        await publisher.schedule.stop()
        sent = publisher.schedule.sent
        try:
            await publisher.nc.flush(FLUSH_TIMEOUT_S)
            acked = sent
        except Exception:
            acked = 0
        with contextlib.suppress(Exception):
            await publisher.nc.close()
        return {
            "sent": sent,
            "acked": acked,
            "errors": 0,
            "lag_ms_max": publisher.schedule.worst_lag_ns / 1e6,
        }


class _Echo:
    """Where the publisher's own messages go: counted, nothing else."""

    def __init__(self) -> None:
        self.count = 0

    async def echo(self, msg: Msg) -> None:
        self.count += 1


def _room_of(subscriber: Subscriber) -> int:
    return subscriber.room


async def main() -> None:
    await serve_process(NatsSwarm())


if __name__ == "__main__":
    asyncio.run(main())
