"""The chat page's routes on the admin port, checked over plain TCP (no browser needed)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import pytest

from gateway.core.config import CoreConfig
from gateway.server import webapp
from gateway.server.admin import AdminServer, Reply
from gateway.server.app import GatewayServer
from gateway.server.certs import CertPaths, certificate_sha256
from tests.browser.conftest import StartGateway

TIMEOUT_S = 20.0


async def http_get(server: GatewayServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from the admin port; the server closes after one reply."""
    assert server.admin is not None
    host, port = server.admin.address
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT_S)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), TIMEOUT_S)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("path", "content_type", "file"),
    [
        ("/", "text/html", webapp.WEB_DIR / "index.html"),
        ("/app.js", "text/javascript", webapp.WEB_DIR / "app.js"),
        ("/reconcile.js", "text/javascript", webapp.WEB_DIR / "reconcile.js"),
        ("/framing.js", "text/javascript", webapp.WEB_DIR / "framing.js"),
        ("/style.css", "text/css", webapp.WEB_DIR / "style.css"),
        ("/vendor/protobuf.min.js", "text/javascript", webapp.WEB_DIR / "vendor/protobuf.min.js"),
        ("/skein/v1/frames.proto", "text/plain", webapp.SCHEMA_FILE),
    ],
)
async def test_static_routes_serve_the_files(
    start_gateway: StartGateway, path: str, content_type: str, file: Path
) -> None:
    server = await start_gateway(CoreConfig())
    status, headers, body = await http_get(server, path)
    assert status == 200
    assert headers["content-type"].startswith(content_type)
    assert headers["x-content-type-options"] == "nosniff"
    assert body == await asyncio.to_thread(file.read_bytes)


async def test_cert_hash_names_the_certificate_port_and_path(
    start_gateway: StartGateway, certs: CertPaths
) -> None:
    server = await start_gateway(CoreConfig())
    status, headers, body = await http_get(server, "/v1/cert-hash")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "host": "127.0.0.1",
        "path": "/v1/chat",
        "port": server.address[1],
        "sha256": certificate_sha256(certs.cert).hex(),
    }


async def test_the_readme_and_license_are_not_served(start_gateway: StartGateway) -> None:
    server = await start_gateway(CoreConfig())
    for path in ("/README.md", "/vendor/protobuf.LICENSE", "/web/app.js"):
        assert (await http_get(server, path))[0] == 404


@pytest.mark.parametrize(
    ("bound", "named"), [("0.0.0.0", ""), ("::", ""), ("::1", "::1"), (None, "")]
)
def test_cert_hash_names_only_a_specific_quic_host(
    certs: CertPaths, bound: str | None, named: str
) -> None:
    admin = AdminServer("127.0.0.1", 0)
    webapp.install(
        admin,
        cert_file=certs.cert,
        quic_port=lambda: 4433,
        chat_path="/chat",
        quic_host=None if bound is None else (lambda: bound),
    )
    reply = admin.routes["/v1/cert-hash"]("")
    assert isinstance(reply, Reply)
    assert json.loads(reply.body)["host"] == named


def test_install_refuses_a_missing_certificate(tmp_path: Path) -> None:
    admin = AdminServer("127.0.0.1", 0)
    with pytest.raises(FileNotFoundError):
        webapp.install(
            admin, cert_file=tmp_path / "nope.pem", quic_port=lambda: 4433, chat_path="/v1/chat"
        )


def test_page_refers_only_to_served_paths(certs: CertPaths) -> None:
    """Every URL the page loads (script, style, fetch, import) is one of the routes."""
    admin = AdminServer("127.0.0.1", 0)
    webapp.install(admin, cert_file=certs.cert, quic_port=lambda: 4433, chat_path="/v1/chat")
    html = (webapp.WEB_DIR / "index.html").read_text()
    js = (webapp.WEB_DIR / "app.js").read_text()
    used = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    used |= set(re.findall(r'fetch\("([^"]+)"\)', js))
    used |= set(re.findall(r'from "\./([^"]+)"', js))
    assert used == {
        "style.css",
        "vendor/protobuf.min.js",
        "app.js",
        "skein/v1/frames.proto",
        "v1/cert-hash",
        "reconcile.js",
        "framing.js",
    }
    assert {f"/{u}" for u in used} <= set(admin.routes)


def test_vendored_protobuf_matches_its_readme() -> None:
    """gateway/web/README.md names the exact file vendored (version and SHA-256)."""
    readme = (webapp.WEB_DIR / "README.md").read_text()
    vendored = (webapp.WEB_DIR / "vendor" / "protobuf.min.js").read_bytes()
    assert hashlib.sha256(vendored).hexdigest() in readme
    version = re.search(rb"protobuf\.js v(\d+\.\d+\.\d+)", vendored)
    assert version is not None and f"protobufjs@{version[1].decode()}" in readme
    assert (
        "Copyright (c) 2016, Daniel Wirtz"
        in (webapp.WEB_DIR / "vendor/protobuf.LICENSE").read_text()
    )
