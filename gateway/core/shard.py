"""One shard of a room: a sequencer that assigns dense seqs 1, 2, 3, ... and keeps their log.

The log is a bounded ring (``log_messages`` entries); what falls off its front is gone from memory
(the durable store keeps the reliable path's messages). Each entry keeps the message already encoded
for the wire, so fan-out and replays never encode it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice

from gateway.errors import ErrorCode, RemoteProtocolError
from gateway.wire.codec import encode_message
from gateway.wire.frames import Message, Priority

__all__ = ["Entry", "Shard"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A sequenced message and its wire encoding (made once)."""

    message: Message
    encoded: bytes


class Shard:
    """A sequencer. Not thread-safe; the hub drives it from one task.

    ``clock`` is the running maximum of the vector clocks of this shard's messages (own shard
    excluded), so the clock of seq k always dominates that of seq k-1: per-shard order agrees with
    causality, which is what lets clients order across shards.
    """

    __slots__ = ("_chatter_run", "_log", "clock", "id", "last_seq", "notified_seq", "sealed")

    def __init__(self, shard_id: int, *, log_messages: int) -> None:
        if log_messages < 1:
            raise ValueError("log_messages must be >= 1")
        self.id = shard_id
        self.last_seq = 0
        self.notified_seq = 0  # the last seq fanned out to subscribers (<= last_seq)
        self.sealed = False
        self.clock: dict[int, int] = {}
        self._chatter_run = 0  # how many of the last seqs are live chatter (Message.chatter_before)
        self._log: deque[Entry] = deque(maxlen=log_messages)

    @property
    def first_seq(self) -> int:
        """The oldest seq still in the log (last_seq + 1 when the log is empty)."""
        return self.last_seq - len(self._log) + 1

    def sequence(
        self,
        *,
        deps: Mapping[int, int],
        sender: str,
        client_msg_id: str,
        priority: Priority,
        body: bytes,
        live: bool = False,
    ) -> Entry:
        """Assign the next seq to a message whose dependencies are ``deps`` (other shards only).

        ``live``: the room is live, so its chatter may be lost on the way (QUIC datagrams); the
        message then says how many seqs right before it are chatter (``chatter_before``), which a
        client may pass over. The caller has validated ``deps`` against the room. A sealed shard
        is a bug in the caller and raises RuntimeError.
        """
        if self.sealed:
            raise RuntimeError(f"shard {self.id} is sealed")
        clock = self.clock
        for shard, seq in deps.items():
            if seq > clock.get(shard, 0):
                clock[shard] = seq
        self.last_seq += 1
        run = self._chatter_run
        message = Message(
            self.id, self.last_seq, dict(clock), sender, client_msg_id, priority, body, False, run
        )
        self._chatter_run = run + 1 if live and priority == Priority.CHATTER else 0
        entry = Entry(message, encode_message(message))
        self._log.append(entry)
        return entry

    def check_dep(self, seq: int) -> None:
        """Raise BAD_VECTOR_CLOCK if a client claims to have seen ``seq`` of this shard."""
        if seq > self.last_seq:
            raise RemoteProtocolError(
                f"vector clock claims seq {seq} of shard {self.id}, which has {self.last_seq}",
                code=ErrorCode.BAD_VECTOR_CLOCK,
            )

    def entries(self, from_seq: int, to_seq: int) -> list[Entry]:
        """The logged entries in ``from_seq..to_seq`` (clipped to what the log holds)."""
        first = self.first_seq
        lo = max(from_seq, first)
        hi = min(to_seq, self.last_seq)
        if lo > hi:
            return []
        log = self._log
        return [log[i] for i in range(lo - first, hi - first + 1)]

    def take(self, from_seq: int, to_seq: int, max_bytes: int) -> list[Entry]:
        """The logged entries from ``from_seq`` (clipped to the log) up to ``to_seq``, stopping
        before the encodings pass ``max_bytes`` (at least one entry if any is in range). Walks
        only what it returns: a replay cut into many pieces costs no more than one."""
        first = self.first_seq
        lo = max(from_seq, first)
        hi = min(to_seq, self.last_seq)
        if lo > hi:
            return []
        taken: list[Entry] = []
        size = 0
        for entry in islice(self._log, lo - first, hi - first + 1):
            size += len(entry.encoded)
            if size > max_bytes and taken:
                break
            taken.append(entry)
        return taken
