"""Development certificates: a throwaway CA and a localhost server certificate it signed.

``python -m gateway.server.certs --dir certs`` (what ``make certs`` runs) writes four PEM files:

- ``ca.pem`` / ``ca.key``: an ECDSA P-256 CA, name-constrained to localhost and loopback addresses
  so that even if someone trusts it system-wide it cannot vouch for any real site;
- ``server.pem`` / ``server.key``: an ECDSA P-256 server certificate it signed, for DNS
  ``localhost`` and IPs 127.0.0.1, 127.0.0.2 and ::1, with the serverAuth extended key usage.

Both are valid for 13 days by default and at most 14: browsers accept a certificate pinned by
hash through WebTransport's ``serverCertificateHashes`` only if its validity period is at most two
weeks. :func:`certificate_sha256` gives that hash. Keys are written with mode 0600.

:func:`ensure_dev_certs` is idempotent: it keeps a set that is complete, consistent and valid for
more than :data:`RENEW_BEFORE` longer, and otherwise regenerates all four files. For development
only; production deployments use real certificates (see ``certs/README.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_DAYS",
    "MAX_DAYS",
    "RENEW_BEFORE",
    "SERVER_DNS_NAMES",
    "SERVER_IP_ADDRESSES",
    "CertPaths",
    "certificate_sha256",
    "check_certificate_pair",
    "ensure_dev_certs",
    "main",
]

log = logging.getLogger(__name__)

DEFAULT_DAYS = 13
MAX_DAYS = 14  # the serverCertificateHashes limit: validity period of at most two weeks
RENEW_BEFORE = dt.timedelta(days=2)
SERVER_DNS_NAMES: tuple[str, ...] = ("localhost",)
SERVER_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "127.0.0.2", "::1")

# Backdated so a client whose clock is a little behind still accepts a certificate made just now;
# the validity period (not_after - not_before) still equals exactly ``days``.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where the four PEM files of a development certificate set live (all in one directory)."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path

    def __post_init__(self) -> None:
        parents = {self.ca_cert.parent, self.ca_key.parent, self.cert.parent, self.key.parent}
        if len(parents) != 1:
            raise ValueError("the four certificate files must be in one directory")
        if len({self.ca_cert, self.ca_key, self.cert, self.key}) != 4:
            raise ValueError("the four certificate files must be distinct")

    @classmethod
    def in_directory(cls, directory: Path) -> CertPaths:
        """The standard names: ca.pem, ca.key, server.pem, server.key."""
        return cls(
            ca_cert=directory / "ca.pem",
            ca_key=directory / "ca.key",
            cert=directory / "server.pem",
            key=directory / "server.key",
        )


def certificate_sha256(cert_pem_path: Path) -> bytes:
    """SHA-256 of the DER encoding of the first certificate in a PEM file.

    That is the value WebTransport's ``serverCertificateHashes`` wants (algorithm "sha-256").
    Raises ``OSError`` if the file can't be read and ``ValueError`` if it holds no certificate.
    """
    cert = x509.load_pem_x509_certificate(cert_pem_path.read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()


_PEM_CERT_END = b"-----END CERTIFICATE-----\n"
_PEM_KEY_BEGIN = b"\n-----BEGIN PRIVATE KEY-----\n"  # a key appended to the chain file
_SIGNING_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_FIX = (
    "give certificate_file (--cert) the PEM chain, server certificate first, and "
    "private_key_file (--key) that certificate's unencrypted PEM private key; "
    "`make certs` makes a development pair"
)


def check_certificate_pair(cert_file: Path, key_file: Path) -> x509.Certificate:
    """Load the server's certificate chain and private key as the QUIC engines will, and check
    that the key belongs to the chain's first (server) certificate. Returns that certificate.

    Call it before serving: a pair that doesn't match would otherwise start, report ready, and
    fail every handshake. Raises ``FileNotFoundError`` (saying to run ``make certs``) when a file
    is missing, and ``ValueError`` naming both files and how to fix them for anything else: a
    file that can't be read, holds no certificate (empty, garbage, a key), has text after its last
    certificate (aioquic can't read it), a key that is missing, encrypted, of an unsupported
    type, or not the certificate's.
    """

    def fail(problem: str) -> ValueError:
        return ValueError(f"certificate {cert_file} and private key {key_file}: {problem}; {_FIX}")

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"certificate not found ({path}): run `make certs` for development "
                "certificates, or set certificate_file/private_key_file (--cert/--key)"
            ) from None
        except OSError as exc:
            raise fail(f"cannot read {path}: {exc.strerror or exc}") from None

    whole, key_pem = read(cert_file), read(key_file)
    chain_pem = whole.split(_PEM_KEY_BEGIN, 1)[0]  # as aioquic does: certificates come first
    chunks = [c for c in chain_pem.split(_PEM_CERT_END) if c]
    if not chunks or b"-----BEGIN CERTIFICATE-----" not in chunks[0]:
        what = "is empty" if not whole.strip() else "holds no PEM certificate"
        if b"PRIVATE KEY-----" in whole:
            what = "holds a private key, not a certificate"
        raise fail(f"{cert_file} {what}")
    chain: list[x509.Certificate] = []
    for i, chunk in enumerate(chunks):
        if b"-----BEGIN CERTIFICATE-----" not in chunk:
            raise fail(
                f"{cert_file} has text after its last certificate (even a blank line stops "
                "aioquic reading it): remove it"
            )
        try:
            chain.append(x509.load_pem_x509_certificate(chunk + _PEM_CERT_END))
        except ValueError:
            raise fail(
                f"certificate {i + 1} in {cert_file} is not a valid PEM certificate"
            ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:  # "password was not given but private key is encrypted"
        raise fail(f"the key in {key_file} is encrypted (the gateway has no passphrase)") from None
    except (ValueError, UnsupportedAlgorithm):
        what = "is empty" if not key_pem.strip() else "holds no PEM private key this can read"
        if b"-----BEGIN CERTIFICATE-----" in key_pem:
            what = "holds a certificate, not a private key"
        raise fail(f"{key_file} {what}") from None
    if not isinstance(key, _SIGNING_KEYS):
        raise fail(f"{key_file} holds a {type(key).__name__}; TLS 1.3 needs EC, RSA or EdDSA")
    if key.public_key() != chain[0].public_key():
        raise fail(
            f"the key in {key_file} does not match the certificate in {cert_file} (the first one "
            "of the chain), so no client could complete a handshake"
        )
    return chain[0]


def ensure_dev_certs(
    directory: Path, *, days: int = DEFAULT_DAYS, force: bool = False
) -> CertPaths:
    """Make sure ``directory`` holds a usable development CA and server certificate.

    Keeps the existing files when all four are present, the server certificate and key match and
    the CA signed it, and both certificates stay valid for more than :data:`RENEW_BEFORE`;
    otherwise (or with ``force``) writes a fresh CA and server certificate valid for ``days``
    days. With ``days`` of 2 or less every call therefore regenerates. Creates ``directory`` if
    needed. Raises ``ValueError`` unless 1 <= ``days`` <= :data:`MAX_DAYS`, ``OSError`` on I/O.
    """
    paths, _ = _ensure(directory, days=days, force=force)
    return paths


def _ensure(directory: Path, *, days: int, force: bool) -> tuple[CertPaths, str | None]:
    """Like :func:`ensure_dev_certs`; also says why it regenerated (None if it kept the files)."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(
            f"days must be between 1 and {MAX_DAYS}: browsers only accept certificates pinned "
            f"with serverCertificateHashes if they are valid for at most {MAX_DAYS} days"
        )
    paths = CertPaths.in_directory(directory)
    reason = "--force given" if force else _why_unusable(paths, _now())
    if reason is None:
        return paths, None
    log.info("generating development certificates in %s: %s", directory, reason)
    _generate(paths, days=days, now=_now())
    return paths, reason


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---- checking ------------------------------------------------------------------------------------


def _why_unusable(paths: CertPaths, now: dt.datetime) -> str | None:
    """Why the files at ``paths`` can't be kept, or None if they can."""
    missing = [
        p.name for p in (paths.ca_cert, paths.ca_key, paths.cert, paths.key) if not p.exists()
    ]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return f"unreadable: {exc}"
    if ca_key.public_key() != ca_cert.public_key() or key.public_key() != cert.public_key():
        return "a key does not match its certificate"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "the server certificate was not issued by this CA"
    for label, c in (("CA", ca_cert), ("server", cert)):
        if c.not_valid_before_utc > now:
            return f"the {label} certificate is not valid yet"
        if c.not_valid_after_utc - now <= RENEW_BEFORE:
            return f"the {label} certificate expires on {c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if not _has_expected_names(cert):
        return "the server certificate lacks some of the expected names"
    return None


def _has_expected_names(cert: x509.Certificate) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = set(san.get_values_for_type(x509.IPAddress))
    return (
        set(SERVER_DNS_NAMES) <= dns
        and {ipaddress.ip_address(a) for a in SERVER_IP_ADDRESSES} <= ips
    )


# ---- generating ----------------------------------------------------------------------------------


def _generate(paths: CertPaths, *, days: int, now: dt.datetime) -> None:
    not_before = now - _BACKDATE
    not_after = not_before + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _make_ca(ca_key, not_before, not_after)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _make_server_cert(key, ca_cert, ca_key, not_before, not_after)
    paths.cert.parent.mkdir(parents=True, exist_ok=True)
    # Keys before certificates: a crash in between leaves a set _why_unusable rejects, never a
    # certificate that points at a key that was never written.
    _write(paths.ca_key, _key_pem(ca_key), mode=0o600)
    _write(paths.key, _key_pem(key), mode=0o600)
    _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _make_ca(
    key: ec.EllipticCurvePrivateKey, not_before: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    # A unique name per CA, so a regenerated CA never shares a name with one a user trusted.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Skein development"),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"Skein development CA {not_before:%Y-%m-%d} {secrets.token_hex(4)}",
            ),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    loopback: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_DNS_NAMES] + [
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.NameConstraints(permitted_subtrees=loopback, excluded_subtrees=None),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _make_server_cert(
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_IP_ADDRESSES]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_DNS_NAMES[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` atomically; the temporary file has ``mode`` before it holds a byte."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp already makes it 0600; certificates are public, so widen
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- command line --------------------------------------------------------------------------------


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {text!r}") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"{days} is out of range 1..{MAX_DAYS}: browsers only accept certificates pinned with "
            f"WebTransport serverCertificateHashes if they are valid for at most {MAX_DAYS} days"
        )
    return days


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.server.certs",
        description=(
            "Create development TLS certificates for Skein: a throwaway ECDSA P-256 CA "
            "(ca.pem, ca.key) and a server certificate it signed (server.pem, server.key) for "
            "localhost, 127.0.0.1, 127.0.0.2 and ::1. If a usable set already exists (valid for "
            "more than 2 more days, consistent) nothing is done. Keys are written mode 0600. "
            "For development only: see certs/README.md for using real certificates."
        ),
    )
    parser.add_argument(
        "--dir", type=Path, default=Path("certs"), help="where to write (default: %(default)s)"
    )
    parser.add_argument(
        "--days",
        type=_days,
        default=DEFAULT_DAYS,
        help=f"validity in days, 1..{MAX_DAYS} (default: %(default)s); WebTransport "
        f"serverCertificateHashes only accepts certificates valid for at most {MAX_DAYS} days",
    )
    parser.add_argument(
        "--force", action="store_true", help="regenerate even if the existing set is usable"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 I/O error, 2 usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors; we return instead
        return exc.code if isinstance(exc.code, int) else 2
    directory: Path = args.dir
    try:
        paths, reason = _ensure(directory, days=args.days, force=args.force)
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        digest = certificate_sha256(paths.cert)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    expires = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if reason is None:
        print(f"{paths.cert} is still valid until {expires}; nothing to do (--force regenerates)")
    else:
        print(f"wrote {paths.ca_cert}, {paths.ca_key}, {paths.cert}, {paths.key} ({reason})")
        print(f"the server certificate is valid until {expires}")
    print(f"serverCertificateHashes sha-256: {digest.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
