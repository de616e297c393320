"""Builders and hypothesis strategies shared by the store tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from hypothesis import strategies as st

from gateway.store.records import EpochRecord, RoomRecord, StoredMessage

MAX_I63 = (1 << 63) - 1
ROOMS = ("lobby", "other")  # the rooms the tests store messages in


class _PutsRooms(Protocol):
    def put_room(self, record: RoomRecord) -> None: ...


S = TypeVar("S", bound=_PutsRooms)


def with_rooms(store: S, *names: str) -> S:
    """``store`` with a record for each room of ``names`` (default: :data:`ROOMS`)."""
    for incarnation, name in enumerate(names or ROOMS, start=1):
        store.put_room(RoomRecord(name, incarnation, "group"))
    return store


rooms = st.from_regex(r"[A-Za-z0-9_.:@-]{1,128}", fullmatch=True)
shard_ids = st.integers(0, (1 << 32) - 1)
seqs = st.integers(1, MAX_I63)
clocks = st.dictionaries(shard_ids, seqs, max_size=8)


def msg(
    seq: int,
    *,
    room: str = "lobby",
    shard: int = 1,
    at_ms: int = 1_000,
    body: bytes | None = None,
    deps: Mapping[int, int] | None = None,
) -> StoredMessage:
    """A valid message; the body names its key so mix-ups show."""
    return StoredMessage(
        room=room,
        shard=shard,
        seq=seq,
        deps=dict(deps or {}),
        sender="alice",
        client_msg_id=f"c-{room}-{shard}-{seq}",
        priority=3,
        body=body if body is not None else f"{room}/{shard}/{seq}".encode(),
        stored_at_ms=at_ms,
    )


stored_messages = st.builds(
    StoredMessage,
    room=rooms,
    shard=shard_ids,
    seq=seqs,
    deps=clocks,
    sender=st.text(max_size=256),
    client_msg_id=st.text(max_size=64),
    priority=st.integers(1, 3),
    body=st.binary(max_size=512),
    stored_at_ms=st.integers(0, MAX_I63),
)
room_records = st.builds(
    RoomRecord,
    room=rooms,
    incarnation=st.integers(1, MAX_I63),
    mode=st.sampled_from(["live", "group"]),
)
epoch_records = st.builds(
    EpochRecord,
    room=rooms,
    epoch=st.integers(1, MAX_I63),
    shards=st.lists(shard_ids, min_size=1, max_size=16, unique=True).map(tuple),
    sealed=clocks,
    base_sum=st.integers(0, MAX_I63),
)
