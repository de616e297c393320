"""The body of a loadgen message: who sent it, its number, and when it was *meant* to be sent.

Latency is measured from the intended send time in the body, not from when the publish actually
left: if the generator (or the network, or the gateway) stalls, messages scheduled during the stall
carry their original times and their latency shows the stall. That is what makes the measurement
safe from coordinated omission. Times are ``time.monotonic_ns()``, one clock for every process on
the machine (CLOCK_MONOTONIC on Linux), so publishers and receivers in different workers compare.

Layout: a 22-byte header (``!4sBqIIB``: magic ``SKLG``, version 1, intended ns, publisher index,
per-(publisher, room) number, flags) then padding to the scenario's size. Flags: bit 0
(:data:`FLAG_HANDOFF`) says the publisher was within its handoff window when it sent the message,
bits 1-3 which kind of handoff that was (1 + its index in
:data:`loadgen.scenario.HANDOFF_KINDS`; 0 = not said), so a receiver can put the sample under the
publisher's kind (:func:`handoff_flags`, :func:`handoff_kind`). The padding is word-like
text so lz4 finds what it would in real chat, neither all zeros nor random bytes.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from loadgen.scenario import HANDOFF_KINDS

__all__ = [
    "FLAG_HANDOFF",
    "HEADER_BYTES",
    "Payload",
    "decode_body",
    "encode_body",
    "handoff_flags",
    "handoff_kind",
]

_HEADER = struct.Struct("!4sBqIIB")
_MAGIC = b"SKLG"
_VERSION = 1
HEADER_BYTES = _HEADER.size
FLAG_HANDOFF = 0x01  # the publisher was within its handoff window when it sent this
_KIND_SHIFT = 1
_KIND_MASK = 0b111 << _KIND_SHIFT  # which handoff kind: 1 + its index in HANDOFF_KINDS, 0 = unsaid


def handoff_flags(kind: str | None) -> int:
    """The flags of a message sent within a handoff window of ``kind`` (None: not in one, 0).
    Raises ``ValueError`` for a kind not in :data:`~loadgen.scenario.HANDOFF_KINDS`."""
    if kind is None:
        return 0
    if kind not in HANDOFF_KINDS:
        raise ValueError(f"unknown handoff kind {kind!r}")
    return FLAG_HANDOFF | (HANDOFF_KINDS.index(kind) + 1) << _KIND_SHIFT


def handoff_kind(flags: int) -> str | None:
    """The handoff kind ``flags`` name, or None (no handoff, or a kind this version does not
    know: a sample is never put under the wrong kind)."""
    code = (flags & _KIND_MASK) >> _KIND_SHIFT
    if not flags & FLAG_HANDOFF or not 1 <= code <= len(HANDOFF_KINDS):
        return None
    return HANDOFF_KINDS[code - 1]


def _filler(size: int) -> bytes:
    rng = random.Random(0)
    words = [b"goal", b"what", b"a", b"match", b"see", b"you", b"at", b"the", b"stadium", b"lol"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


_PADDING = _filler(16_384)


@dataclass(frozen=True, slots=True)
class Payload:
    """What a loadgen body carries. ``n`` counts per (publisher, room) from 1."""

    intended_ns: int
    publisher: int
    n: int
    flags: int = 0

    def __post_init__(self) -> None:
        if self.publisher < 0 or self.n < 1 or not 0 <= self.flags < 256:
            raise ValueError(f"bad payload {self!r}")


def encode_body(payload: Payload, size_bytes: int) -> bytes:
    """The body for ``payload``, padded to ``size_bytes`` (at least the header)."""
    header = _HEADER.pack(
        _MAGIC, _VERSION, payload.intended_ns, payload.publisher, payload.n, payload.flags
    )
    return header + _PADDING[: max(0, size_bytes - HEADER_BYTES)]


def decode_body(body: bytes) -> Payload | None:
    """The payload of a loadgen body, or None if ``body`` is not one (someone else's message)."""
    if len(body) < HEADER_BYTES or not body.startswith(_MAGIC):
        return None
    _, version, intended_ns, publisher, n, flags = _HEADER.unpack_from(body)
    if version != _VERSION or n < 1:
        return None
    return Payload(intended_ns, publisher, n, flags)
