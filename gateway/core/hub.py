"""The sans-IO gateway: sessions and rooms in, framed bytes out.

The server layer feeds it what arrives (``connect``, ``receive_data``, ``disconnect``) and the time,
re-arms one timer from :meth:`Hub.get_timer`, calls :meth:`Hub.handle_timer` when it fires, and after
every call sends what :meth:`Hub.take_outputs` returns. The hub never reads a clock, sleeps or
touches a socket.

Fan-out: a publish is sequenced and acked at once. A room that sent nothing during the last
``tick_ms`` sends its new message at once (at the next :meth:`Hub.handle_timer`, which the server
runs at the end of the event loop's turn, so what arrived in the same turn shares the batch); a
room that did waits until ``tick_ms`` after its last batch: Nagle's rule, not a fixed delay, so
batching starts only while messages come faster than the tick. Each batch becomes one Deliver
frame, encoded once (and lz4-compressed once for the clients that asked), and the same bytes go to
every subscriber, in an order that rotates from batch to batch so no subscriber is always last.

Backpressure: one send budget per QUIC connection, measured by the server over all its streams
(:meth:`Hub.report_backlog`); fan-out sheds over it, and join replays and fetch answers go out
only as the connection reads (:mod:`gateway.core.pacing`).

Idle rooms (no subscriber, nothing pending) are reclaimed after ``room_idle_s``, a durable hub
keeping their state in the store and taking it up again on the next Join
(:mod:`gateway.core.reclaim`).

Limits: each session's Join, Publish and Fetch rates and its violations are charged to its QUIC
connection (the ``connection`` key given to :meth:`Hub.connect`) and to its principal, shared with
every other session of either (:mod:`gateway.core.principals`). Nothing a client sends raises past
:meth:`Hub.receive_data` or :meth:`Hub.stream_ended`: errors made on purpose become Error frames
(``Hub._fail``), anything else a fatal INTERNAL one (:mod:`gateway.core.boundary`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from gateway.core.admission import Admission
from gateway.core.auth import Authenticator
from gateway.core.backpressure import Backpressure
from gateway.core.boundary import Unexpected
from gateway.core.config import CoreConfig
from gateway.core.fanout import PRIORITY_NAMES, fan_out_room
from gateway.core.outputs import (
    Close,
    LoadRoom,
    Output,
    Persist,
    RoomChanged,
    RoomInfo,
    RoomReclaimed,
    Send,
)
from gateway.core.pacing import Pacer
from gateway.core.room import Room, RoomMode
from gateway.core.rooms import Rooms
from gateway.core.schedule import Schedule
from gateway.core.session import Session, State
from gateway.core.shard import Entry
from gateway.core.stats import HubStats
from gateway.errors import ErrorCode, GatewayError, Rejected, RemoteProtocolError
from gateway.wire import frames as f
from gateway.wire.codec import decode_client_frame, encode_server_frame
from gateway.wire.framing import delimit

__all__ = ["Hub"]

_VIOLATIONS = frozenset({ErrorCode.FORBIDDEN, ErrorCode.UNAUTHENTICATED})


class Hub:
    """Sessions, rooms and fan-out for one gateway process. See the module docstring."""

    def __init__(
        self,
        config: CoreConfig | None = None,
        *,
        durable: bool = False,
        authenticator: Authenticator | None = None,
    ) -> None:
        """``durable``: a store keeps rooms and reliable messages across restarts; the hub then
        emits RoomChanged and serves what its memory no longer holds through StoreRead.
        ``authenticator`` checks Hello tokens; without one every client may do anything, under
        the name it gives (insecure development mode).

        Token expiry is wall-clock time: set ``wall_offset_s`` to (wall clock - the ``now``
        clock) when ``now`` is monotonic."""
        self.config = config or CoreConfig()
        self.durable = durable
        self.authenticator = authenticator
        self.wall_offset_s = 0.0
        self._tick_s = self.config.tick_ms / 1000.0
        self.stats = HubStats()
        self._sessions: dict[int, Session] = {}
        self._rooms = Rooms(self.config, durable=self.durable, stats=self.stats)
        self._outputs: list[Output] = []
        # The timer's sources: rooms with pending messages (when each is due for fan-out), the
        # sharder's next look at each multi-shard room, when each session's token expires.
        self._due: Schedule[str] = Schedule()
        self._checks: Schedule[str] = Schedule()
        self._expiries: Schedule[int] = Schedule()
        # When each room's pending messages arrived, oldest first: one per entry Room.publish
        # appends to the room's pending list (as bounded as that), dropped as fan-out takes them.
        self._arrivals: dict[str, deque[float]] = {}
        self._backpressure = Backpressure(self.config)
        # Reliable messages waiting for the store: (room, shard, seq) -> who to ack.
        # Every publish waiting on it (the original and its retries, perhaps from a new session).
        self._unstored: dict[tuple[str, int, int], list[tuple[int, int, str]]] = {}
        self._admission = Admission(self.config, authenticator)
        self._unexpected = Unexpected()
        # One send budget per QUIC connection; replays and fetches paced by it (core/pacing.py).
        self._pacer = Pacer(
            self.config, self._rooms.held, self._emit, self.stats, durable=self.durable
        )
        self._handlers: dict[type[f.ClientFrame], Callable[[Session, Any, float], None]] = {
            f.Hello: self._on_hello,
            f.Join: self._on_join,
            f.Leave: self._on_leave,
            f.Publish: self._on_publish,
            f.Fetch: self._on_fetch,
            f.Ping: self._on_ping,
        }

    # ---- inputs ---------------------------------------------------------------------------------

    def connect(self, conn_id: int, now: float, *, connection: Hashable = None) -> None:
        """A client opened its session stream. ``conn_id`` must be new.

        ``connection`` names the QUIC connection carrying the session (any hashable key, unique
        for the process's lifetime): sessions given the same key share their connection's rate
        limits and violation count. None (the default) gives the session a connection of its
        own. Call :meth:`connection_closed` when that connection ends."""
        if conn_id in self._sessions:
            raise ValueError(f"connection {conn_id} already has a session")
        session_id = f"{self.config.node_id}-{conn_id:x}"
        key = ("session", session_id) if connection is None else connection
        session = Session(
            conn_id,
            session_id,
            max_frame_bytes=self.config.max_frame_bytes,
            connection=key,
            allowances=(self._admission.connection(key),),
        )
        self._sessions[conn_id] = session
        self._pacer.attach(session)
        self.stats.sessions_opened += 1

    def connection_closed(self, connection: Hashable) -> None:
        """The QUIC connection given to :meth:`connect` as ``connection`` is gone for good (its
        sessions were ended first): forget its shared limits."""
        self._admission.forget_connection(connection)

    def receive_data(self, conn_id: int, data: bytes, now: float) -> None:
        """Bytes arrived on a session's stream. Errors become Error frames (and maybe a Close);
        nothing raises (the one error boundary: see the module docstring)."""
        session = self._sessions.get(conn_id)
        if session is None or session.state is State.CLOSED:
            return
        try:
            self._receive(session, data, now)
        except Exception as exc:  # a bug, not the client's doing: it must not reach the server
            self._fail_unexpected(session, exc, "handling a frame")

    def _receive(self, session: Session, data: bytes, now: float) -> None:
        try:
            payloads = session.decoder.feed(data)
        except GatewayError as exc:
            self._fail(session, exc)
            return
        self.stats.frames_in += len(payloads)
        for payload in payloads:
            try:
                frame = decode_client_frame(payload)
                session.advance(frame)
                self._handlers[type(frame)](session, frame, now)
            except GatewayError as exc:
                self._fail(session, exc)
            if self._sessions.get(session.conn_id) is not session:  # closed by the error
                return
        try:
            session.decoder.check()
        except GatewayError as exc:
            self._fail(session, exc)

    def _fail_unexpected(self, session: Session, exc: Exception, doing: str) -> None:
        """The boundary's last resort: a fatal INTERNAL error to the session (logged once per
        cause). If even that fails, the session is dropped with a Close and no Error."""
        error = self._unexpected.error(exc, doing=doing, session_id=session.session_id)
        if self._sessions.get(session.conn_id) is not session:
            return  # it failed after the session was already closed
        try:
            self._fail(session, error)
        except Exception:
            self._outputs.append(Close(session.conn_id, error.code, error.message))
            self._sessions.pop(session.conn_id, None)

    def stream_ended(self, conn_id: int, now: float) -> None:
        """The client finished its stream. Ending mid-frame is a protocol error."""
        session = self._sessions.get(conn_id)
        if session is not None and not session.decoder.at_frame_boundary():
            self._fail(session, RemoteProtocolError("stream ended inside a frame", fatal=True))
        self.disconnect(conn_id, now)

    def disconnect(self, conn_id: int, now: float) -> None:
        """The connection is gone: leave every room. Unknown ids are ignored."""
        session = self._sessions.pop(conn_id, None)
        if session is None:
            return
        self.stats.sessions_closed += 1
        session.state = State.CLOSED
        self._backpressure.forget(conn_id)
        self._expiries.discard(conn_id)
        self._pacer.detach(session)
        self._admission.release(session, now)
        for name in session.rooms:
            room = self._rooms.get(name)
            if room is not None:
                room.subscribers.discard(conn_id)
                room.active_at = max(room.active_at, now)
        session.rooms.clear()

    # ---- timers and outputs ---------------------------------------------------------------------

    def report_backlog(self, conn_id: int, queued_bytes: int, now: float) -> bool:
        """The server's measure of what waits on the session's QUIC connection (queued or
        unacknowledged, on every stream of it: one budget per connection, shared by its
        sessions and its HTTP/3 responses).

        Call it after writing to a connection when it is at or over ``send_budget_bytes``, and
        for every session in :meth:`watched` before :meth:`handle_timer`. Over
        ``max_backlog_bytes`` the session is closed at once (SLOW_CONSUMER): then it returns
        True, and nothing more should be written to it.
        """
        session = self._sessions.get(conn_id)
        if session is None:
            return False
        session.backlog = queued_bytes
        self._pacer.measured(session, queued_bytes)
        if self._backpressure.measured(conn_id, queued_bytes, now):
            self._fail(
                session,
                Rejected(
                    f"{queued_bytes} bytes are waiting for this connection (limit "
                    f"{self.config.max_backlog_bytes}): it reads too slowly",
                    code=ErrorCode.SLOW_CONSUMER,
                    fatal=True,
                ),
            )
            return True
        return False

    def store_read_done(self, conn_id: int, nbytes: int, queued_bytes: int, now: float) -> None:
        """The server wrote the answer to the session's StoreRead (``nbytes`` long; 0 if it
        failed or the session is gone) and then measured its connection (``queued_bytes``).
        Call it once per StoreRead, whatever became of it: the connection's next store read
        waits for it."""
        link = self._pacer.store_read_done(conn_id, nbytes)
        if conn_id in self._sessions:  # else nothing was sent or measured
            self.report_backlog(conn_id, queued_bytes, now)
        if link is not None:
            self._pacer.drain_link(link, now)
            if self._pacer.waiting:
                self._backpressure.watch(now)

    def congested(self) -> list[int]:
        """Connections over their send budget."""
        return list(self._backpressure.congested)

    def watched(self) -> list[int]:
        """Sessions whose connection's backlog the server must report before each
        :meth:`handle_timer`: those over their send budget, and those with a replay still to
        send (it goes on as the connection reads)."""
        congested = self._backpressure.congested
        if not self._pacer.waiting:
            return list(congested)
        return list(dict.fromkeys([*congested, *self._pacer.watched()]))

    def _emit(self, output: Output) -> None:
        self._outputs.append(output)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run, or None when nothing is waiting."""
        times = [
            self._due.next_at(),
            self._checks.next_at(),
            self._expiries.next_at(),
            self._backpressure.watch_at,  # congested connections: a look every tick
            self._rooms.reclaim.next_due(),
        ]
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Fan out due batches, drop slow consumers, let the sharder re-shard rooms."""
        limit = self.config.slow_consumer_s
        for conn_id in self._backpressure.slow(now):
            session = self._sessions.get(conn_id)
            if session is not None:
                self._fail(
                    session,
                    Rejected(
                        f"over its send budget for {limit:g} s: disconnected as a slow consumer",
                        code=ErrorCode.SLOW_CONSUMER,
                        fatal=True,
                    ),
                )
        self._close_expired(now)
        pacer = self._pacer
        if pacer.waiting:
            pacer.drain_all(now)  # the server has just measured their connections
            for session in pacer.stalled(now):
                self._fail(
                    session,
                    Rejected(
                        f"what it asked for (a replay) has waited unread for {limit:g} s: "
                        "disconnected as a slow consumer",
                        code=ErrorCode.SLOW_CONSUMER,
                        fatal=True,
                    ),
                )
        self._backpressure.looked(now, others=bool(pacer.waiting))
        self._flush_rooms(self._due.due(now), now)
        for name in self._checks.due(now):  # taken first: a check re-armed now waits its turn
            room = self._rooms.get(name)
            if room is not None:
                self._maybe_reshard(room, now)
        self._reclaim_idle(now)

    def _reclaim_idle(self, now: float) -> None:
        """Drop the rooms idle for ``room_idle_s``; a durable hub keeps their names (dormant) and
        asks the store to record their marks."""
        for room in self._rooms.reclaim_idle(now):
            self._checks.discard(room.name)
            if self.durable:
                self._outputs.append(RoomReclaimed(room.name, room.marks()))

    def _close_expired(self, now: float) -> None:
        """Close every session whose token has expired: a grant ends when its token does."""
        for conn_id in self._expiries.due(now):
            session = self._sessions.get(conn_id)
            if session is not None:
                self._fail(
                    session,
                    Rejected(
                        "your token has expired: reconnect with a fresh one",
                        code=ErrorCode.UNAUTHENTICATED,
                        fatal=True,
                    ),
                    violation=False,  # a grant running out is nobody's misbehaviour
                )

    def take_outputs(self) -> list[Output]:
        """Everything to send since the last call, in order. The caller must send all of it."""
        outputs, self._outputs = self._outputs, []
        return outputs

    def flush(self, now: float) -> None:
        """Fan out every room's pending messages now, due or not."""
        self._flush_rooms(self._due.pop_all(), now)

    def _flush_rooms(self, names: list[str], now: float) -> None:
        for name in names:
            room = self._rooms.get(name)
            if room is not None:
                self._fan_out(room, now)
                self._maybe_reshard(room, now)

    # ---- introspection --------------------------------------------------------------------------

    def room_names(self, *, mode: str | None = None) -> list[str]:
        """Every room's name, sorted; only those in ``mode`` (``"live"``, ``"group"``) if given.
        Rooms held in memory only: a reclaimed room is not among them until it is joined again."""
        return self._rooms.names(mode)

    def room_info(self, name: str, now: float) -> RoomInfo | None:
        return self._rooms.info(name, now)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def send_queue_bytes(self) -> int:
        """Bytes waiting on every connection with a session: as last reported to
        report_backlog, plus the replay and fetch answers released since."""
        return sum(link.backlog for link in self._pacer.links.values())

    @property
    def send_queue_max_bytes(self) -> int:
        """The largest one connection's backlog, likewise (0 with no sessions)."""
        return max((link.backlog for link in self._pacer.links.values()), default=0)

    # ---- frame handlers -------------------------------------------------------------------------

    def _on_hello(self, session: Session, frame: f.Hello, now: float) -> None:
        welcome = self._admission.hello(session, frame, now + self.wall_offset_s)
        expires_at = session.principal.expires_at if session.principal is not None else None
        if expires_at is not None:  # wall clock -> the ``now`` clock
            self._expiries.set(session.conn_id, expires_at - self.wall_offset_s)
        self._send_frame(session, welcome)

    def _room_for_join(self, session: Session, frame: f.Join, now: float) -> Room | None:
        """The room a Join names: held, else made (or, dormant, taken up from the store: None,
        the Join waits for :meth:`room_loaded`). Bringing a room into memory counts against
        ``max_rooms`` and the principal's room-creation rate."""
        name, request_id = frame.room, frame.request_id
        room = self._rooms.get(name)
        if room is not None:
            return room
        reclaim = self._rooms.reclaim
        if reclaim.wait(name, session.conn_id, frame):
            return None
        if len(self._rooms) + len(reclaim.loading) >= self.config.max_rooms:
            raise Rejected(
                "the gateway has too many rooms",
                code=ErrorCode.TOO_MANY_ROOMS,
                request_id=request_id,
            )
        self._admission.create(session, request_id, now)
        if name in reclaim.dormant:
            reclaim.start_load(name, session.conn_id, frame)
            self._outputs.append(LoadRoom(name))
            return None
        return self._make_room(name, now)

    def _make_room(self, name: str, now: float) -> Room:
        """A new room (a new incarnation), held and recorded."""
        room = self._rooms.make(name, now)
        self._room_changed(room, created=True)
        return room

    def _on_join(self, session: Session, frame: f.Join, now: float) -> None:
        self._admission.join(session, frame, now)
        room = self._room_for_join(session, frame, now)
        if room is not None:
            self._join(session, room, frame, now)

    def _join(self, session: Session, room: Room, frame: f.Join, now: float) -> None:
        """Subscribe the session: Joined, then the replay its cursor asks for."""
        held: list[tuple[int, int, int]] = []
        missed = 0
        older: list[tuple[int, int, int]] = []
        if frame.cursor is not None:
            held, older = room.replay_ranges(frame.cursor)
            if not self.durable:
                missed = sum(to - lo + 1 for _, lo, to in older)
                older = []
            self.stats.resumes += 1
        room.subscribers.add(session.conn_id)
        session.rooms.add(frame.room)
        joined = f.Joined(
            frame.request_id, room.name, room.shard_maps, missed, room.frontier(), room.incarnation
        )
        self._send_frame(session, joined)
        # The replay (the store's part first: the client orders them anyway) goes out in pieces
        # as the connection reads, within its send budget.
        self._pacer.replay(session, room.name, older, held, now)
        if self._pacer.waiting:
            self._backpressure.watch(now)

    def _on_leave(self, session: Session, frame: f.Leave, now: float) -> None:
        session.rooms.discard(frame.room)
        self._pacer.forget_room(session, frame.room)
        room = self._rooms.get(frame.room)
        if room is not None:
            room.subscribers.discard(session.conn_id)
            room.active_at = max(room.active_at, now)
        self._rooms.reclaim.cancel(frame.room, session.conn_id)
        self._send_frame(session, f.Left(frame.request_id, frame.room))

    def _joined_room(self, session: Session, name: str, request_id: int) -> Room:
        room = self._rooms.get(name) if name in session.rooms else None
        if room is None:
            raise Rejected(
                f"join room {name!r} first", code=ErrorCode.NOT_JOINED, request_id=request_id
            )
        return room

    def _on_publish(self, session: Session, frame: f.Publish, now: float) -> None:
        if len(frame.body) > self.config.max_body_bytes:
            raise Rejected(
                f"body of {len(frame.body)} bytes exceeds {self.config.max_body_bytes}",
                code=ErrorCode.BODY_TOO_LARGE,
                request_id=frame.request_id,
            )
        room = self._joined_room(session, frame.room, frame.request_id)
        self._admission.publish(session, room, frame, now, self.stats)
        reliable = frame.priority is f.Priority.HIGH or room.mode is RoomMode.GROUP
        try:
            published = room.publish(frame, session.user, durable=not reliable)
        except GatewayError as exc:
            exc.request_id = frame.request_id
            raise
        if published.duplicate:
            self.stats.duplicates += 1
            key = (room.name, published.shard, published.seq)
            waiting = self._unstored.get(key)
            if waiting is not None:  # a retry of a message still being stored: answered then
                waiting.append((session.conn_id, frame.request_id, frame.client_msg_id))
                return
        else:
            self.stats.published[PRIORITY_NAMES[frame.priority]] += 1
            self._arrivals.setdefault(room.name, deque()).append(now)
            if reliable:
                assert published.entry is not None
                key = (room.name, published.shard, published.seq)
                self._unstored[key] = [(session.conn_id, frame.request_id, frame.client_msg_id)]
                self._outputs.append(Persist(room.name, (published.entry,)))
                return
            self._mark_dirty(room, now)
        ack = f.Ack(frame.request_id, frame.client_msg_id, published.shard, published.seq)
        self._send_frame(session, ack)
        self.stats.acks += 1

    # ---- the reliable path ----------------------------------------------------------------------

    def persisted(self, room_name: str, entries: Iterable[Entry], now: float) -> None:
        """The store made these messages durable: ack their publishers and let them fan out."""
        room = self._rooms.get(room_name)
        for entry in entries:
            m = entry.message
            if room is not None:
                room.stored(m.shard, m.seq)
            for conn_id, request_id, client_msg_id in self._unstored.pop(
                (room_name, m.shard, m.seq), ()
            ):
                session = self._sessions.get(conn_id)
                if session is not None:
                    self._send_frame(session, f.Ack(request_id, client_msg_id, m.shard, m.seq))
                    self.stats.acks += 1
        if room is not None:
            self._mark_dirty(room, now)

    def persist_failed(
        self, room_name: str, entries: Iterable[Entry], reason: str, now: float
    ) -> None:
        """The store could not take these messages. Their publishers get an INTERNAL error and
        may retry (as new messages); subscribers still get them, best effort, unacknowledged."""
        room = self._rooms.get(room_name)
        for entry in entries:
            m = entry.message
            if room is not None:
                room.stored(m.shard, m.seq)
                room.forget(m.sender, m.client_msg_id)
            error = f"the message store failed ({reason}); not acknowledged, retry later"
            for conn_id, request_id, _ in self._unstored.pop((room_name, m.shard, m.seq), ()):
                session = self._sessions.get(conn_id)
                if session is not None:
                    self._send_frame(session, f.Error(ErrorCode.INTERNAL, error, request_id))
        if room is not None:
            self._mark_dirty(room, now)

    def restore_room(
        self,
        name: str,
        *,
        incarnation: int,
        mode: str,
        maps: list[f.ShardMap],
        high_water: dict[int, int],
        next_shard_id: int,
        now: float,
        recent: Iterable[tuple[str, str, int, int]] = (),
    ) -> None:
        """Take up a room from the durable store: at startup (before any session exists), or
        when :class:`LoadRoom` asked for it (then call :meth:`room_loaded`). Not counted against
        ``max_rooms`` at startup; reclaimed like any room once idle for ``room_idle_s``.

        ``recent``: its newest stored publishes as (sender, client_msg_id, shard, seq), oldest
        first, for the retry window: a publish stored before the crash and retried after it is
        acked with its stored place instead of being sequenced again."""
        self._rooms.restore(
            name,
            incarnation=incarnation,
            mode=mode,
            maps=maps,
            high_water=high_water,
            next_shard_id=next_shard_id,
            now=now,
            recent=recent,
        )

    def room_loaded(self, name: str, now: float) -> None:
        """The store answered a :class:`LoadRoom`: the room is restored (:meth:`restore_room`),
        or, if the store had nothing of it, made anew here. The Joins that waited for it are
        answered now, in order, as if they had just arrived (those of sessions gone or left are
        dropped). Nothing raises: a refusal becomes that session's Error."""
        waiting = self._rooms.reclaim.finish_load(name)
        room = self._rooms.get(name)
        if room is None:
            self._rooms.reclaim.dormant.discard(name)
            room = self._make_room(name, now)
        for conn_id, frame in waiting:
            session = self._sessions.get(conn_id)
            if session is None or session.state is State.CLOSED:
                continue
            try:
                self._admission.room_count(session, frame)
                self._join(session, room, frame, now)
            except GatewayError as exc:
                self._fail(session, exc)
            except Exception as exc:
                self._fail_unexpected(session, exc, "answering a join")

    def room_load_failed(self, name: str, reason: str, now: float) -> None:
        """The store could not answer a :class:`LoadRoom`: the Joins that waited get a non-fatal
        INTERNAL error (they may join again, which asks the store again); the room stays
        dormant."""
        for conn_id, frame in self._rooms.reclaim.finish_load(name):
            session = self._sessions.get(conn_id)
            if session is not None and session.state is not State.CLOSED:
                error = f"room {name!r} could not be read from the store ({reason}); retry later"
                self._send_frame(session, f.Error(ErrorCode.INTERNAL, error, frame.request_id))

    def high_water(self, name: str) -> dict[int, int]:
        """The last seq each current shard of a room assigned (stored with each commit)."""
        return self._rooms.high_water(name)

    def _room_changed(self, room: Room, *, created: bool) -> None:
        if self.durable:
            self._outputs.append(
                RoomChanged(room.name, room.incarnation, room.mode.value, room.shard_map, created)
            )

    def _mark_dirty(self, room: Room, now: float) -> None:
        """The room has pending messages: due now if it sent no batch for a tick, else a tick
        after its last batch (Nagle's rule; see the module docstring)."""
        if room.name not in self._due:
            self._due.set(room.name, max(now, room.fanned_out_at + self._tick_s))

    def _on_fetch(self, session: Session, frame: f.Fetch, now: float) -> None:
        """Answer from the shard log, or the store for what the log no longer holds; only while
        the connection has room in its send budget (else RATE_LIMITED: core/pacing.py)."""
        room = self._joined_room(session, frame.room, frame.request_id)
        self._admission.fetch(session, frame, now)
        try:
            shard = room.shard(frame.shard)
        except GatewayError as exc:
            exc.request_id = frame.request_id
            raise
        if frame.from_seq > shard.last_seq:
            raise Rejected(
                f"shard {shard.id} has {shard.last_seq} messages; nothing from {frame.from_seq}",
                code=ErrorCode.OUT_OF_RANGE,
                request_id=frame.request_id,
            )
        self._pacer.fetch(session, room.name, shard, frame)

    def _on_ping(self, session: Session, frame: f.Ping, now: float) -> None:
        self._send_frame(session, f.Pong(frame.nonce))

    # ---- helpers --------------------------------------------------------------------------------

    def _send_frame(self, session: Session, frame: f.ServerFrame) -> None:
        self._outputs.append(Send((session.conn_id,), delimit(encode_server_frame(frame))))

    def _fail(self, session: Session, exc: GatewayError, *, violation: bool = True) -> None:
        """The one place a GatewayError becomes an Error frame (and, if fatal, a Close).

        Protocol errors count against the session's ``max_errors_per_session``; violations
        (FORBIDDEN, UNAUTHENTICATED; ``violation=False`` for those that are nobody's fault, such
        as a token expiring) against ``violations_before_close`` of the session's connection
        and of its principal, shared with their other sessions: once either has that many, the
        session making the violation is closed, and so is every later one that makes one."""
        # Refusals of well-formed requests are the client's business; broken protocol and
        # permission violations count towards disconnection, each against its own limit.
        violations = 0
        if isinstance(exc, RemoteProtocolError):
            session.errors += 1
        elif exc.code in _VIOLATIONS and violation:
            session.violations += 1
            for allowance in session.allowances:
                allowance.violations += 1
                violations = max(violations, allowance.violations)
        self.stats.errors[exc.code.name] += 1
        fatal = (
            exc.fatal
            or session.errors >= self.config.max_errors_per_session
            or violations >= self.config.limits.violations_before_close
        )
        self._send_frame(session, f.Error(exc.code, exc.message, exc.request_id, fatal))
        if fatal:
            self._outputs.append(Close(session.conn_id, exc.code, exc.message))
            self.disconnect(session.conn_id, 0.0)

    def _fan_out(self, room: Room, now: float) -> None:
        ready = room.take_pending()
        arrived = self._take_arrivals(room.name, len(ready))
        congested = self._backpressure.congested
        out, sessions, config, stats = self._outputs, self._sessions, self.config, self.stats
        fan_out_room(room, ready, arrived, now, congested, sessions, config, stats, out)

    def _take_arrivals(self, room_name: str, count: int) -> list[float]:
        """When the ``count`` oldest pending messages of a room arrived; forgets them."""
        arrivals = self._arrivals.get(room_name)
        if arrivals is None:
            return []
        taken = [arrivals.popleft() for _ in range(min(count, len(arrivals)))]
        if not arrivals:
            del self._arrivals[room_name]
        return taken

    def _maybe_reshard(self, room: Room, now: float) -> None:
        count = room.policy.decide([s.id for s in room.current_shards], now)
        if count is not None and count != len(room.current_shards):
            self._fan_out(room, now)  # the old epoch's messages go out before the new map
        if count is not None and count != len(room.current_shards) and room.can_reshard:
            self._due.discard(room.name)
            if count > len(room.current_shards):
                self.stats.splits += 1
            else:
                self.stats.merges += 1
            self.stats.shards_sealed += len(room.current_shards)
            self.stats.shards_opened += count
            shard_map = room.reshard(count, now)
            self._room_changed(room, created=False)
            if room.subscribers:
                data = delimit(encode_server_frame(shard_map))
                self._outputs.append(Send(tuple(room.subscribers), data))
        check = room.policy.next_check(now)
        if count is not None and not room.can_reshard:
            check = now + self._tick_s  # messages are still being stored: decide again soon
        if check is None:
            self._checks.discard(room.name)
        else:
            self._checks.set(room.name, check)
