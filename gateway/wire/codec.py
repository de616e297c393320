"""Translate between frame payloads (protobuf bytes) and the frame dataclasses.

Decoding is strict and typed: bytes that are not a valid frame raise
:class:`~gateway.errors.RemoteProtocolError` with a stable code. The fan-out path does not build a
``Deliver`` dataclass at all: each message is encoded once (:func:`encode_message`) when it is
sequenced, and a batch is assembled from those bytes (:func:`encode_deliver`), which is exactly the
protobuf encoding of ``ServerFrame{deliver: Deliver{...}}`` without re-serialising anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lz4.block
from google.protobuf.message import DecodeError

from gateway.errors import ErrorCode, GatewayError, RemoteProtocolError
from gateway.wire import frames as f
from gateway.wire._pb.skein.v1 import frames_pb2 as pb
from gateway.wire.framing import encode_varint

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "decode_client_frame",
    "decode_server_frame",
    "deliver_frame",
    "deliver_lz4_frame",
    "encode_client_frame",
    "encode_deliver",
    "encode_message",
    "encode_server_frame",
    "encode_tombstone",
]

MAX_DECOMPRESSED_BYTES = 8 << 20
"""The largest Deliver a client accepts after lz4 decompression (a bound on a peer's bytes)."""

# Field keys of the ServerFrame oneof and of Deliver, for assembling batches from encoded parts.
_KEY_DELIVER = bytes(((5 << 3) | 2,))
_KEY_DELIVER_LZ4 = bytes(((6 << 3) | 2,))
_KEY_ROOM = bytes(((1 << 3) | 2,))
_KEY_MESSAGE = bytes(((2 << 3) | 2,))
_KEY_SKIPPED = bytes(((3 << 3) | 0,))


# ---- clocks --------------------------------------------------------------------------------------


def _clock_to_pb(clock: Mapping[int, int], out: pb.VectorClock) -> None:
    if clock:
        items = sorted(clock.items())
        out.shards.extend(s for s, _ in items)
        out.seqs.extend(q for _, q in items)


def _clock_from_pb(clock: pb.VectorClock) -> dict[int, int]:
    if len(clock.shards) != len(clock.seqs):
        raise RemoteProtocolError(
            "vector clock has unequal shard and seq lists", code=ErrorCode.BAD_VECTOR_CLOCK
        )
    result = dict(zip(clock.shards, clock.seqs, strict=True))
    if len(result) != len(clock.shards):
        raise RemoteProtocolError("vector clock repeats a shard", code=ErrorCode.BAD_VECTOR_CLOCK)
    return result


def _priority(value: int) -> f.Priority:
    if value == pb.PRIORITY_UNSPECIFIED:
        return f.Priority.NORMAL
    try:
        return f.Priority(value)
    except ValueError:
        raise RemoteProtocolError(
            f"unknown priority {value}", code=ErrorCode.INVALID_ARGUMENT
        ) from None


# ---- client frames -------------------------------------------------------------------------------


def _hello_from(m: pb.Hello) -> f.Hello:
    return f.Hello(m.protocol_version, tuple(m.capabilities), m.token, m.client_name)


def _join_from(m: pb.Join) -> f.Join:
    cursor = None
    if m.HasField("cursor"):
        cursor = f.Cursor(m.cursor.epoch, _clock_from_pb(m.cursor.delivered), m.cursor.incarnation)
    return f.Join(m.request_id, m.room, cursor)


def _publish_from(m: pb.Publish) -> f.Publish:
    return f.Publish(
        m.request_id,
        m.room,
        m.client_msg_id,
        m.body,
        _priority(m.priority),
        _clock_from_pb(m.deps),
    )


_CLIENT_DECODERS: dict[str, Callable[[Any], f.ClientFrame]] = {
    "hello": _hello_from,
    "join": _join_from,
    "leave": lambda m: f.Leave(m.request_id, m.room),
    "publish": _publish_from,
    "fetch": lambda m: f.Fetch(m.request_id, m.room, m.shard, m.from_seq, m.to_seq),
    "ping": lambda m: f.Ping(m.nonce),
}


def _parse(message: Any, payload: bytes) -> None:
    try:
        message.ParseFromString(payload)
    except (DecodeError, RuntimeWarning) as exc:
        raise RemoteProtocolError(
            f"undecodable frame: {exc}", code=ErrorCode.MALFORMED_FRAME
        ) from None


def decode_client_frame(payload: bytes) -> f.ClientFrame:
    """Decode one ClientFrame payload. Raises RemoteProtocolError with a stable code."""
    message = pb.ClientFrame()
    _parse(message, payload)
    kind = message.WhichOneof("kind")
    if kind is None:
        raise RemoteProtocolError(
            "frame has no known kind (is the client newer than this gateway?)",
            code=ErrorCode.UNKNOWN_FRAME,
        )
    inner = getattr(message, kind)
    try:
        return _CLIENT_DECODERS[kind](inner)
    except GatewayError as exc:
        exc.request_id = getattr(inner, "request_id", 0)  # so the client can match the error
        raise


def encode_client_frame(frame: f.ClientFrame) -> bytes:
    """Encode a client frame to its payload bytes (without the length prefix)."""
    out = pb.ClientFrame()
    match frame:
        case f.Hello():
            out.hello.protocol_version = frame.protocol_version
            out.hello.capabilities.extend(frame.capabilities)
            out.hello.token = frame.token
            out.hello.client_name = frame.client_name
        case f.Join():
            out.join.request_id = frame.request_id
            out.join.room = frame.room
            if frame.cursor is not None:
                out.join.cursor.epoch = frame.cursor.epoch
                out.join.cursor.incarnation = frame.cursor.incarnation
                _clock_to_pb(frame.cursor.delivered, out.join.cursor.delivered)
        case f.Leave():
            out.leave.request_id = frame.request_id
            out.leave.room = frame.room
        case f.Publish():
            p = out.publish
            p.request_id, p.room, p.client_msg_id = (
                frame.request_id,
                frame.room,
                frame.client_msg_id,
            )
            p.body, p.priority = frame.body, pb.Priority.ValueType(frame.priority)
            _clock_to_pb(frame.deps, p.deps)
        case f.Fetch():
            q = out.fetch
            q.request_id, q.room, q.shard = frame.request_id, frame.room, frame.shard
            q.from_seq, q.to_seq = frame.from_seq, frame.to_seq
        case f.Ping():
            out.ping.nonce = frame.nonce
    return out.SerializeToString()


# ---- server frames -------------------------------------------------------------------------------


def _message_to_pb(msg: f.Message, out: pb.Message) -> None:
    out.shard, out.seq = msg.shard, msg.seq
    _clock_to_pb(msg.deps, out.deps)
    out.sender, out.client_msg_id = msg.sender, msg.client_msg_id
    out.priority, out.body = pb.Priority.ValueType(msg.priority), msg.body
    out.shed = msg.shed
    out.chatter_before = msg.chatter_before


def _message_from_pb(m: pb.Message) -> f.Message:
    return f.Message(
        m.shard,
        m.seq,
        _clock_from_pb(m.deps),
        m.sender,
        m.client_msg_id,
        _priority(m.priority),
        m.body,
        m.shed,
        m.chatter_before,
    )


def _shard_map_to_pb(sm: f.ShardMap, out: pb.ShardMap) -> None:
    out.room, out.epoch, out.base_sum = sm.room, sm.epoch, sm.base_sum
    out.shards.extend(sm.shards)
    _clock_to_pb(sm.sealed, out.sealed)


def _shard_map_from_pb(m: pb.ShardMap) -> f.ShardMap:
    return f.ShardMap(m.room, m.epoch, tuple(m.shards), _clock_from_pb(m.sealed), m.base_sum)


def encode_tombstone(shard: int, seq: int) -> bytes:
    """A shed message as the client sees it: just where it was, marked shed."""
    out = pb.Message(shard=shard, seq=seq, shed=True)
    return out.SerializeToString()


def encode_message(msg: f.Message) -> bytes:
    """Encode one message on its own, for :func:`encode_deliver` (done once per message)."""
    out = pb.Message()
    _message_to_pb(msg, out)
    return out.SerializeToString()


def encode_deliver(room: str, encoded_messages: Iterable[bytes], skipped: int = 0) -> bytes:
    """Assemble the bytes of a Deliver message from messages already encoded by encode_message.

    Wrap the result with :func:`deliver_frame` or :func:`deliver_lz4_frame` to send it.
    """
    room_bytes = room.encode()
    parts = [_KEY_ROOM, encode_varint(len(room_bytes)), room_bytes]
    for encoded in encoded_messages:
        parts += (_KEY_MESSAGE, encode_varint(len(encoded)), encoded)
    if skipped:
        parts += (_KEY_SKIPPED, encode_varint(skipped))
    return b"".join(parts)


def deliver_frame(deliver: bytes) -> bytes:
    """A ServerFrame{deliver} payload around bytes from :func:`encode_deliver`."""
    return _KEY_DELIVER + encode_varint(len(deliver)) + deliver


def deliver_lz4_frame(deliver: bytes) -> bytes:
    """A ServerFrame{deliver_lz4} payload: the Deliver bytes compressed once as an LZ4 block."""
    compressed: bytes = lz4.block.compress(deliver, store_size=True)
    return _KEY_DELIVER_LZ4 + encode_varint(len(compressed)) + compressed


def encode_server_frame(frame: f.ServerFrame) -> bytes:
    """Encode a server frame to its payload bytes (without the length prefix)."""
    out = pb.ServerFrame()
    match frame:
        case f.Welcome():
            w = out.welcome
            w.protocol_version, w.session_id = frame.protocol_version, frame.session_id
            w.capabilities.extend(frame.capabilities)
            w.max_frame_bytes, w.max_body_bytes = frame.max_frame_bytes, frame.max_body_bytes
        case f.Joined():
            out.joined.request_id, out.joined.room = frame.request_id, frame.room
            out.joined.missed = frame.missed
            _clock_to_pb(frame.frontier, out.joined.frontier)
            out.joined.incarnation = frame.incarnation
            for sm in frame.shard_maps:
                _shard_map_to_pb(sm, out.joined.shard_maps.add())
        case f.Left():
            out.left.request_id, out.left.room = frame.request_id, frame.room
        case f.Ack():
            a = out.ack
            a.request_id, a.client_msg_id = frame.request_id, frame.client_msg_id
            a.id.shard, a.id.seq = frame.shard, frame.seq
        case f.Deliver():
            return deliver_frame(
                encode_deliver(
                    frame.room, (encode_message(m) for m in frame.messages), frame.skipped
                )
            )
        case f.ShardMap():
            _shard_map_to_pb(frame, out.shard_map)
        case f.Fetched():
            g = out.fetched
            g.request_id, g.room, g.shard = frame.request_id, frame.room, frame.shard
            g.first_available_seq = frame.first_available_seq
            for m in frame.messages:
                _message_to_pb(m, g.messages.add())
        case f.Pong():
            out.pong.nonce = frame.nonce
        case f.Error():
            e = out.error
            e.code, e.message = pb.ErrorCode.ValueType(frame.code), frame.message
            e.request_id, e.fatal = frame.request_id, frame.fatal
    return out.SerializeToString()


def _deliver_from_pb(m: pb.Deliver) -> f.Deliver:
    return f.Deliver(m.room, tuple(_message_from_pb(x) for x in m.messages), m.skipped)


def _decompress(data: bytes) -> pb.Deliver:
    if len(data) < 4 or int.from_bytes(data[:4], "little") > MAX_DECOMPRESSED_BYTES:
        raise RemoteProtocolError("lz4 batch is truncated or too large when decompressed")
    try:
        raw: bytes = lz4.block.decompress(data)
    except lz4.block.LZ4BlockError as exc:
        raise RemoteProtocolError(f"lz4 batch does not decompress: {exc}") from None
    deliver = pb.Deliver()
    _parse(deliver, raw)
    return deliver


def _error_code(value: int) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.UNSPECIFIED


_SERVER_DECODERS: dict[str, Callable[[Any], f.ServerFrame]] = {
    "welcome": lambda m: f.Welcome(
        m.protocol_version, tuple(m.capabilities), m.session_id, m.max_frame_bytes, m.max_body_bytes
    ),
    "joined": lambda m: f.Joined(
        m.request_id,
        m.room,
        tuple(_shard_map_from_pb(s) for s in m.shard_maps),
        m.missed,
        _clock_from_pb(m.frontier),
        m.incarnation,
    ),
    "left": lambda m: f.Left(m.request_id, m.room),
    "ack": lambda m: f.Ack(m.request_id, m.client_msg_id, m.id.shard, m.id.seq),
    "deliver": _deliver_from_pb,
    "deliver_lz4": lambda m: _deliver_from_pb(_decompress(m)),
    "shard_map": _shard_map_from_pb,
    "fetched": lambda m: f.Fetched(
        m.request_id,
        m.room,
        m.shard,
        tuple(_message_from_pb(x) for x in m.messages),
        m.first_available_seq,
    ),
    "pong": lambda m: f.Pong(m.nonce),
    "error": lambda m: f.Error(_error_code(m.code), m.message, m.request_id, m.fatal),
}


def decode_server_frame(payload: bytes) -> f.ServerFrame:
    """Decode one ServerFrame payload (lz4 batches come back as plain Deliver frames)."""
    message = pb.ServerFrame()
    _parse(message, payload)
    kind = message.WhichOneof("kind")
    if kind is None:
        raise RemoteProtocolError("server frame has no known kind", code=ErrorCode.UNKNOWN_FRAME)
    return _SERVER_DECODERS[kind](getattr(message, kind))
