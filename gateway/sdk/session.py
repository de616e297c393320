"""The SDK's sans-IO session: builds client frames, reads server frames, reconciles each room.

It never touches a socket or a clock. Feed it what the gateway sent (:meth:`ClientSession.receive_data`)
with the time, send what its methods return, and act on the events they give back. The asyncio
client (:mod:`gateway.sdk.client`) is a thin adapter around it; a simulator can drive it directly.

It also holds the connection policy the adapter follows: :attr:`ClientSession.liveness` says when
to probe a quiet connection and when to declare it dead, and
:meth:`ClientSession.reconnect_backoff` paces the reconnects that follow (:mod:`gateway.sdk.liveness`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from gateway.sdk.liveness import Backoff, BackoffConfig, Liveness, LivenessConfig
from gateway.sdk.reconcile import Delivered, Gap, Reconciler
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit

__all__ = [
    "Answer",
    "ChatterLostEvent",
    "ClientSession",
    "MessageEvent",
    "MissedEvent",
    "RoomResetEvent",
    "SessionEvent",
    "ShardMapEvent",
    "SkippedEvent",
]

MAX_SERVER_FRAME_BYTES = 16 << 20
MAX_FETCH_MESSAGES = 1000  # the gateway's default cap per Fetch; larger ranges are asked in pieces


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to a request (Welcome answers request 0; Error answers whatever it names)."""

    request_id: int
    frame: f.ServerFrame


@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A message became deliverable, in causal order for its room."""

    room: str
    message: f.Message
    key: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class ShardMapEvent:
    room: str
    shard_map: f.ShardMap


@dataclass(frozen=True, slots=True)
class SkippedEvent:
    """The gateway shed ``count`` messages of this room for this client (it fell behind)."""

    room: str
    count: int


@dataclass(frozen=True, slots=True)
class ChatterLostEvent:
    """``count`` live chatter messages of this room never came (lost on the way as QUIC
    datagrams, docs/protocol.md §1.7): a later message of their shard was delivered without
    them, as chatter may be. Never a reliable message."""

    room: str
    count: int


@dataclass(frozen=True, slots=True)
class MissedEvent:
    """Messages the gateway no longer has: the client will never see them.

    ``gap`` names the shard range when it is known (a fetch found the log shorter); a resume that
    began before what the gateway retains reports only the ``count``.
    """

    room: str
    count: int
    gap: Gap | None = None


@dataclass(frozen=True, slots=True)
class RoomResetEvent:
    """The room was lost and made anew on the gateway (a restart without durable storage): its
    earlier history is gone, and how much of it this client missed is unknown. The room's
    reconciliation starts afresh from what the gateway has now."""

    room: str


SessionEvent = (
    Answer
    | MessageEvent
    | ShardMapEvent
    | SkippedEvent
    | ChatterLostEvent
    | MissedEvent
    | RoomResetEvent
)


class ClientSession:
    """One session's protocol state. See the module docstring for how to drive it."""

    def __init__(
        self,
        *,
        name: str = "",
        token: str = "",
        capabilities: Iterable[str] = ("lz4",),
        gap_timeout_s: float = 0.05,
        liveness: LivenessConfig | None = None,
        backoff: BackoffConfig | None = None,
    ) -> None:
        self.name = name
        self.token = token
        self.capabilities = tuple(capabilities)
        self._gap_timeout_s = gap_timeout_s
        self._decoder = FrameDecoder(MAX_SERVER_FRAME_BYTES)
        self._request_ids = itertools.count(1)
        self._rooms: dict[str, Reconciler] = {}
        self._current_shards: dict[str, tuple[int, ...]] = {}
        self._epochs: dict[str, int] = {}
        self._incarnations: dict[str, int] = {}
        self._msg_prefix = os.urandom(6).hex()
        self._msg_counter = itertools.count(1)
        self._resumes: set[int] = set()  # join request ids that carried a cursor
        self._fetches: dict[int, f.Fetch] = {}  # outstanding fetches, to read their errors
        self.welcome: f.Welcome | None = None
        self.liveness = Liveness(liveness)
        self._backoff = backoff or BackoffConfig()

    # ---- requests: each returns bytes to write on the session stream ----------------------------

    def hello(self) -> bytes:
        return self._frame(f.Hello(f.PROTOCOL_VERSION, self.capabilities, self.token, self.name))

    def join(self, room: str, *, resume: bool = True) -> tuple[int, bytes]:
        """Join (or re-join) ``room``. On a re-join with ``resume`` the cursor asks for a replay."""
        request_id = next(self._request_ids)
        reconciler = self._rooms.get(room)
        cursor = None
        if reconciler is not None and resume:
            mark = reconciler.cursor()
            cursor = f.Cursor(mark.epoch, mark.delivered, self._incarnations.get(room, 0))
        if reconciler is None:
            self._rooms[room] = Reconciler(gap_timeout_s=self._gap_timeout_s)
        if cursor is not None:
            self._resumes.add(request_id)
        return request_id, self._frame(f.Join(request_id, room, cursor))

    def leave(self, room: str) -> tuple[int, bytes]:
        request_id = next(self._request_ids)
        self._rooms.pop(room, None)
        self._current_shards.pop(room, None)
        self._epochs.pop(room, None)
        self._incarnations.pop(room, None)
        return request_id, self._frame(f.Leave(request_id, room))

    def publish(
        self,
        room: str,
        body: bytes,
        *,
        priority: f.Priority = f.Priority.NORMAL,
        client_msg_id: str | None = None,
    ) -> tuple[int, str, bytes]:
        """Build a publish carrying what this client has delivered in the room as its deps.

        Returns (request_id, client_msg_id, bytes). Retrying with the same client_msg_id is safe:
        the gateway acks it again without sequencing it twice. Raises LocalProtocolError if the
        room was not joined.
        """
        reconciler = self._rooms.get(room)
        if reconciler is None:
            raise LocalProtocolError(f"join {room!r} before publishing to it")
        request_id = next(self._request_ids)
        msg_id = client_msg_id or f"{self._msg_prefix}-{next(self._msg_counter)}"
        current = self._current_shards.get(room, ())
        delivered = reconciler.delivered
        deps = {s: delivered[s] for s in current if delivered.get(s)}
        frame = f.Publish(request_id, room, msg_id, body, priority, deps)
        return request_id, msg_id, self._frame(frame)

    def ping(self, nonce: int) -> bytes:
        return self._frame(f.Ping(nonce))

    def fetches(self, now: float) -> bytes:
        """Fetch frames for every gap the reconcilers want filled now (b"" if none)."""
        out = []
        for room, reconciler in self._rooms.items():
            for wanted in reconciler.wanted(now):
                for start in range(wanted.from_seq, wanted.to_seq + 1, MAX_FETCH_MESSAGES):
                    end = min(wanted.to_seq, start + MAX_FETCH_MESSAGES - 1)
                    out.append(self._fetch(room, wanted.shard, start, end))
        return b"".join(out)

    def cursors(self) -> dict[str, f.Cursor]:
        """Each joined room's resume point."""
        return {room: r.cursor() for room, r in self._rooms.items()}

    def rooms(self) -> list[str]:
        return list(self._rooms)

    def reconciler(self, room: str) -> Reconciler:
        """The room's reconciler (its ordered() view, counters). Raises KeyError if not joined."""
        return self._rooms[room]

    def reconnect_backoff(self, now: float) -> Backoff:
        """The pacing of the reconnect attempts after the connection was lost at ``now``."""
        return Backoff(self._backoff, now)

    def reset_stream(self) -> None:
        """Forget partial input: call when the session moves to a new connection."""
        self._decoder = FrameDecoder(MAX_SERVER_FRAME_BYTES)

    # ---- input ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[SessionEvent]:
        """Bytes from the gateway. Returns events in order. Raises RemoteProtocolError on garbage."""
        events: list[SessionEvent] = []
        for payload in self._decoder.feed(data):
            self._handle(decode_server_frame(payload), now, events)
        return events

    def receive_datagram(self, payload: bytes, now: float) -> list[SessionEvent]:
        """One HTTP/3 datagram of the session from the gateway: a whole ServerFrame (no length
        prefix), only ever a ``Deliver`` of a live room's chatter, which may arrive in any order
        relative to the stream, or never. Raises RemoteProtocolError on garbage or another
        frame."""
        frame = decode_server_frame(payload)
        if not isinstance(frame, f.Deliver):
            raise RemoteProtocolError(
                f"a datagram may carry only Deliver, got {type(frame).__name__}",
                code=ErrorCode.UNKNOWN_FRAME,
            )
        events: list[SessionEvent] = []
        self._handle(frame, now, events)
        return events

    def _handle(self, frame: f.ServerFrame, now: float, events: list[SessionEvent]) -> None:
        match frame:
            case f.Deliver():
                self._deliver(frame.room, frame.messages, now, events)
                if frame.skipped:
                    events.append(SkippedEvent(frame.room, frame.skipped))
            case f.ShardMap():
                self._apply_map(frame)
                events.append(ShardMapEvent(frame.room, frame))
            case f.Joined():
                self._joined(frame, events)
                events.append(Answer(frame.request_id, frame))
            case f.Fetched():
                self._fetched(frame, now, events)
                events.append(Answer(frame.request_id, frame))
            case f.Welcome():
                self.welcome = frame
                events.append(Answer(0, frame))
            case f.Error():
                self._fetch_refused(frame, events)
                events.append(Answer(frame.request_id, frame))
            case f.Ack() | f.Left():
                events.append(Answer(frame.request_id, frame))
            case f.Pong():
                events.append(Answer(0, frame))

    def _apply_map(self, shard_map: f.ShardMap) -> None:
        reconciler = self._rooms.get(shard_map.room)
        if reconciler is None:
            return
        reconciler.apply_shard_map(shard_map)
        if shard_map.epoch >= self._epochs.get(shard_map.room, 0):
            self._current_shards[shard_map.room] = shard_map.shards
            self._epochs[shard_map.room] = shard_map.epoch

    def _joined(self, frame: f.Joined, events: list[SessionEvent]) -> None:
        reconciler = self._rooms.get(frame.room)
        if reconciler is None:
            return
        known = self._incarnations.get(frame.room, 0)
        self._incarnations[frame.room] = frame.incarnation
        if known and known != frame.incarnation:
            reconciler = self._rooms[frame.room] = Reconciler(gap_timeout_s=self._gap_timeout_s)
            self._epochs.pop(frame.room, None)
            self._current_shards.pop(frame.room, None)
            events.append(RoomResetEvent(frame.room))
        for shard_map in frame.shard_maps:
            self._apply_map(shard_map)
        if frame.request_id in self._resumes:
            # The gateway replays what follows the cursor; what precedes its oldest retained epoch
            # is gone, and Joined.missed says how much.
            self._resumes.discard(frame.request_id)
            if frame.shard_maps:
                reconciler.skip_to(frame.shard_maps[0].sealed)
            if frame.missed:
                events.append(MissedEvent(frame.room, frame.missed))
        else:
            # A fresh join starts live: at the frontier, and past every retained epoch's sealed
            # seqs (earlier epochs' history is not this client's to fetch).
            start: dict[int, int] = {}
            for shard_map in frame.shard_maps:
                start.update(shard_map.sealed)
            start.update(frame.frontier)
            reconciler.skip_to(start)

    def _deliver(
        self, room: str, messages: Iterable[f.Message], now: float, events: list[SessionEvent]
    ) -> None:
        reconciler = self._rooms.get(room)
        if reconciler is None:
            return  # left the room; late batches are dropped
        reconciler.receive(messages, now)
        _drain(room, reconciler, events)

    def _fetched(self, frame: f.Fetched, now: float, events: list[SessionEvent]) -> None:
        self._fetches.pop(frame.request_id, None)
        reconciler = self._rooms.get(frame.room)
        if reconciler is None:
            return
        if frame.first_available_seq:
            self._lost(frame.room, frame.shard, frame.first_available_seq, events)
        self._deliver(frame.room, frame.messages, now, events)

    def _fetch_refused(self, error: f.Error, events: list[SessionEvent]) -> None:
        """A fetch the gateway can't serve (the shard is no longer retained): the range is lost."""
        fetch = self._fetches.pop(error.request_id, None)
        if fetch is not None and error.code == ErrorCode.OUT_OF_RANGE:
            self._lost(fetch.room, fetch.shard, fetch.to_seq + 1, events)

    def _lost(
        self, room: str, shard: int, first_available: int, events: list[SessionEvent]
    ) -> None:
        reconciler = self._rooms.get(room)
        gap = reconciler.lost(shard, first_available) if reconciler is not None else None
        if gap is not None:
            events.append(MissedEvent(room, gap.to_seq - gap.from_seq + 1, gap))
        if reconciler is not None:
            _drain(room, reconciler, events)

    def _fetch(self, room: str, shard: int, from_seq: int, to_seq: int) -> bytes:
        request_id = next(self._request_ids)
        fetch = f.Fetch(request_id, room, shard, from_seq, to_seq)
        if len(self._fetches) >= 4096:  # bounded: forget the oldest (its answer still delivers)
            del self._fetches[next(iter(self._fetches))]
        self._fetches[request_id] = fetch
        return self._frame(fetch)

    @staticmethod
    def _frame(frame: f.ClientFrame) -> bytes:
        return delimit(encode_client_frame(frame))


def _drain(room: str, reconciler: Reconciler, events: list[SessionEvent]) -> None:
    """What ``reconciler`` delivered, as events, and the chatter it passed over."""
    for delivered in reconciler.drain():
        events.append(_message_event(room, delivered))
    passed = reconciler.take_passed()
    if passed:
        events.append(ChatterLostEvent(room, passed))


def _message_event(room: str, delivered: Delivered) -> MessageEvent:
    return MessageEvent(room, delivered.message, delivered.key)
