"""Rate limits and violations per QUIC connection and per principal, not per session (issue 21
item 4), on virtual time: sessions sharing a connection key (``Hub.connect(connection=...)``) or a
principal share one bucket's worth and one violation count, and a new session starts nothing
afresh."""

from __future__ import annotations

import jwt
import pytest

from gateway.core.auth import AuthConfig, Authenticator
from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.limits import LimitsConfig, TokenBucket
from gateway.core.outputs import Close, Persist, Send
from gateway.core.principals import Allowances, take_all
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from gateway.wire.codec import decode_server_frame, encode_client_frame
from gateway.wire.framing import FrameDecoder, delimit

SECRET = "p" * 32
LIMITS = LimitsConfig()  # the defaults: publish 50/s burst 100, join 10/s burst 50


def token(sub: str, *, publish: tuple[str, ...] = ("*",)) -> str:
    # exp within max_token_lifetime_s of the hub's wall clock (jwt_net: 1_700_000_000)
    claims = {"sub": sub, "join": ["*"], "publish": list(publish), "exp": 1_700_086_400}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Net:
    """A hub and its sessions: ``open`` one on a connection, send frames, read what came back."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.inbox: dict[int, list[f.ServerFrame]] = {}
        self.decoders: dict[int, FrameDecoder] = {}
        self.closed: dict[int, ErrorCode] = {}
        self.next_id = 1

    def open(self, connection: object, name: str = "", tok: str = "", now: float = 0.0) -> int:
        conn_id, self.next_id = self.next_id, self.next_id + 1
        self.inbox[conn_id], self.decoders[conn_id] = [], FrameDecoder(16 << 20)
        self.hub.connect(conn_id, now, connection=connection)
        self.send(conn_id, f.Hello(client_name=name, token=tok), now)
        assert isinstance(self.take(conn_id)[0], f.Welcome)
        return conn_id

    def send(self, conn_id: int, frame: f.ClientFrame, now: float) -> None:
        self.hub.receive_data(conn_id, delimit(encode_client_frame(frame)), now)
        for out in self.hub.take_outputs():
            if isinstance(out, Send):
                for c in out.conn_ids:
                    self.inbox[c] += [
                        decode_server_frame(p) for p in self.decoders[c].feed(out.data)
                    ]
            elif isinstance(out, Close):
                self.closed[out.conn_id] = out.code
            else:
                assert not isinstance(out, Persist)  # only chatter and normal here

    def take(self, conn_id: int) -> list[f.ServerFrame]:
        frames, self.inbox[conn_id] = self.inbox[conn_id], []
        return frames


def flood(net: Net, conns: list[int], seconds: float, frame_for: object) -> tuple[int, int]:
    """Every session sends one frame every 10 ms of virtual time: (granted, refused)."""
    granted = refused = 0
    step = 0
    while step * 0.01 <= seconds:
        for conn_id in conns:
            net.send(conn_id, frame_for(conn_id, step), step * 0.01)  # type: ignore[operator]
            for x in net.take(conn_id):
                if isinstance(x, f.Error):
                    assert x.code is ErrorCode.RATE_LIMITED and not x.fatal, x
                    refused += 1
                elif isinstance(x, f.Ack | f.Joined):
                    granted += 1
        step += 1
    return granted, refused


def test_twenty_sessions_on_one_connection_share_one_publish_bucket() -> None:
    net = Net(Hub(CoreConfig(limits=LIMITS)))
    attack = [net.open("quic-1", f"bot{i}") for i in range(20)]
    bystander = net.open("quic-2", "alice")
    for conn_id in [*attack, bystander]:
        net.send(conn_id, f.Join(1, "lobby"), 0.0)
        net.take(conn_id)

    def publish(conn_id: int, step: int) -> f.Publish:
        return f.Publish(100 + step, "lobby", f"{conn_id}-{step}", b"x")

    acked, refused = flood(net, attack, 1.2, publish)
    # One bucket's worth over 1.2 s: burst + rate * T = 100 + 50 * 1.2 (was 20 buckets' worth).
    assert 150 <= acked <= 100 + 50 * 1.2 + 1, acked
    assert refused == 20 * 121 - acked
    # Another connection's own bucket is untouched.
    for i in range(100):
        net.send(bystander, f.Publish(1000 + i, "lobby", f"a{i}", b"y"), 1.2)
    frames = net.take(bystander)
    assert sum(isinstance(x, f.Ack) for x in frames) == 100 and not net.closed


def test_twenty_sessions_on_one_connection_share_one_join_bucket() -> None:
    net = Net(Hub(CoreConfig(limits=LIMITS, max_rooms_per_session=1000)))
    attack = [net.open("quic-1", f"bot{i}") for i in range(20)]
    joined, _ = flood(net, attack, 2.0, lambda c, step: f.Join(step + 1, f"room-{c}-{step}"))
    assert 60 <= joined <= 50 + 10 * 2.0 + 1, joined  # was 1,000 rooms in 2 s
    assert len(net.hub.room_names()) == joined


def test_a_new_session_on_the_connection_starts_nothing_afresh() -> None:
    net = Net(Hub(CoreConfig(limits=LIMITS)))
    first = net.open("quic-1", "bot")
    net.send(first, f.Join(1, "lobby"), 0.0)
    for i in range(150):
        net.send(first, f.Publish(10 + i, "lobby", f"m{i}", b"x"), 0.0)
    assert sum(isinstance(x, f.Ack) for x in net.take(first)) == 100
    net.hub.stream_ended(first, 0.0)

    second = net.open("quic-1", "bot-again")  # same connection, a new name: still limited
    net.send(second, f.Join(1, "lobby"), 0.0)
    net.send(second, f.Publish(2, "lobby", "n", b"x"), 0.0)
    errors = [x for x in net.take(second) if isinstance(x, f.Error)]
    assert [e.code for e in errors] == [ErrorCode.RATE_LIMITED]
    assert "retry in 0.02 s" in errors[0].message  # one token at 50/s

    # Once the connection is gone its state goes too; a new connection key starts full.
    net.hub.stream_ended(second, 0.0)
    net.hub.connection_closed("quic-1")
    third = net.open("quic-1b", "bot-3")
    net.send(third, f.Join(1, "lobby"), 0.0)
    net.send(third, f.Publish(2, "lobby", "o", b"x"), 0.0)
    assert [type(x) for x in net.take(third)] == [f.Joined, f.Ack]


def jwt_net(**limits: object) -> Net:
    hub = Hub(
        CoreConfig(limits=LimitsConfig(**limits)),  # type: ignore[arg-type]
        authenticator=Authenticator(AuthConfig(hs256_secrets=(SECRET,))),
    )
    hub.wall_offset_s = 1_700_000_000.0
    return Net(hub)


def test_violations_accumulate_across_the_sessions_of_a_connection() -> None:
    net = jwt_net()  # violations_before_close = 10
    readonly = token("reader", publish=())
    seen: list[tuple[ErrorCode, bool]] = []
    for n in range(4):  # session after session, each makes 3 violations and leaves
        conn_id = net.open("quic-1", tok=readonly if n % 2 else token(f"other{n}", publish=()))
        net.send(conn_id, f.Join(1, "lobby"), 0.0)
        for i in range(3):
            net.send(conn_id, f.Publish(10 + i, "lobby", f"m{n}-{i}", b"x"), 0.0)
        seen += [(e.code, e.fatal) for e in net.take(conn_id) if isinstance(e, f.Error)]
        net.hub.stream_ended(conn_id, 0.0)
        if conn_id in net.closed:
            break
    # The 10th violation on the connection is fatal: in the 4th session, not the 1st of 10.
    assert seen == [(ErrorCode.FORBIDDEN, False)] * 9 + [(ErrorCode.FORBIDDEN, True)]
    assert list(net.closed.values()) == [ErrorCode.FORBIDDEN]
    # From then on every violation on that connection is fatal at once.
    again = net.open("quic-1", tok=token("fresh", publish=()))
    net.send(again, f.Join(1, "lobby"), 0.0)
    net.send(again, f.Publish(1, "lobby", "z", b"x"), 0.0)
    assert [(e.code, e.fatal) for e in net.take(again) if isinstance(e, f.Error)] == [
        (ErrorCode.FORBIDDEN, True)
    ]


def test_one_principal_shares_its_buckets_and_violations_across_connections() -> None:
    net = jwt_net(violations_before_close=4)
    tok = token("mallory", publish=("lobby",))
    phones = [net.open(f"quic-{i}", tok=tok) for i in range(5)]  # five connections, one sub
    for conn_id in phones:
        net.send(conn_id, f.Join(1, "lobby"), 0.0)
        net.send(conn_id, f.Join(2, "secret"), 0.0)
        net.take(conn_id)
    acks = 0
    for i in range(60):
        for conn_id in phones:
            net.send(conn_id, f.Publish(10 + i, "lobby", f"{conn_id}-{i}", b"x"), 0.0)
            acks += sum(isinstance(x, f.Ack) for x in net.take(conn_id))
    assert acks == 100  # one principal's burst, however many connections it opens
    # Violations too: three on three connections, the fourth (on a fourth connection) is fatal.
    for k, conn_id in enumerate(phones[:4]):
        net.send(conn_id, f.Publish(99, "secret", f"s{k}", b"x"), 0.0)
        errors = [x for x in net.take(conn_id) if isinstance(x, f.Error)]
        assert [(e.code, e.fatal) for e in errors] == [(ErrorCode.FORBIDDEN, k == 3)]
    assert list(net.closed) == [phones[3]]


def test_a_token_expiring_is_no_violation() -> None:
    net = jwt_net(violations_before_close=2)
    hub = net.hub
    short = jwt.encode(
        {"sub": "s", "join": ["*"], "publish": [], "exp": 1_700_000_010}, SECRET, algorithm="HS256"
    )
    for n in range(3):  # each session is closed by its token's expiry, on the same connection
        conn_id = net.open("quic-1", tok=short, now=float(n))
        hub.handle_timer(50.0)
        hub.take_outputs()
        assert conn_id not in hub._sessions
    conn_id = net.open("quic-1", tok=token("s", publish=()), now=60.0)
    net.send(conn_id, f.Join(1, "lobby"), 60.0)
    net.send(conn_id, f.Publish(2, "lobby", "m", b"x"), 60.0)
    errors = [x for x in net.take(conn_id) if isinstance(x, f.Error)]
    assert [(e.code, e.fatal) for e in errors] == [(ErrorCode.FORBIDDEN, False)]


# ---- the pieces --------------------------------------------------------------------------------


def test_take_all_takes_from_every_bucket_or_from_none() -> None:
    a, b = TokenBucket(1.0, 2.0), TokenBucket(10.0, 1.0)
    assert take_all([a, b], 0.0) == 0.0
    assert take_all([a, b], 0.0) == pytest.approx(0.1)  # b is empty: a keeps its token
    assert a.available(0.0) == 1.0
    assert take_all([a, b], 0.1) == 0.0 and a.available(0.1) == pytest.approx(0.1)


def test_allowances_are_kept_while_held_or_spent_and_bounded_when_idle() -> None:
    table: Allowances[str] = Allowances(LIMITS, max_idle=2)
    first = table.acquire("a")
    assert table.acquire("a") is first and first.holders == 2
    table.release("a", 0.0)
    table.release("a", 0.0)
    assert "a" not in table  # pristine when released: nothing to remember
    for key in ("x", "y", "z"):
        table.acquire(key).publish.take(0.0)
        table.release(key, 0.0)
    assert "x" not in table and "y" in table and "z" in table  # the oldest idle one went
    spent = table.acquire("y")
    assert spent.publish.available(0.0) == 99  # a session coming back finds it as it was
    table.release("y", 0.0)
    table.acquire("fresh")
    table.release("fresh", 1.0)
    table.forget("y")
    assert len(table) == 1
