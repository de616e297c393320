"""Hypothesis strategies for what a hostile or broken client can send.

Valid frames (so that fuzzing gets past the decoder into the session state machine and rooms),
near-misses (valid frames with bytes flipped, cut or inserted), oversized and undecodable frames,
and raw bytes, all cut into arbitrary chunks as a network would.
"""

from __future__ import annotations

import itertools

from hypothesis import strategies as st

from gateway.wire import frames as f
from gateway.wire.codec import encode_client_frame
from gateway.wire.framing import delimit, encode_varint

__all__ = [
    "ROOMS",
    "chunked",
    "client_frames",
    "hostile_streams",
    "mutated",
]

ROOMS = ("lobby", "r1", "r2")
_ROOM_RE = r"[A-Za-z0-9_.:@-]{1,16}"

# Mostly the room the well-behaved client is in: that is where hostile input could hurt it.
rooms = st.one_of(
    st.just("lobby"),
    st.just("lobby"),
    st.sampled_from(ROOMS),
    st.from_regex(_ROOM_RE, fullmatch=True),
)
u64 = st.integers(0, 2**64 - 1)
small_ids = st.integers(0, 40) | u64
seqs = st.integers(1, 60) | st.integers(1, 2**63 - 1)
shard_ids = st.integers(0, 12) | st.integers(0, 2**32 - 1)
# A clock naming shard 0 can't be built (no shard has id 0); mutated bytes still send one.
clocks = st.dictionaries(st.integers(1, 12) | st.integers(1, 2**32 - 1), seqs, max_size=6)
names = st.sampled_from(["", "bob", "mallory", "x" * 128]) | st.text(max_size=24)


def _hello() -> st.SearchStrategy[f.Hello]:
    return st.builds(
        f.Hello,
        protocol_version=st.just(1) | st.integers(0, 2**32 - 1),
        capabilities=st.lists(st.sampled_from(["lz4", "zstd", ""]), max_size=3).map(tuple),
        token=st.text(max_size=40),
        client_name=names.filter(lambda n: n != "alice"),  # the well-behaved client's identity
    )


def _cursor() -> st.SearchStrategy[f.Cursor]:
    return st.builds(f.Cursor, epoch=st.integers(0, 5) | u64, delivered=clocks, incarnation=u64)


client_frames: st.SearchStrategy[f.ClientFrame] = st.one_of(
    _hello(),
    st.builds(f.Join, small_ids, rooms, st.none() | _cursor()),
    st.builds(f.Leave, small_ids, rooms),
    st.builds(
        f.Publish,
        small_ids,
        rooms,
        st.text(max_size=8),
        st.binary(max_size=64) | st.binary(min_size=1000, max_size=1100),
        st.sampled_from(list(f.Priority)),
        st.just({})
        | st.just({1: 1})
        | st.dictionaries(st.integers(1, 4), st.integers(1, 8), max_size=2)
        | clocks,
    ),
    st.builds(
        f.Fetch,
        small_ids,
        rooms,
        st.just(1) | st.integers(1, 4) | shard_ids,
        st.integers(1, 3) | st.integers(1, 30),
        st.integers(30, 2000),
    ),
    st.builds(f.Ping, u64),
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, removed or inserted, or cut short."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, len(out)))
        if op == "flip" and out:
            i = min(at, len(out) - 1)
            out[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del out[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at:]
    return bytes(out)


def _framed(frame: f.ClientFrame) -> bytes:
    return delimit(encode_client_frame(frame))


# One piece of a stream: mostly whole frames, then near-misses and outright garbage.
pieces: st.SearchStrategy[bytes] = st.one_of(
    client_frames.map(_framed),
    client_frames.map(_framed).flatmap(mutated),
    client_frames.map(encode_client_frame).flatmap(mutated).map(delimit),  # framed, bad payload
    st.binary(max_size=64).map(delimit),  # framed garbage
    st.binary(max_size=32),  # unframed garbage
    st.integers(1, 2**40).map(encode_varint),  # a length prefix, maybe too large, then whatever
    st.just(b"\xff" * 6),  # a varint that never ends
    st.just(delimit(b"\x0a\x04\x22\x02\xc3\x28")),  # a Hello whose client_name is not UTF-8
)

hostile_streams: st.SearchStrategy[bytes] = st.lists(pieces, max_size=12).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included), as the network would deliver it."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
