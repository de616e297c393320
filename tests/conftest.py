"""Shared fixtures: dev certificates made once per run, and a real gateway on 127.0.0.1:0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.auth import AuthConfig
from gateway.core.config import CoreConfig
from gateway.core.limits import LimitsConfig
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths, ensure_dev_certs
from gateway.server.config import ServerConfig
from gateway.store.base import StoreConfig


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return ensure_dev_certs(tmp_path_factory.mktemp("certs"))


# Tests drive synthetic publishers far faster than a person types: lift the per-user rates.
GENEROUS = LimitsConfig(
    publish_rate_per_connection_per_s=100_000,
    publish_burst_per_connection=100_000,
    join_rate_per_connection_per_s=1000,
    join_burst_per_connection=1000,
    fetch_rate_per_connection_per_s=1000,
    fetch_burst_per_connection=1000,
)


def server_config(certs: CertPaths, core: CoreConfig | None = None, **kw: object) -> ServerConfig:
    """A loopback gateway on free ports with the test certificates; ``kw`` overrides fields."""
    fields: dict[str, object] = {
        "host": "127.0.0.1",
        "port": 0,
        "certificate_file": certs.cert,
        "private_key_file": certs.key,
        "core": core or CoreConfig(limits=GENEROUS),
        "admin_port": 0,
        "store": StoreConfig(kind="memory"),
        "auth": AuthConfig(mode="insecure-dev"),
    }
    fields.update(kw)
    return ServerConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def gateway(certs: CertPaths) -> AsyncIterator[GatewayServer]:
    server = GatewayServer(server_config(certs))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def chat_url(server: GatewayServer) -> str:
    host, port = server.address
    return f"https://{host}:{port}/v1/chat"


@pytest.fixture
def ca_file(certs: CertPaths) -> Path:
    return certs.ca_cert
