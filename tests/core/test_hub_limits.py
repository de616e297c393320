"""The hub's per-session guards on virtual time: token expiry mid-session, the fetch rate."""

from __future__ import annotations

import jwt

from gateway.core.auth import AuthConfig, Authenticator
from gateway.core.config import CoreConfig
from gateway.core.hub import Hub
from gateway.core.limits import LimitsConfig
from gateway.errors import ErrorCode
from gateway.wire import frames as f
from tests.core.test_hub import Peer, pump, tick

SECRET = "k" * 32
WALL = 1_700_000_000.0  # the wall clock when the hub's virtual clock reads 0


def token(sub: str, exp: float) -> str:
    return jwt.encode(
        {"sub": sub, "join": ["*"], "publish": ["*"], "exp": exp}, SECRET, algorithm="HS256"
    )


def auth_hub(**limits: float) -> Hub:
    hub = Hub(
        CoreConfig(limits=LimitsConfig(**limits)),  # type: ignore[arg-type]
        authenticator=Authenticator(AuthConfig(hs256_secrets=(SECRET,), leeway_s=5.0)),
    )
    hub.wall_offset_s = WALL
    return hub


def test_a_session_is_closed_when_its_token_expires() -> None:
    hub = auth_hub()
    short = Peer(hub, 1, "", token=token("short", WALL + 60))
    long = Peer(hub, 2, "", token=token("long", WALL + 3600))
    peers = [short, long]
    for p in peers:
        p.send(f.Join(1, "lobby"))
    pump(hub, peers)
    assert [type(x) for x in short.take()] == [f.Welcome, f.Joined]
    long.take()

    # Expiry is exp plus the leeway, on the hub's clock: the timer is due exactly then.
    timer = hub.get_timer()
    assert timer is not None and timer <= 65.0
    tick(hub, peers, 64.9)
    assert short.closed is None
    for now in (65.0, 65.5):
        tick(hub, peers, now)
    assert short.closed == ErrorCode.UNAUTHENTICATED
    errors = short.take(f.Error)
    assert len(errors) == 1 and errors[0].fatal and "expired" in errors[0].message

    # The other session goes on: it publishes and is delivered to, and is closed only at its own
    # expiry; the expired one gets nothing more.
    long.send(f.Publish(2, "lobby", "m1", b"still here"), 66.0)
    for now in (66.0, 67.0):
        tick(hub, peers, now)
    assert [m.body for d in long.take(f.Deliver) for m in d.messages] == [b"still here"]
    assert short.take() == []
    assert long.closed is None
    tick(hub, peers, 3605.0)
    assert long.closed == ErrorCode.UNAUTHENTICATED


def test_a_session_that_left_leaves_no_expiry_behind() -> None:
    hub = auth_hub()
    peer = Peer(hub, 1, "", token=token("gone", WALL + 30))
    pump(hub, [peer])
    hub.disconnect(1, 1.0)
    tick(hub, [peer], 40.0)  # the expiry comes due for a session that is gone: nothing to send
    assert peer.closed is None and peer.take(f.Error) == []
    assert hub.get_timer() is None


def test_fetches_are_rate_limited_per_session_and_refill() -> None:
    hub = auth_hub(fetch_rate_per_connection_per_s=2.0, fetch_burst_per_connection=3.0)
    writer = Peer(hub, 1, "", token=token("w", WALL + 3600))
    reader = Peer(hub, 2, "", token=token("r", WALL + 3600))
    other = Peer(hub, 3, "", token=token("o", WALL + 3600))
    peers = [writer, reader, other]
    for p in peers:
        p.send(f.Join(1, "lobby"))
    for i in range(5):
        writer.send(f.Publish(10 + i, "lobby", f"c{i}", f"m{i}".encode()))
    tick(hub, peers, 1.0)
    for p in peers:
        p.take()

    for i in range(5):
        reader.send(f.Fetch(100 + i, "lobby", 1, 1, 5), 2.0)
    pump(hub, peers)
    fetched = reader.take(f.Fetched)
    refused = reader.take(f.Error)
    assert [x.request_id for x in fetched] == [100, 101, 102]
    assert [len(x.messages) for x in fetched] == [5, 5, 5]
    assert [(e.code, e.request_id, e.fatal) for e in refused] == [
        (ErrorCode.RATE_LIMITED, 103, False),
        (ErrorCode.RATE_LIMITED, 104, False),
    ]
    assert "retry in" in refused[0].message

    # Another session's fetches are its own; the reader's bucket refills at 2/s.
    other.send(f.Fetch(7, "lobby", 1, 1, 5), 2.0)
    reader.send(f.Fetch(105, "lobby", 1, 1, 5), 2.5)
    pump(hub, peers)
    assert [x.request_id for x in other.take(f.Fetched)] == [7]
    assert [x.request_id for x in reader.take(f.Fetched)] == [105]
    assert reader.closed is None
