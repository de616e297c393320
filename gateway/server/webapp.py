"""The browser chat page: static files and the certificate hash, served on the admin HTTP port.

Browsers load pages over TCP, so the page lives on the admin port (plain HTTP; ``127.0.0.1`` and
``localhost`` are secure contexts, where ``WebTransport`` exists) and opens its WebTransport
session to the QUIC port. It pins the development certificate with ``serverCertificateHashes``
(an ECDSA certificate valid for at most 14 days), whose hash it learns from ``/v1/cert-hash``.

Routes (all GET, exact paths):

- ``/``: the chat page (``gateway/web/index.html``), and ``/style.css``;
- ``/app.js``, ``/framing.js``, ``/reconcile.js``: its code, ES modules with no build step;
- ``/vendor/protobuf.min.js``: protobuf.js, vendored (``gateway/web/README.md`` says which);
- ``/skein/v1/frames.proto``: the schema, which the page parses when it loads;
- ``/v1/cert-hash``: JSON ``{"host", "path", "port", "sha256"}`` (below).

``/v1/cert-hash`` answers ``sha256`` (hex SHA-256 of the DER certificate), ``port`` and ``path``
of the WebTransport endpoint, and ``host``: the address the QUIC socket is bound to, or ``""``
when it is a wildcard (``0.0.0.0``, ``::``) or unknown, in which case the page uses its own host
name. The page needs it when it was loaded as ``localhost``: Chromium resolves that to ``::1``
first for QUIC and does not fall back, so a gateway on ``127.0.0.1`` would be unreachable.

The page parses the same ``frames.proto`` the Python code is generated from, so the two cannot
drift apart and there is no generated JavaScript or JSON descriptor to keep up to date.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gateway.server.admin import AdminServer, Reply
from gateway.server.certs import certificate_sha256

__all__ = ["CERT_HASH_PATH", "SCHEMA_FILE", "WEB_DIR", "install"]

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "skein" / "v1" / "frames.proto"
CERT_HASH_PATH = "/v1/cert-hash"

_JS = "text/javascript; charset=utf-8"
# route -> (file, content type). Everything else under gateway/web/ (README, licence) is not served.
_FILES: dict[str, tuple[Path, str]] = {
    "/": (WEB_DIR / "index.html", "text/html; charset=utf-8"),
    "/app.js": (WEB_DIR / "app.js", _JS),
    "/reconcile.js": (WEB_DIR / "reconcile.js", _JS),
    "/framing.js": (WEB_DIR / "framing.js", _JS),
    "/style.css": (WEB_DIR / "style.css", "text/css; charset=utf-8"),
    "/vendor/protobuf.min.js": (WEB_DIR / "vendor" / "protobuf.min.js", _JS),
    "/skein/v1/frames.proto": (SCHEMA_FILE, "text/plain; charset=utf-8"),
}
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# The files are ours and small; nosniff keeps a browser from reinterpreting any of them.
_HEADERS = (("X-Content-Type-Options", "nosniff"),)


def install(
    admin: AdminServer,
    *,
    cert_file: Path,
    quic_port: Callable[[], int],
    chat_path: str,
    quic_host: Callable[[], str] | None = None,
) -> None:
    """Add the chat page's routes (see the module docstring) to ``admin``.

    Reads every file and hashes ``cert_file`` now, once: call it with the certificate the QUIC
    server loaded, when it loads it (the gateway reads its certificate once, at start, so a file
    renewed on disk later is not what clients see until a restart, and neither is its hash).
    ``quic_port`` and ``quic_host`` (the QUIC socket's address; None if unknown) are called on
    every ``/v1/cert-hash`` request, so the socket may be bound after this.
    Raises ``OSError`` if a file is missing and ``ValueError`` if ``cert_file`` holds no
    certificate. Routes already present under the same paths are replaced.
    """
    for path, (file, content_type) in _FILES.items():
        admin.routes[path] = _static(Reply(200, content_type, file.read_bytes(), _HEADERS))
    digest = certificate_sha256(cert_file).hex()

    def cert_hash(_query: str) -> Reply:
        host = quic_host() if quic_host is not None else ""
        body = {
            "host": "" if host in _WILDCARDS else host,
            "path": chat_path,
            "port": quic_port(),
            "sha256": digest,
        }
        return Reply(200, "application/json", json.dumps(body, sort_keys=True).encode(), _HEADERS)

    admin.routes[CERT_HASH_PATH] = cert_hash


def _static(reply: Reply) -> Callable[[str], Reply]:
    return lambda _query: reply
