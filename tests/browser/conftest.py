"""Fixtures for the browser tests: Debian's Chromium (skipped only when it is not installed) and a
real gateway on loopback with the chat page installed on its admin port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.core.config import CoreConfig
from gateway.server import webapp
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths
from tests.browser.cdp import Browser, find_chromium
from tests.conftest import server_config

StartGateway = Callable[..., Awaitable[GatewayServer]]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip(
            "chromium is not installed: `make test-browser` (or scripts/ensure-chromium.sh) "
            "installs Debian's package; set $CHROMIUM to use another binary"
        )
    return path


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Browser]:
    """A fresh headless Chromium with its own profile; its stderr is printed at teardown (pytest
    shows it when the test failed)."""
    stderr_file = tmp_path / "chromium-stderr.txt"
    instance = await Browser.launch(chromium, tmp_path / "profile", stderr_file=stderr_file)
    try:
        yield instance
    finally:
        await instance.close()
        with contextlib.suppress(OSError):
            print("---- chromium stderr (tail) ----")
            print(stderr_file.read_text(errors="replace")[-4000:])


@pytest.fixture
async def start_gateway(certs: CertPaths) -> AsyncIterator[StartGateway]:
    """``await start_gateway(core, **server_config_fields)``: a gateway (on ports the OS picks,
    unless given) with the chat page installed; closed at teardown."""
    servers: list[GatewayServer] = []

    async def start(core: CoreConfig, **fields: object) -> GatewayServer:
        server = GatewayServer(server_config(certs, core, **fields))
        await server.start()
        servers.append(server)
        assert server.admin is not None
        webapp.install(
            server.admin,
            cert_file=certs.cert,
            quic_port=lambda: server.address[1],
            chat_path=server.config.chat_path,
            quic_host=lambda: server.address[0],
        )
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


def page_url(server: GatewayServer, *, host: str | None = None) -> str:
    """The chat page's URL on the gateway's admin port (``host`` overrides the bound address)."""
    assert server.admin is not None
    bound, port = server.admin.address
    return f"http://{host or bound}:{port}/"
