"""The hub's one error boundary (issue 21 item 10): nothing a client sends raises past it.

A Hello whose client_name could not name a principal is a fatal INVALID_ARGUMENT, in every auth
mode; an exception a frame handler raises by mistake is a fatal INTERNAL for that session only,
logged once per cause. A hypothesis property feeds arbitrary field values (control characters,
escape codes, huge, empty, not UTF-8) in raw protobuf, past the frame classes' own checks, and
every session still gets an answer to each frame or a fatal Error, and nothing escapes.
"""

from __future__ import annotations

import logging

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.auth import AuthConfig, Authenticator
from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.limits import LimitsConfig
from gateway.core.outputs import Close, Persist, Send
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit, encode_varint
from tests.core.test_hub import Peer, pump

SECRET = "s" * 32
BAD_NAMES = ["eve\nadmin", "\x1b[31mred\x1b[0m", "tab\there", "nul\x00", "\u2028", "\x7f" * 128]


WALL_CLOCK = 1_700_000_000.0  # the hub's wall clock: virtual time 0 is this Unix time


def jwt_hub(**core: object) -> Hub:
    hub = Hub(
        CoreConfig(**core),  # type: ignore[arg-type]
        authenticator=Authenticator(AuthConfig(hs256_secrets=(SECRET,))),
    )
    hub.wall_offset_s = WALL_CLOCK
    return hub


def a_token(sub: str, publish: tuple[str, ...] = ("*",)) -> str:
    return jwt.encode(
        {"sub": sub, "join": ["*"], "publish": list(publish), "exp": WALL_CLOCK + 86_400},
        SECRET,
        algorithm="HS256",
    )


@pytest.mark.parametrize("mode", ["insecure-dev", "jwt"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=["newline", "ansi", "tab", "nul", "u2028", "del"])
def test_a_client_name_that_cannot_name_anyone_is_refused_at_hello(mode: str, name: str) -> None:
    insecure = mode == "insecure-dev"
    hub = Hub() if insecure else jwt_hub()
    other = Peer(hub, 1, "alice", token="" if insecure else a_token("alice"))
    mallory = Peer(hub, 2, name, token="" if insecure else a_token("mallory"))
    mallory.send(f.Join(1, "lobby"))  # what used to raise AssertionError past the hub
    other.send(f.Join(1, "lobby"))
    pump(hub, [other, mallory])

    errors = mallory.take(f.Error)
    assert [(e.code, e.fatal) for e in errors] == [(ErrorCode.INVALID_ARGUMENT, True)], errors
    assert "client_name" in errors[0].message
    assert mallory.closed is ErrorCode.INVALID_ARGUMENT and mallory.take() == []
    assert [type(x) for x in other.take()] == [f.Welcome, f.Joined]
    assert hub.session_count == 1


def test_a_printable_client_name_with_spaces_and_accents_is_fine() -> None:
    hub = Hub()
    peer = Peer(hub, 1, "Zoë Ünal-Smith (phone)")
    peer.send(f.Join(1, "lobby"))
    peer.send(f.Publish(2, "lobby", "m1", b"hi"))
    pump(hub, [peer])
    assert [type(x) for x in peer.take()] == [f.Welcome, f.Joined, f.Ack]


def test_an_unexpected_exception_in_a_handler_is_internal_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub()

    def broken(*_: object) -> None:
        raise KeyError("a bug in the gateway")

    hub._handlers[f.Leave] = broken
    peers = [Peer(hub, i, f"user{i}") for i in (1, 2, 3)]
    for p in peers:
        p.send(f.Join(1, "lobby"))
    pump(hub, peers)
    for p in peers:
        p.take()

    leave_then_ping = b"".join(
        delimit(encode_client_frame(x)) for x in (f.Leave(2, "lobby"), f.Ping(1))
    )
    with caplog.at_level(logging.ERROR, logger="skein.hub"):
        for p in peers[:2]:
            p.send_raw(leave_then_ping)  # the Ping after the failure is not handled
    pump(hub, peers)
    for p in peers[:2]:
        frames = p.take()
        assert len(frames) == 1 and isinstance(frames[0], f.Error), frames
        assert frames[0].code is ErrorCode.INTERNAL and frames[0].fatal
        assert "internal error" in frames[0].message and "a bug" not in frames[0].message
        assert p.closed is ErrorCode.INTERNAL
    records = [r for r in caplog.records if r.name == "skein.hub"]
    assert len(records) == 1 and records[0].exc_info is not None  # once per cause
    assert hub.stats.errors["INTERNAL"] == 2

    # The gateway goes on: the third session is served, and the closed ones are gone.
    survivor = peers[2]
    survivor.send(f.Publish(5, "lobby", "still", b"here"))
    survivor.send(f.Ping(9))
    pump(hub, peers)
    assert [type(x) for x in survivor.take()] == [f.Ack, f.Pong]
    assert hub.session_count == 1


# ---- arbitrary field values, in raw protobuf (past the frame classes' own checks) --------------


def _key(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def _str(number: int, value: bytes) -> bytes:
    return _key(number, 2) + encode_varint(len(value)) + value


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + encode_varint(value)


def _frame(kind: int, body: bytes) -> bytes:
    """A ClientFrame payload: ``kind`` is the oneof field (1 Hello, 2 Join, 4 Publish)."""
    return _str(kind, body)


def _hello(
    *, version: int = 1, token: bytes = b"", client_name: bytes = b"", caps: tuple[bytes, ...] = ()
) -> bytes:
    body = _uint(1, version) + b"".join(_str(2, c) for c in caps)
    return _frame(1, body + _str(3, token) + _str(4, client_name))


CONTROL = "\x00\x07\x08\t\n\r\x1b\x7f\x85\u2028\u2029\u200b\ufeff"
texts = st.one_of(
    st.just(""),
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(CONTROL + "ab "), max_size=20),
    st.text(min_size=120, max_size=140),  # around the 128-character limits
    st.text(alphabet="xé", min_size=3000, max_size=9000),  # huge
).map(lambda s: s.encode())
raw_texts = texts | st.binary(max_size=40)  # not always UTF-8
tokens = raw_texts | st.sampled_from(
    [a_token("bob"), a_token("carol", publish=()), a_token("eve\x1b[2J"), a_token("x" * 129)]
).map(str.encode)
versions = st.just(1) | st.integers(0, 2**32 - 1)
request_ids = st.integers(0, 2**64 - 1)


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    """One session's frames: a Hello, then Joins and Publishes, any field any value."""
    names = draw(st.lists(raw_texts, min_size=1, max_size=3))
    hello = _hello(
        version=draw(versions),
        token=draw(tokens),
        client_name=draw(st.sampled_from(names)),
        caps=tuple(draw(st.lists(raw_texts, max_size=3))),
    )
    frames = [hello]
    for _ in range(draw(st.integers(0, 5))):
        room = draw(st.just(b"lobby") | raw_texts)
        if draw(st.booleans()):
            frames.append(_frame(2, _uint(1, draw(request_ids)) + _str(2, room)))
        else:
            body = (
                _uint(1, draw(request_ids))
                + _str(2, room)
                + _str(3, draw(raw_texts))
                + _str(4, draw(st.binary(max_size=40) | texts))
                + _uint(5, draw(st.integers(0, 5)))
            )
            frames.append(_frame(4, body))
    return frames


ANSWERS = (f.Welcome, f.Joined, f.Ack, f.Error)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    mode=st.sampled_from(["insecure-dev", "jwt"]),
    clients=st.lists(sessions(), min_size=1, max_size=4),
    shared=st.booleans(),
)
def test_no_field_value_escapes_the_hub_and_every_frame_is_answered(
    mode: str, clients: list[list[bytes]], shared: bool
) -> None:
    core = {"limits": LimitsConfig(violations_before_close=3), "max_rooms_per_session": 3}
    hub = Hub(CoreConfig(**core)) if mode == "insecure-dev" else jwt_hub(**core)  # type: ignore[arg-type]
    inbox: dict[int, list[f.ServerFrame]] = {}
    decoders: dict[int, FrameDecoder] = {}
    closed: set[int] = set()
    for conn_id in range(1, len(clients) + 1):
        hub.connect(conn_id, 0.0, connection="one" if shared else None)
        inbox[conn_id], decoders[conn_id] = [], FrameDecoder(16 << 20)

    def route() -> None:
        while outputs := hub.take_outputs():
            for out in outputs:
                if isinstance(out, Send):
                    for conn_id in out.conn_ids:
                        assert conn_id not in closed
                        decoded = decoders[conn_id].feed(out.data)
                        inbox[conn_id] += [decode_server_frame(p) for p in decoded]
                elif isinstance(out, Persist):  # the store is prompt: HIGH is acked at once
                    hub.persisted(out.room, out.entries, 0.0)
                else:
                    assert isinstance(out, Close)
                    closed.add(out.conn_id)

    for step in range(max(len(frames) for frames in clients)):  # interleaved, frame by frame
        for conn_id, frames in enumerate(clients, start=1):
            if step >= len(frames) or conn_id in closed:
                continue
            before = len([x for x in inbox[conn_id] if isinstance(x, ANSWERS)])
            hub.receive_data(conn_id, delimit(frames[step]), float(step))  # never raises
            route()
            answers = [x for x in inbox[conn_id] if isinstance(x, ANSWERS)][before:]
            # Every frame gets its answer (a frame over the size limit is one fatal Error).
            assert answers, (conn_id, step)
            if conn_id in closed:
                assert isinstance(answers[-1], f.Error) and answers[-1].fatal
            else:
                assert len(answers) == 1, answers
    for conn_id in range(1, len(clients) + 1):
        hub.stream_ended(conn_id, 9.0)
        route()
    assert hub.session_count == 0
