"""docs/protocol.md's byte-level examples against the schema and the code: none can go stale.

Each example is found by the sentence that introduces it (quoted here word for word, so the
frame this file expects is the frame the document names) and read from the code block after it:
hexdump lines (``0000  1d 12 ...   ascii``) and annotated lines (``12 05 "lobby"   room``) must
give the same bytes. Those bytes must be one length-delimited frame that the schema's classes
parse to the named frame, that the gateway's codec decodes to it, and that the codec encodes it
to exactly.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from gateway.wire import frames as f
from gateway.wire._pb.skein.v1 import frames_pb2 as pb
from gateway.wire.codec import (
    decode_client_frame,
    decode_server_frame,
    encode_client_frame,
    encode_server_frame,
)
from gateway.wire.framing import FrameDecoder, delimit

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

_DUMP = re.compile(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} )*[0-9a-f]{2})(?:  |$)")
_BYTE = re.compile(r'([0-9a-f]{2}|"[^"]*")(?=\s|$)')

HELLO = f.Hello(1, ("lz4",), "", "alice")
JOIN = f.Join(1, "lobby", f.Cursor(2, {3: 7, 4: 2}, 1234567))
JOINED = f.Joined(
    1,
    "lobby",
    (
        f.ShardMap("lobby", 1, (1, 2)),
        f.ShardMap("lobby", 2, (3, 4), {1: 4, 2: 3}, 7),
    ),
    0,
    {1: 4, 2: 3, 3: 9, 4: 2},
    1234567,
)
PUBLISH = f.Publish(2, "lobby", "9f1c2a-1", b"hi", f.Priority.NORMAL, {3: 7, 4: 2})
DELIVER = f.Deliver(
    "lobby", (f.Message(5, 8, {3: 7, 4: 2}, "alice", "9f1c2a-1", f.Priority.NORMAL, b"hi"),)
)

# (the sentence before the example, the frame it names)
EXAMPLES: list[tuple[str, f.ClientFrame | f.ServerFrame]] = [
    (
        'a `Hello{protocol_version: 1, capabilities: ["lz4"], client_name: "alice"}`, framed',
        HELLO,
    ),
    (
        'A `Join{request_id: 1, room: "lobby", cursor: {epoch: 2, delivered: {3: 7, 4: 2}, '
        "incarnation: 1234567}}` (a re-join after a reconnect, §7.2), framed:",
        JOIN,
    ),
    (
        '`Joined{request_id: 1, room: "lobby", shard_maps: [{room: "lobby", epoch: 1, shards: '
        '[1, 2]}, {room: "lobby", epoch: 2, shards: [3, 4], sealed: {1: 4, 2: 3}, base_sum: 7}], '
        "frontier: {1: 4, 2: 3, 3: 9, 4: 2}, incarnation: 1234567}`, framed",
        JOINED,
    ),
    (
        'A `Publish{request_id: 2, room: "lobby", client_msg_id: "9f1c2a-1", body: "hi", '
        "priority: NORMAL, deps: {3: 7, 4: 2}}`, framed:",
        PUBLISH,
    ),
    (
        'Example: `Deliver{room: "lobby", messages: [{shard 5, seq 8, deps {3: 7, 4: 2}, sender '
        '"alice", client_msg_id "9f1c2a-1", NORMAL, "hi"}]}`, framed:',
        DELIVER,
    ),
]


def block_after(sentence: str) -> list[str]:
    """The lines of the first code block after ``sentence`` (matched across line breaks)."""
    text = DOC.read_text()
    pattern = r"\s+".join(re.escape(word) for word in sentence.split())
    found = re.search(pattern, text)
    assert found, f"protocol.md no longer says: {sentence}"
    start = text.index("```\n", found.end()) + 4
    return text[start : text.index("```", start)].splitlines()


def annotated(line: str) -> bytes:
    """The bytes at the start of an annotated line: hex pairs and "quoted" text, up to the
    first word that is neither (the comment)."""
    out = bytearray()
    rest = line.strip()
    while match := _BYTE.match(rest):
        token = match.group(1)
        out += token[1:-1].encode() if token.startswith('"') else bytes.fromhex(token)
        rest = rest[match.end() :].lstrip()
    return bytes(out)


def example_bytes(lines: list[str]) -> bytes:
    """A block's bytes; when it has both a hexdump and annotated lines they must agree."""
    dump = b"".join(bytes.fromhex(m.group(1)) for line in lines if (m := _DUMP.match(line)))
    notes = b"".join(annotated(line) for line in lines if not _DUMP.match(line))
    if dump and notes:
        assert dump == notes, f"the hexdump {dump.hex(' ')} and the annotation {notes.hex(' ')}"
    return dump or notes


def one_frame(data: bytes) -> bytes:
    (payload,) = FrameDecoder(1 << 20).feed(data)
    assert delimit(payload) == data, "the length prefix does not cover exactly the bytes"
    return payload


@pytest.mark.parametrize("sentence, frame", EXAMPLES, ids=[type(fr).__name__ for _, fr in EXAMPLES])
def test_each_example_is_the_frame_it_names(
    sentence: str, frame: f.ClientFrame | f.ServerFrame
) -> None:
    data = example_bytes(block_after(sentence))
    payload = one_frame(data)
    client = isinstance(frame, f.Hello | f.Join | f.Publish)
    schema = (pb.ClientFrame if client else pb.ServerFrame).FromString(payload)
    assert schema.SerializeToString() == payload  # canonical: what any protobuf library writes
    decoded = decode_client_frame(payload) if client else decode_server_frame(payload)
    assert decoded == frame
    encoded = encode_client_frame(frame) if client else encode_server_frame(frame)  # type: ignore[arg-type]
    assert delimit(encoded) == data, f"the gateway now writes {delimit(encoded).hex(' ')}"


def test_the_stream_header_example_starts_the_hello() -> None:
    """§1.4: QUIC varint 0x41 (2 bytes, ``40 41``), the session id 0, then the Hello of §2."""
    lines = block_after("Open a client-initiated bidirectional QUIC stream and write the")
    hello = delimit(encode_client_frame(HELLO))
    assert example_bytes(lines) == bytes([0x40, 0x41, 0x00]) + hello[:3]


def test_the_lz4_example_start_says_what_it_means() -> None:
    """§4.11: ``32 42 1f 06 00 00`` is field 6 (bytes), 66 bytes, uncompressed size 1567."""
    text = " ".join(DOC.read_text().split())
    found = re.search(
        r"Example start of such a frame: `([0-9a-f ]+) \.\.\.` = field (\d+), (\d+) bytes, uncompressed size 0x([0-9a-f]+) \((\d+)\)",
        text,
    )
    assert found, "the lz4 example sentence changed"
    data = bytes.fromhex(found.group(1))
    field, length, hex_size, size = (
        int(found.group(i), base) for i, base in ((2, 10), (3, 10), (4, 16), (5, 10))
    )
    assert (data[0] >> 3, data[0] & 7) == (field, 2) and field == 6
    assert data[1] == length
    assert struct.unpack_from("<I", data, 2)[0] == hex_size == size
