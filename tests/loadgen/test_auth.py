"""loadgen against a gateway that checks tokens: each client minted its own, or one shared.

Real gateway (jwt mode, an HS256 secret), real worker processes and SDK clients; what the gateway
stored shows who it thought sent each message. Counts and contents only, never speed.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.auth import AuthConfig, Authenticator
from gateway.errors import GatewayError
from gateway.sdk.http import get_json
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from gateway.tokens import mint
from loadgen.auth import TokenSource, read_secret_file, room_pattern
from loadgen.cli import main as cli_main
from loadgen.payload import decode_body
from loadgen.runner import LoadgenError, RunOptions, RunResult, run_load
from loadgen.scenario import parse_scenario
from tests.conftest import chat_url, server_config

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
SCENARIO = {
    "name": "auth",
    "clients": 6,
    "duration_s": 3.0,
    "drain_s": 15.0,
    "seed": 4,
    "rooms": {"count": 2, "prefix": "auth", "per_client": 2},
    "publish": {"rate_per_client_per_s": 4.0, "priorities": {"normal": 1, "high": 1}},
}


@pytest.fixture
async def jwt_gateway(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    config = server_config(certs, auth=AuthConfig(mode="jwt", hs256_secrets=(SECRET,)))
    server = GatewayServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def _options(gateway: GatewayServer, ca_file: Path, tokens: TokenSource | None) -> RunOptions:
    return RunOptions(target_url=chat_url(gateway), ca_file=ca_file, workers=2, tokens=tokens)


async def _senders(gateway: GatewayServer, ca_file: Path, result: RunResult) -> dict[int, str]:
    """Publisher index (from the body) -> sender name the gateway stored, over every room."""
    host, port = gateway.address
    reader = mint(sub="reader", join=["*"], publish=[], ttl_s=600, now=time.time(), secret=SECRET)
    senders: dict[int, str] = {}
    for room in result.expected.reliable:
        url = f"https://{host}:{port}/v1/rooms/{room}/messages?limit=1000"
        status, page = await get_json(url, ca_file=ca_file, token=reader)
        assert status == 200, page
        for message in page["messages"]:
            payload = decode_body(base64.b64decode(message["body"]))
            assert payload is not None
            senders[payload.publisher] = message["sender"]
    return senders


async def test_each_client_presents_its_own_token(
    jwt_gateway: GatewayServer, ca_file: Path
) -> None:
    scenario = parse_scenario(SCENARIO)
    result = await run_load(scenario, _options(jwt_gateway, ca_file, TokenSource(secret=SECRET)))

    run = result.summary
    assert run["clients"]["connected"] == 6, run["clients"]
    delivery = run["delivery"]
    assert delivery["acked"]["high"] > 0 and delivery["reliable"]["expected"] > 0
    assert delivery["reliable"]["lost"] == 0 and delivery["reliable_loss"] == 0
    assert run["checks"]["passed"], run["checks"]
    # The gateway names each message's sender by the token's sub: the client's own name.
    run_id = next(iter(result.expected.reliable)).split("-")[1]
    senders = await _senders(jwt_gateway, ca_file, result)
    assert senders and senders == {i: f"lg-{run_id}-{i}" for i in senders}


async def test_one_shared_token_for_every_client(jwt_gateway: GatewayServer, ca_file: Path) -> None:
    scenario = parse_scenario(SCENARIO)
    token = mint(
        sub="shared", join=["auth-*"], publish=["auth-*"], ttl_s=600, now=time.time(), secret=SECRET
    )
    result = await run_load(scenario, _options(jwt_gateway, ca_file, TokenSource(token=token)))

    assert result.summary["clients"]["connected"] == 6
    assert result.summary["delivery"]["reliable"]["lost"] == 0
    assert set((await _senders(jwt_gateway, ca_file, result)).values()) == {"shared"}


async def test_without_a_token_no_client_gets_in(jwt_gateway: GatewayServer, ca_file: Path) -> None:
    scenario = parse_scenario({**SCENARIO, "clients": 2})
    with pytest.raises(LoadgenError, match="no client could connect"):
        await run_load(scenario, _options(jwt_gateway, ca_file, None))


def test_a_minted_token_names_the_client_and_its_rooms() -> None:
    token = TokenSource(secret=SECRET).for_client("lg-ab12-3", room_pattern("demo", "ab12"), 1e9)
    principal = Authenticator(AuthConfig(hs256_secrets=(SECRET,))).authenticate(token, 1e9 + 60)
    assert principal.sub == "lg-ab12-3"
    assert principal.may_join("demo-ab12-0") and principal.may_publish("demo-ab12-5")
    assert not principal.may_join("demo-cd34-0") and not principal.may_publish("lobby")
    with pytest.raises(GatewayError):  # expired after its ttl (an hour) and the leeway
        Authenticator(AuthConfig(hs256_secrets=(SECRET,))).authenticate(token, 1e9 + 7200)


def test_token_sources_refuse_what_cannot_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenSource()
    with pytest.raises(ValueError, match="exactly one"):
        TokenSource(secret=SECRET, token="x")
    with pytest.raises(ValueError, match="32 bytes"):
        TokenSource(secret="short")
    short = tmp_path / "short"
    short.write_text("short\n")
    with pytest.raises(ValueError, match="32 bytes"):
        read_secret_file(short)
    good = tmp_path / "good"
    good.write_text(f"  {SECRET}\n")
    assert read_secret_file(good) == SECRET


def test_cli_token_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["demo", "--token-secret-file", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--token", "x", "--token-secret-file", str(tmp_path / "f")])
    assert exit_info.value.code == 2
