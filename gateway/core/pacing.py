"""Paced output: one send budget per QUIC connection, and what a session asked for (a join's
replay, a fetch) sent only as fast as that connection reads.

Every byte the hub sends a session lands in its QUIC connection's send buffer until the client
acknowledges it. The server measures that backlog for the whole connection (every stream of it:
each session's frame stream, HTTP/3 responses) and reports it (:meth:`Hub.report_backlog`); a
:class:`Link` keeps the last measure plus what the hub has released since. Fan-out is governed by
it as before (shedding, SLOW_CONSUMER). What a session *asks* for is governed here:

- A join's replay becomes :class:`~gateway.core.session.Job` ranges (shard, seqs), read from the
  shard logs (or the store) a piece at a time: a piece goes out only while the connection's
  backlog is under half the budget, and each piece is at most half the budget (one message at
  least). So a replay never makes a connection congested by itself, and a client that reads
  nothing holds about one budget however big the room's log. The server reports the backlog of
  every connection with jobs each tick (:meth:`Pacer.watched`), and the next pieces follow.
- A part that only the store holds is read ``Link.store_seqs`` seqs at a time, one read in flight
  per connection; the read size is learned from the last answer's bytes per seq, so an answer is
  about half a budget.
- A fetch is answered only while the connection is under half its budget (and, from the store,
  with no other store read in flight); otherwise it is refused RATE_LIMITED (non-fatal: the SDK
  asks again a second later). An in-memory answer is cut at half the budget (the client fetches
  again from after it, as after any short answer).
- A session whose jobs could not move for ``slow_consumer_s`` (the connection never got under
  half its budget) is a slow consumer (:meth:`Pacer.stalled`).

Sans-IO, like the hub that owns it: Sends and StoreReads go to the hub's outputs (``emit``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping

from gateway.core.batching import MAX_BATCH_BYTES
from gateway.core.config import CoreConfig
from gateway.core.outputs import Output, Send, StoreRead
from gateway.core.room import Room
from gateway.core.session import Job, Session
from gateway.core.shard import Shard
from gateway.core.stats import HubStats
from gateway.errors import ErrorCode, GatewayError, Rejected
from gateway.wire import frames as f
from gateway.wire.codec import deliver_frame, encode_deliver, encode_server_frame
from gateway.wire.framing import delimit

__all__ = ["Link", "Pacer"]

# The first store read of a connection assumes messages of this many bytes (then it learns).
_ASSUMED_STORED_BYTES = 2048


class Link:
    """One QUIC connection as the hub sees it: the bytes waiting on it (the server's last measure
    plus what the hub has released since), its sessions, and its store read in flight."""

    __slots__ = ("backlog", "members", "read_seqs", "reading", "store_seqs")

    def __init__(self, store_seqs: int) -> None:
        self.backlog = 0
        self.members: dict[int, Session] = {}
        self.reading: int | None = None  # the session whose StoreRead is in flight
        self.read_seqs = 0  # how many seqs it asked for
        self.store_seqs = store_seqs  # how many the next store read asks for


class Pacer:
    """The hub's paced output. See the module docstring."""

    def __init__(
        self,
        config: CoreConfig,
        rooms: Mapping[str, Room],
        emit: Callable[[Output], None],
        stats: HubStats,
        *,
        durable: bool,
    ) -> None:
        self.config = config
        self.durable = durable
        self._rooms = rooms
        self._emit = emit
        self._stats = stats
        self.half = max(1, config.send_budget_bytes // 2)
        self.piece_bytes = max(1, min(MAX_BATCH_BYTES, self.half))
        self._first_store_seqs = max(
            1, min(config.max_fetch_messages, self.half // _ASSUMED_STORED_BYTES)
        )
        self.links: dict[Hashable, Link] = {}
        self._reads: dict[int, Link] = {}  # conn_id -> the link whose store read it made
        self._waiting: dict[int, Session] = {}  # sessions with jobs

    # ---- sessions and links ---------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        link = self.links.get(session.connection)
        if link is None:
            link = self.links[session.connection] = Link(self._first_store_seqs)
        link.members[session.conn_id] = session

    def detach(self, session: Session) -> None:
        """The session is gone: its jobs go, and its link with its last session (once no store
        read of it is in flight)."""
        session.jobs.clear()
        self._waiting.pop(session.conn_id, None)
        link = self.links.get(session.connection)
        if link is None:
            return
        link.members.pop(session.conn_id, None)
        if not link.members and link.reading is None:
            del self.links[session.connection]

    def link(self, session: Session) -> Link:
        return self.links[session.connection]

    def measured(self, session: Session, queued_bytes: int) -> None:
        """The server measured the session's connection (every stream of it)."""
        link = self.links.get(session.connection)
        if link is not None:
            link.backlog = queued_bytes

    @property
    def waiting(self) -> bool:
        """Whether any session has jobs (the hub watches their connections every tick)."""
        return bool(self._waiting)

    def watched(self) -> list[int]:
        """Sessions with jobs: the server reports their connections' backlog every tick."""
        return list(self._waiting)

    # ---- replays --------------------------------------------------------------------------------

    def replay(
        self,
        session: Session,
        room: str,
        older: Iterable[tuple[int, int, int]],
        held: Iterable[tuple[int, int, int]],
        now: float,
    ) -> None:
        """Queue a join's replay (the store's part first, as before), replacing what was still
        queued for the room, and send what the connection's budget allows now."""
        self.forget_room(session, room)
        jobs = session.jobs
        jobs.extend(Job(room, shard, lo, hi, store=True) for shard, lo, hi in older)
        jobs.extend(Job(room, shard, lo, hi) for shard, lo, hi in held)
        if jobs:
            self._waiting[session.conn_id] = session
            self.drain(session, now)

    def forget_room(self, session: Session, room: str) -> None:
        """The session left (or re-joined) the room: what was queued for it goes."""
        if any(job.room == room for job in session.jobs):
            kept = [job for job in session.jobs if job.room != room]
            session.jobs.clear()
            session.jobs.extend(kept)
            if not kept:
                self._waiting.pop(session.conn_id, None)
                session.stalled_since = None

    def drain(self, session: Session, now: float) -> None:
        """Send the session's jobs while its connection is under half its budget."""
        link = self.links.get(session.connection)
        if link is None:
            return
        jobs = session.jobs
        moved = False
        while jobs:
            job = jobs[0]
            if job.store and link.reading is not None:
                session.stalled_since = None  # waiting for the store, not for the client
                return
            if link.backlog >= self.half:
                break
            moved = True
            if job.store:
                job.lo = self._read(session, link, job.room, job.shard, job.lo, job.hi, 0) + 1
            else:
                self._piece(session, link, job)
            if job.lo > job.hi:
                jobs.popleft()
        if not jobs:
            self._waiting.pop(session.conn_id, None)
            session.stalled_since = None
        elif moved or session.stalled_since is None:
            session.stalled_since = now

    def drain_all(self, now: float) -> None:
        for session in list(self._waiting.values()):
            self.drain(session, now)

    def stalled(self, now: float) -> list[Session]:
        """Sessions whose jobs have not moved for ``slow_consumer_s``: their connections stayed
        at or over half the budget all that time."""
        limit = self.config.slow_consumer_s
        return [
            s
            for s in self._waiting.values()
            if s.stalled_since is not None and now - s.stalled_since >= limit
        ]

    def _piece(self, session: Session, link: Link, job: Job) -> None:
        """Send the next piece of an in-memory job (or move on, if its room or shard is gone)."""
        room = self._rooms.get(job.room)
        try:
            if room is None:
                raise Rejected("gone", code=ErrorCode.OUT_OF_RANGE)
            shard = room.shard(job.shard)
        except GatewayError:  # the shard's epoch is no longer retained: nothing to replay
            job.lo = job.hi + 1
            return
        first = shard.first_seq
        if job.lo < first:  # fell off the log while it waited
            if self.durable:
                session.jobs.appendleft(
                    Job(job.room, job.shard, job.lo, min(job.hi, first - 1), store=True)
                )
            job.lo = first  # without a store the client finds the gap and is told it is lost
            return
        entries = shard.take(job.lo, job.hi, self.piece_bytes)
        if not entries:
            job.lo = job.hi + 1
            return
        data = delimit(deliver_frame(encode_deliver(job.room, [e.encoded for e in entries])))
        self._emit(Send((session.conn_id,), data))
        link.backlog += len(data)
        self._stats.replayed += len(entries)
        job.lo = entries[-1].message.seq + 1

    # ---- fetches and store reads ----------------------------------------------------------------

    def fetch(self, session: Session, room: str, shard: Shard, frame: f.Fetch) -> None:
        """Answer a Fetch the hub has checked (joined, rate, range): from the store for what the
        log no longer holds (a durable hub), then from the log; or refuse it RATE_LIMITED while
        the connection has no room (:meth:`admit_fetch`)."""
        from_store = self.durable and frame.from_seq < shard.first_seq
        self.admit_fetch(session, frame.request_id, store=from_store)
        if from_store:
            low_to = min(
                frame.to_seq,
                shard.first_seq - 1,
                frame.from_seq + self.config.max_fetch_messages - 1,
            )
            asked = self.store_read(
                session, room, shard.id, frame.from_seq, low_to, frame.request_id
            )
            self._stats.fetches += 1
            if (
                asked < shard.first_seq - 1  # cut short: the client fetches on from there
                or frame.to_seq < shard.first_seq
                or shard.first_seq > shard.last_seq
            ):
                return
        start = max(frame.from_seq, shard.first_seq)
        to_seq = min(frame.to_seq, start + self.config.max_fetch_messages - 1)
        entries = shard.take(start, to_seq, self.piece_bytes)
        self._stats.fetches += 1
        first = shard.first_seq if frame.from_seq < shard.first_seq and not self.durable else 0
        messages = tuple(e.message for e in entries)
        data = delimit(
            encode_server_frame(f.Fetched(frame.request_id, room, shard.id, messages, first))
        )
        self._emit(Send((session.conn_id,), data))
        last = entries[-1].message.seq if entries else start - 1
        self.fetched(session, len(data), room, shard.id, start, last)

    def admit_fetch(self, session: Session, request_id: int, *, store: bool) -> None:
        """Refuse (RATE_LIMITED) a fetch the connection has no room for now."""
        link = self.links[session.connection]
        if link.backlog >= self.half:
            raise Rejected(
                f"{link.backlog} bytes wait unread on this connection (send budget "
                f"{self.config.send_budget_bytes}): fetch again once they are read",
                code=ErrorCode.RATE_LIMITED,
                request_id=request_id,
            )
        if store and link.reading is not None:
            raise Rejected(
                "another store read for this connection is in flight: fetch again shortly",
                code=ErrorCode.RATE_LIMITED,
                request_id=request_id,
            )

    def fetched(
        self, session: Session, nbytes: int, room: str, shard: int, lo: int, hi: int
    ) -> None:
        """An in-memory fetch answer of ``nbytes`` covering ``lo..hi`` went out: count it, and
        skip the part of a queued replay it already covers."""
        self.links[session.connection].backlog += nbytes
        for job in session.jobs:
            if job.room == room and job.shard == shard and not job.store and lo <= job.lo <= hi:
                job.lo = hi + 1
        while session.jobs and session.jobs[0].lo > session.jobs[0].hi:
            session.jobs.popleft()

    def store_read(
        self, session: Session, room: str, shard: int, lo: int, hi: int, request_id: int
    ) -> int:
        """Ask the store for ``lo..hi`` (cut to the link's read size) on the session's behalf;
        returns the last seq asked for. Admit it first (:meth:`admit_fetch`)."""
        return self._read(session, self.links[session.connection], room, shard, lo, hi, request_id)

    def _read(
        self, session: Session, link: Link, room: str, shard: int, lo: int, hi: int, request_id: int
    ) -> int:
        hi = min(hi, lo + link.store_seqs - 1)
        self._emit(StoreRead(session.conn_id, room, shard, lo, hi, request_id))
        link.reading = session.conn_id
        link.read_seqs = hi - lo + 1
        self._reads[session.conn_id] = link
        return hi

    def store_read_done(self, conn_id: int, nbytes: int) -> Link | None:
        """The server sent (or dropped) the answer to ``conn_id``'s store read, ``nbytes`` long:
        the link may read again, and the next read's size follows from this one's bytes per seq.
        Returns the link (None if nothing was in flight for it)."""
        link = self._reads.pop(conn_id, None)
        if link is None or link.reading != conn_id:
            return None
        link.reading = None
        if nbytes > 0 and link.read_seqs > 0:
            per_seq = max(1.0, nbytes / link.read_seqs)
            link.store_seqs = max(1, min(self.config.max_fetch_messages, int(self.half / per_seq)))
        if not link.members:
            for key, value in list(self.links.items()):
                if value is link:
                    del self.links[key]
        return link

    def drain_link(self, link: Link, now: float) -> None:
        for session in list(link.members.values()):
            if session.conn_id in self._waiting:
                self.drain(session, now)
