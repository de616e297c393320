"""Live: clients sending garbage cost the clients who chat beside them no message and little latency.

Four SDK clients chat in one room, 20 messages/s each; every body carries its send time, and each
receiver measures delivery latency on the same clock. Rounds alternate: A (the chat alone) and B
(the same chat while two attackers, each session on its own QUIC connection, send garbage:
hypothesis-drawn hostile streams cut into chunks, oversized and unframeable frames, unknown frame
kinds, impossible vector clocks, fetches out of range, join floods, streams reset or finished
mid-frame; and reconnect after every session the gateway closes). The gateway has its default
limits. Checked: every chatter gets every chatter's messages once, in order; each attacker session
gets the typed Error frames it earned, the last one fatal with the right code; the gateway drops
every attacker session and connection, logs no error and still serves a newcomer; and the
chatters' p99 under attack stays within twice their p99 without.

Why the latency check is built this way (a flaky test is a bug):

- A round's p99 is about the worst stall the machine put in it, and on a shared 2-core machine
  stalls of 50-200 ms come and go with other people's work (seen in A rounds alone). So five A
  and five B rounds alternate (a drift hits both phases alike) and the medians of the per-round
  p99s are compared: three disturbed B rounds out of five are needed to move the verdict.
- The baseline p99 is ~15 ms (the gateway batches per 10 ms tick): twice that is one hiccup. So
  the allowance is max(2 x baseline, baseline + 100 ms). On a quiet machine B's median was 1.0-1.2
  x A's; with the machine overloaded (load average 5-8 on 2 cores) B's rounds, with four times
  A's context switches, typically drew 10-60 ms more from the scheduler (once 107 ms), hence 100
  ms and not 50. A gateway the garbage hurts (a blocked loop, a backlog behind the attackers)
  costs more than that, in every B round.
- The attackers run in a process of their own, at a lower priority: a deployment's gateway pays
  for its attackers' traffic, not for their TLS handshakes and encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from gateway.core.config import CoreConfig
from gateway.engine import send_stream_data
from gateway.errors import ErrorCode
from gateway.sdk.client import Client, ClientConfig, connect
from gateway.sdk.session import Answer, ClientSession, SessionEvent
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.wire import frames as f
from gateway.wire.codec import encode_client_frame
from gateway.wire.framing import delimit, encode_varint
from tests.conftest import chat_url, server_config
from tests.e2e.test_chat import raw_send
from tests.fuzz.strategies import hostile_streams

ROOM = "lobby"
CHATTERS = 4
RATE_PER_CHATTER_S = 20.0
MESSAGES_PER_ROUND = 30  # 1.5 s of chat: 4 x 4 x 30 = 480 latency samples per round
WARMUP_MESSAGES = 10
ROUNDS = "ABABABABAB"
ATTACKERS = 2
ATTACK_INTERVAL_S = 0.025
MAX_SESSIONS_PER_ATTACK = 40  # per attacker and B round (it lasts ~2 s)
HOSTILE_SAMPLES = 100
P99_FLOOR_S = 0.100
TIMEOUT_S = 20.0
STOP_GRACE_S = 0.5  # how long sessions under way may go on once a round's attack stops
REPO_ROOT = Path(__file__).resolve().parents[2]  # where `python -m tests...` runs

# ---- the chatters ---------------------------------------------------------------------------------


@dataclass
class Chatter:
    """A well-behaved client: what it sent, and what it was delivered (with latencies)."""

    name: str
    client: Client
    sent: int = 0
    seen: dict[str, list[int]] = field(default_factory=dict)  # sender -> indices, as delivered
    latencies: dict[int, list[float]] = field(default_factory=dict)  # round -> seconds


async def listen(chatter: Chatter, names: frozenset[str]) -> None:
    """Record every chatter's message delivered to ``chatter`` (attackers' messages are ignored)."""
    loop = asyncio.get_running_loop()
    async for event in chatter.client.messages():
        message = event.message
        if message.sender not in names:
            continue
        round_no, index, sent_at = message.body.decode().split()
        chatter.seen.setdefault(message.sender, []).append(int(index))
        chatter.latencies.setdefault(int(round_no), []).append(loop.time() - float(sent_at))


async def talk(chatter: Chatter, round_no: int, count: int, offset_s: float) -> None:
    """Publish ``count`` messages at RATE_PER_CHATTER_S on a fixed schedule (no drift)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + offset_s
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / RATE_PER_CHATTER_S - loop.time()))
        body = f"{round_no} {chatter.sent} {loop.time()!r}".encode()
        await chatter.client.publish(ROOM, body)
        chatter.sent += 1


def all_delivered(chatters: Sequence[Chatter]) -> bool:
    return all(len(r.seen.get(s.name, ())) >= s.sent for r in chatters for s in chatters)


def p99(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


# ---- the attackers --------------------------------------------------------------------------------


class ErrorLog(ClientSession):
    """A client session that keeps every Error frame the gateway sends it, in order."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)
        self.errors: list[f.Error] = []

    def receive_data(self, data: bytes, now: float) -> list[SessionEvent]:
        events = super().receive_data(data, now)
        for event in events:
            if isinstance(event, Answer) and isinstance(event.frame, f.Error):
                self.errors.append(event.frame)
        return events


@dataclass
class Probe:
    """One attacker session: what it sent, what it expects back, what it got."""

    hostile: bool  # hypothesis garbage: any outcome within the rules
    actions: list[str]
    ending: str
    errors: list[f.Error] = field(default_factory=list)
    closed: bool = False  # the gateway ended the session
    stopped: bool = False  # the gateway stopped our stream: it closed the session, and says why
    done: bool = False  # ran to its end (not cut short when the round's attack stopped)

    def to_json(self) -> str:
        errors = [(int(e.code), e.fatal, e.message) for e in self.errors]
        return json.dumps({**dataclasses.asdict(self), "errors": errors})

    @classmethod
    def from_json(cls, line: bytes) -> Probe:
        fields = json.loads(line)
        errors = [f.Error(ErrorCode(c), m, 0, fatal) for c, fatal, m in fields.pop("errors")]
        return cls(**fields, errors=errors)


def _frame(frame: f.ClientFrame) -> bytes:
    return delimit(encode_client_frame(frame))


def nonfatal(shard: int) -> dict[str, tuple[bytes, ErrorCode]]:
    """Well-framed garbage a session survives (for a lobby ``shard``), and the error it earns.
    Request ids are far above the SDK's own: no answer is taken for one of its requests."""
    publish = functools.partial(f.Publish, 90_001, ROOM, "", b"x", f.Priority.NORMAL)
    fetch = functools.partial(f.Fetch, 90_002, ROOM)
    big = b"x" * 20_000  # over max_body_bytes (16 KiB), under max_frame_bytes (64 KiB)
    return {
        "unknown_kind": (delimit(b"\x78\x01"), ErrorCode.UNKNOWN_FRAME),  # field 15
        "undecodable": (b"\x03\xff\xff\xff", ErrorCode.MALFORMED_FRAME),
        "clock_names_no_shard": (_frame(publish({shard + 9999: 1})), ErrorCode.BAD_VECTOR_CLOCK),
        "clock_from_future": (_frame(publish({shard: 10**12})), ErrorCode.BAD_VECTOR_CLOCK),
        "fetch_beyond_log": (_frame(fetch(shard, 10**12, 10**12)), ErrorCode.OUT_OF_RANGE),
        "fetch_no_shard": (_frame(fetch(shard + 9999, 1, 9)), ErrorCode.OUT_OF_RANGE),
        "body_too_large": (_frame(f.Publish(90_003, ROOM, "", big)), ErrorCode.BODY_TOO_LARGE),
        "not_joined": (_frame(f.Publish(90_004, "elsewhere", "", b"x")), ErrorCode.NOT_JOINED),
    }


NONFATAL = {action: code for action, (_, code) in nonfatal(1).items()}
# How a clean session ends (what it sends) and the fatal error it must get for it.
ENDINGS: dict[str, tuple[bytes, ErrorCode]] = {
    "oversized": (encode_varint(1 << 20) + b"x" * 100, ErrorCode.FRAME_TOO_LARGE),
    "bad_varint": (b"\xff" * 8, ErrorCode.MALFORMED_FRAME),
    "reset_mid_frame": (b"\x10abc", ErrorCode.MALFORMED_FRAME),  # then RESET_STREAM
    "fin_mid_frame": (b"\x10abc", ErrorCode.MALFORMED_FRAME),  # with the FIN
    "error_budget": (delimit(b"\x78\x01") * 25, ErrorCode.UNKNOWN_FRAME),  # > max_errors (20)
}
JOIN_FLOOD = 60  # more than the default join burst (50): the tail is RATE_LIMITED if it comes fast
# What a hostile stream may earn: protocol and limit errors, never the gateway's own failure.
LIMITS = {ErrorCode.BODY_TOO_LARGE, ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_ROOMS}
HOSTILE_CODES = {c for c in ErrorCode if 1000 <= c < 2000} | LIMITS


def hostile_pool(count: int) -> list[bytes]:
    """``count`` hostile streams from the fuzzers' strategy, the same ones on every run."""
    pool: list[bytes] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_streams)
    def draw(data: bytes) -> None:
        if data:
            pool.append(data)

    draw()
    return pool


class Attacker:
    """Opens session after session, each sending garbage until the gateway closes it."""

    def __init__(
        self, url: str, ca_file: Path, seed: int, pool: list[bytes], endings: Iterator[str]
    ) -> None:
        self.url = url
        self.ca_file = ca_file
        self.seed = seed
        self.rng = random.Random(seed)
        self.pool = pool
        self.endings = endings  # shared: together the attackers try every ending soon
        self.probes: list[Probe] = []

    async def run(self, stop: asyncio.Event) -> None:
        for _ in range(MAX_SESSIONS_PER_ATTACK):
            if stop.is_set():
                return
            await self._session(self._plan(len(self.probes)))

    def _plan(self, n: int) -> Probe:
        if n % 2:
            return Probe(True, ["hostile"] * self.rng.randint(2, 6), "reset_mid_frame")
        actions = self.rng.choices(list(NONFATAL), k=self.rng.randint(3, 8))
        if self.rng.random() < 0.4:
            actions.append("join_flood")
        return Probe(False, actions, next(self.endings))

    async def _session(self, probe: Probe) -> None:
        self.probes.append(probe)
        name = f"mallory-{self.seed}-{len(self.probes)}"
        client = Client(self.url, ClientConfig(name=name, ca_file=self.ca_file, reconnect=False))
        log = client.session = ErrorLog(name)
        try:
            await client._open()
            shard = (await client.join(ROOM)).shard_maps[-1].shards[0]
            for action in probe.actions:
                if not client.connected or probe.stopped:
                    break
                probe.stopped = not self._send(client, self._garbage(action, shard, name))
                await asyncio.sleep(ATTACK_INTERVAL_S)
            if client.connected and not probe.stopped:
                probe.stopped = not await self._end(client, probe.ending)
            # A hostile stream may leave the session open (its last frame complete at the reset).
            patience_s = 1.0 if probe.hostile and not probe.stopped else TIMEOUT_S
            await until(lambda: not client.connected, patience_s)
            probe.done = True
        finally:
            probe.errors, probe.closed = log.errors, not client.connected
            await client.close()

    def _garbage(self, action: str, shard: int, name: str) -> bytes:
        if action == "hostile":
            return self.rng.choice(self.pool)
        if action == "join_flood":
            return b"".join(_frame(f.Join(91_000 + i, f"{name}-{i}")) for i in range(JOIN_FLOOD))
        return nonfatal(shard)[action][0]

    def _send(self, client: Client, data: bytes) -> bool:
        """Send ``data`` in up to three pieces, each its own write, as a network might cut it.
        False if the gateway stopped the stream (it does once it has closed the session)."""
        cuts = sorted(self.rng.randint(0, len(data)) for _ in range(self.rng.randint(0, 2)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        return all(write(client, piece) for piece in pieces if piece)

    async def _end(self, client: Client, ending: str) -> bool:
        fin = ending == "fin_mid_frame"
        if not write(client, ENDINGS[ending][0], end_stream=fin):
            return False
        if ending == "reset_mid_frame":
            await asyncio.sleep(ATTACK_INTERVAL_S)
            link = client._link
            if link is not None:
                link.protocol._quic.reset_stream(link.frame_stream, 0x10C)
                link.protocol.transmit()
        return True


def write(client: Client, data: bytes, *, end_stream: bool = False) -> bool:
    """Write raw bytes on the session's stream; False if the gateway stopped it."""
    link = client._link
    assert link is not None
    if not send_stream_data(link.protocol._quic, link.frame_stream, data, end_stream):
        return False
    link.protocol.transmit()
    return True


class AttackProcess:
    """The attackers' process. It says ``ready``; a ``go`` line starts an attack and a ``stop``
    line ends it (it says ``stopped`` once no session is left); at the end of its input it prints
    each session's Probe as a JSON line, and exits."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, url: str, ca_file: Path) -> AttackProcess:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.e2e.test_garbage_live", url, str(ca_file)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        return cls(process)  # it says ``ready`` once it is: expect() it before ``go``

    def say(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + b"\n")

    async def expect(self, line: bytes) -> None:
        assert self.process.stdout is not None
        answer = await asyncio.wait_for(self.process.stdout.readline(), TIMEOUT_S * 2)
        assert answer == line + b"\n", answer

    async def finish(self) -> list[Probe]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        out, _ = await asyncio.wait_for(self.process.communicate(), TIMEOUT_S)
        assert self.process.returncode == 0
        return [Probe.from_json(line) for line in out.splitlines()]


async def attack_main(url: str, ca_file: Path) -> None:
    """The attacker process (see AttackProcess)."""
    logging.basicConfig(level=logging.ERROR)  # each closed session is an SDK warning: expected
    pool = hostile_pool(HOSTILE_SAMPLES)
    os.nice(5)  # it stands for other machines: it should take less of the CPU than the test
    endings = itertools.cycle(ENDINGS)
    attackers = [Attacker(url, ca_file, seed, pool, endings) for seed in range(ATTACKERS)]
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    print("ready", flush=True)
    while await commands.readline() == b"go\n":
        stop = asyncio.Event()
        attacks = [asyncio.create_task(a.run(stop)) for a in attackers]
        await commands.readline()
        stop.set()  # sessions under way may finish, for a moment; then they are cut short
        await asyncio.wait(attacks, timeout=STOP_GRACE_S)
        for attack in attacks:
            attack.cancel()
        await asyncio.wait(attacks)
        for attack in attacks:  # a failure of the attacker itself is the test's failure
            if not attack.cancelled() and (error := attack.exception()) is not None:
                raise error
        print("stopped", flush=True)
    for probe in (p for a in attackers for p in a.probes):
        print(probe.to_json(), flush=True)


def check_clean(probe: Probe) -> None:
    """Exactly the Error frames the actions call for, in order; then the ending's, fatal."""
    flood = probe.actions.count("join_flood")
    expected = [NONFATAL[a] for a in probe.actions if a != "join_flood"]
    codes = [e.code for e in probe.errors if e.code is not ErrorCode.RATE_LIMITED]
    limited = len(probe.errors) - len(codes)
    assert probe.closed and not probe.stopped, probe
    assert limited <= JOIN_FLOOD * flood, probe  # how many: when its packets arrived
    assert codes[: len(expected)] == expected, probe
    tail = codes[len(expected) :]
    fatal_code = ENDINGS[probe.ending][1]
    assert tail and all(c is fatal_code for c in tail), probe
    assert len(tail) == 1 or probe.ending == "error_budget", probe
    assert [e.fatal for e in probe.errors] == [False] * (len(probe.errors) - 1) + [True], probe


def check_hostile(probe: Probe) -> None:
    """Only protocol and limit errors; at most one fatal, and nothing after it; the session was
    closed exactly when a fatal error said so, and stopped only if closed."""
    assert {e.code for e in probe.errors} <= HOSTILE_CODES, probe
    fatal = [i for i, e in enumerate(probe.errors) if e.fatal]
    assert fatal in ([], [len(probe.errors) - 1]), probe
    assert probe.closed == bool(fatal) and (probe.closed or not probe.stopped), probe


def check_attackers(all_probes: Sequence[Probe]) -> None:
    """Every session that ran to its end got its typed errors; every ending was tried; the
    attackers reconnected (as many sessions as attackers and B rounds, at least)."""
    probes = [p for p in all_probes if p.done]
    for probe in probes:
        (check_hostile if probe.hostile else check_clean)(probe)
    assert len(probes) >= ATTACKERS * ROUNDS.count("B"), len(probes)
    assert {p.ending for p in probes if not p.hostile} == set(ENDINGS)
    assert any(p.errors for p in probes if p.hostile)
    codes = Counter(e.code.name for p in probes for e in p.errors)
    stopped = sum(p.stopped for p in probes)
    print(f"attacker sessions {len(all_probes)} ({len(probes)} to the end), {stopped} stopped")
    print(f"errors the attackers got: {dict(codes)}")


# ---- the test -------------------------------------------------------------------------------------


async def until(predicate: Callable[[], bool], timeout_s: float) -> None:
    """Wait (polling) until ``predicate()``; on timeout return quietly: the caller asserts."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while not predicate():  # noqa: ASYNC110 - polls state that has no event to await
                await asyncio.sleep(0.01)


async def chat_round(
    server: GatewayServer,
    chatters: Sequence[Chatter],
    round_no: int,
    attack: AttackProcess | None = None,
) -> float:
    """One round of chat (under ``attack`` if given); returns the chatters' p99 latency.

    Returns once every message is delivered and every attacker session and connection is gone,
    so that no round's traffic spills into the next."""
    if attack is not None:
        attack.say(b"go")
        await asyncio.sleep(0.2)  # the attack is under way before the chat starts
    count = MESSAGES_PER_ROUND if round_no else WARMUP_MESSAGES
    spread_s = 1 / RATE_PER_CHATTER_S / len(chatters)
    await asyncio.gather(*(talk(c, round_no, count, i * spread_s) for i, c in enumerate(chatters)))
    await until(lambda: all_delivered(chatters), TIMEOUT_S)
    assert all_delivered(chatters), f"round {round_no}: deliveries are missing"
    if attack is not None:
        attack.say(b"stop")
        await attack.expect(b"stopped")

    def quiet() -> bool:
        return server.hub.session_count == server.connection_count == len(chatters)

    await until(quiet, TIMEOUT_S)
    assert quiet(), (server.hub.session_count, server.connection_count)
    latencies = [x for c in chatters for x in c.latencies.get(round_no, ())]
    assert len(latencies) == len(chatters) ** 2 * count
    return p99(latencies)


async def chat_under_attack(
    server: GatewayServer, ca_file: Path, attack: AttackProcess
) -> dict[str, list[float]]:
    """Chatters join, warm up, then chat through ROUNDS; returns each phase's per-round p99s."""
    url = chat_url(server)
    names = [f"chatter-{i}" for i in range(CHATTERS)]
    p99s: dict[str, list[float]] = {"A": [], "B": []}
    async with contextlib.AsyncExitStack() as stack:
        chatters = []
        for name in names:
            client = await stack.enter_async_context(connect(url, name=name, ca_file=ca_file))
            await client.join(ROOM)
            chatters.append(Chatter(name, client))
        listeners = [asyncio.create_task(listen(c, frozenset(names))) for c in chatters]
        await chat_round(server, chatters, 0)
        await attack.expect(b"ready")  # it started with the test: its set-up is in no round
        for round_no, phase in enumerate(ROUNDS, start=1):
            under = attack if phase == "B" else None
            p99s[phase].append(await chat_round(server, chatters, round_no, under))
        check_chatters(chatters)
        for listener in listeners:
            listener.cancel()
    return p99s


def check_chatters(chatters: Sequence[Chatter]) -> None:
    """Each chatter got every chatter's messages once, in order, and never an error or a gap."""
    for receiver in chatters:
        for sender in chatters:
            indices = receiver.seen[sender.name]
            assert indices == list(range(sender.sent)), (receiver.name, sender.name)
        stats = receiver.client.stats
        assert (stats.errors, stats.reconnects, stats.skipped, stats.missed) == (0, 0, 0, 0)


async def check_still_serving(server: GatewayServer, ca_file: Path) -> None:
    async with connect(chat_url(server), name="newcomer", ca_file=ca_file) as newcomer:
        await newcomer.join(ROOM)
        ack = await newcomer.publish(ROOM, b"still here?")
        event = await asyncio.wait_for(anext(newcomer.messages()), TIMEOUT_S)
        assert (event.message.sender, event.message.seq) == ("newcomer", ack.seq)


def check_latency(p99s: dict[str, list[float]]) -> None:
    """Median p99 under attack within max(2 x, + P99_FLOOR_S) of the median p99 without."""
    baseline, attacked = statistics.median(p99s["A"]), statistics.median(p99s["B"])
    allowed = max(2 * baseline, baseline + P99_FLOOR_S)
    figures = {k: [round(x * 1000, 1) for x in v] for k, v in p99s.items()}
    print(f"p99 ms per round {figures}; median A {baseline * 1000:.1f}, B {attacked * 1000:.1f}")
    assert attacked <= allowed, f"p99 under attack {attacked:.3f} s > {allowed:.3f} s: {figures}"


async def test_garbage_senders_cost_chatters_no_messages_and_little_latency(
    certs: CertPaths, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = GatewayServer(server_config(certs, core=CoreConfig()))  # the default limits
    await server.start()
    attack = None
    try:
        attack = await AttackProcess.start(chat_url(server), ca_file)
        p99s = await chat_under_attack(server, ca_file, attack)
        check_attackers(await attack.finish())
        await check_still_serving(server, ca_file)
        assert server.hub.stats.errors.get("INTERNAL", 0) == 0
    finally:
        if attack is not None and attack.process.returncode is None:
            attack.process.kill()
        await server.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    check_latency(p99s)


# ---- a bug the live test found --------------------------------------------------------------------


async def test_a_fatal_error_reaches_a_client_whose_bytes_were_in_flight(
    gateway: GatewayServer, ca_file: Path
) -> None:
    """The client breaks framing and, in the next datagram, sends more: it must still be told why
    it is closed. The gateway's stream to it is busy (a replay of the room is queued), so the
    Error frame is still queued when the trailing bytes arrive; the gateway used to answer those
    by resetting the stream, which discarded the Error and the FIN."""
    url = chat_url(gateway)
    async with connect(url, name="busy", ca_file=ca_file) as busy:
        await busy.join(ROOM)
        await asyncio.gather(*(busy.publish(ROOM, b"y" * 1000) for _ in range(100)))
        client = Client(url, ClientConfig(name="m", ca_file=ca_file, reconnect=False))
        log = client.session = ErrorLog("m")
        try:
            await client._open()
            joined = await client.join(ROOM)
            replay = f.Join(99, ROOM, f.Cursor(1, {}, joined.incarnation))  # the room's history
            raw_send(client, _frame(replay) + b"\xff" * 8)  # then unframeable: fatal
            raw_send(client, delimit(b"\x78\x01"))  # and one more frame, in the next datagram
            await until(lambda: not client.connected, 5.0)
            assert [(e.code, e.fatal) for e in log.errors] == [(ErrorCode.MALFORMED_FRAME, True)]
            assert not client.connected
        finally:
            await client.close()


if __name__ == "__main__":
    asyncio.run(attack_main(sys.argv[1], Path(sys.argv[2])))
