"""Tests for gateway.server.certs: generation, idempotence, the CLI and a real QUIC handshake."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from gateway.server.certs import (
    MAX_DAYS,
    CertPaths,
    certificate_sha256,
    check_certificate_pair,
    ensure_dev_certs,
    main,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _contents(paths: CertPaths) -> list[bytes]:
    return [p.read_bytes() for p in (paths.ca_cert, paths.ca_key, paths.cert, paths.key)]


@pytest.fixture
def paths(tmp_path: Path) -> CertPaths:
    return ensure_dev_certs(tmp_path / "certs")


def test_writes_four_files_with_private_keys(paths: CertPaths) -> None:
    assert paths == CertPaths.in_directory(paths.cert.parent)
    for key_path in (paths.ca_key, paths.key):
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    for cert_path in (paths.ca_cert, paths.cert):
        assert cert_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    # No temporary files left behind.
    assert sorted(p.name for p in paths.cert.parent.iterdir()) == [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]


def test_server_cert_is_signed_by_ca(paths: CertPaths) -> None:
    ca, cert = _cert(paths.ca_cert), _cert(paths.cert)
    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    ca_public.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    assert cert.issuer == ca.subject
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca


def test_server_cert_contents(paths: CertPaths) -> None:
    cert = _cert(paths.cert)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    assert key.public_key() == public
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "127.0.0.2", "::1")
    }
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    period = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=12) < period <= dt.timedelta(days=MAX_DAYS)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def test_second_call_keeps_files_and_force_regenerates(paths: CertPaths) -> None:
    before = _contents(paths)
    assert ensure_dev_certs(paths.cert.parent) == paths
    assert _contents(paths) == before
    ensure_dev_certs(paths.cert.parent, force=True)
    after = _contents(paths)
    assert all(old != new for old, new in zip(before, after, strict=True))


def test_regenerates_when_close_to_expiry(tmp_path: Path) -> None:
    paths = ensure_dev_certs(tmp_path, days=2)  # 2 days left is not "more than 2 days"
    before = _contents(paths)
    ensure_dev_certs(tmp_path)
    assert _contents(paths) != before
    period = _cert(paths.cert).not_valid_after_utc - _cert(paths.cert).not_valid_before_utc
    assert period == dt.timedelta(days=13)


def test_regenerates_broken_or_mismatched_sets(paths: CertPaths, tmp_path: Path) -> None:
    paths.cert.write_bytes(b"not a certificate")
    ensure_dev_certs(paths.cert.parent)
    assert _cert(paths.cert).issuer == _cert(paths.ca_cert).subject

    other = ensure_dev_certs(tmp_path / "other")
    paths.ca_cert.write_bytes(other.ca_cert.read_bytes())
    paths.ca_key.write_bytes(other.ca_key.read_bytes())
    ensure_dev_certs(paths.cert.parent)
    _cert(paths.cert).verify_directly_issued_by(_cert(paths.ca_cert))
    assert paths.ca_cert.read_bytes() != other.ca_cert.read_bytes()

    paths.key.unlink()
    ensure_dev_certs(paths.cert.parent)
    assert paths.key.exists()


@pytest.mark.parametrize("days", [0, -1, MAX_DAYS + 1, 30])
def test_rejects_days_out_of_range(tmp_path: Path, days: int) -> None:
    with pytest.raises(ValueError, match="14"):
        ensure_dev_certs(tmp_path, days=days)
    assert not any(tmp_path.iterdir())


def test_certificate_sha256_is_hash_of_der(paths: CertPaths) -> None:
    der = _cert(paths.cert).public_bytes(serialization.Encoding.DER)
    assert certificate_sha256(paths.cert) == hashlib.sha256(der).digest()
    assert len(certificate_sha256(paths.cert)) == 32


def test_strict_verifier_accepts_each_name(paths: CertPaths) -> None:
    """cryptography's verifier follows the CA/Browser Forum profile, stricter than OpenSSL."""
    ca, cert = _cert(paths.ca_cert), _cert(paths.cert)
    builder = PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.UTC))
    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.2")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = builder.build_server_verifier(name).verify(cert, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        builder.build_server_verifier(x509.DNSName("example.com")).verify(cert, [])


def test_ca_cannot_vouch_for_other_names(paths: CertPaths) -> None:
    """The CA is name-constrained: a certificate it signs for a real site does not verify."""
    ca = _cert(paths.ca_cert)
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    now = dt.datetime.now(dt.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.com")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.com")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    verifier = PolicyBuilder().store(Store([ca])).time(now)
    with pytest.raises(VerificationError, match="constraint"):
        verifier.build_server_verifier(x509.DNSName("example.com")).verify(forged, [])


# ---- command line --------------------------------------------------------------------------------


def test_main_generates_then_does_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "certs"
    assert main(["--dir", str(directory)]) == 0
    first = capsys.readouterr().out
    assert "wrote" in first
    digest = certificate_sha256(directory / "server.pem").hex()
    assert digest in first
    assert main(["--dir", str(directory)]) == 0
    second = capsys.readouterr().out
    assert "nothing to do" in second
    assert digest in second
    assert main(["--dir", str(directory), "--force", "--days", "14"]) == 0
    assert "wrote" in capsys.readouterr().out


def test_main_refuses_more_than_14_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(tmp_path / "certs"), "--days", "30"]) == 2
    err = capsys.readouterr().err
    assert "14" in err and "serverCertificateHashes" in err
    assert not (tmp_path / "certs").exists()


def test_main_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--force" in out and "--days" in out and "development" in out


# ---- checking a configured pair (what `skein serve` does before it says it is serving) -----------


def _encrypted(key_path: Path) -> bytes:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


def test_check_certificate_pair_accepts_what_aioquic_loads(
    paths: CertPaths, tmp_path: Path
) -> None:
    pem, ca, key = paths.cert.read_bytes(), paths.ca_cert.read_bytes(), paths.key.read_bytes()
    for name, content in {
        "leaf": pem,
        "chain": pem + ca,
        "no final newline": pem.rstrip(b"\n"),
        "a comment first": b"# the server\n" + pem,
        "key appended": pem + key,
    }.items():
        cert_file = tmp_path / "cert.pem"
        cert_file.write_bytes(content)
        leaf = check_certificate_pair(cert_file, paths.key)
        assert leaf == _cert(paths.cert), name
        QuicConfiguration(is_client=False).load_cert_chain(cert_file, paths.key)


@pytest.mark.parametrize(
    ("case", "cert_content", "key_content", "says"),
    [
        ("empty certificate", "empty", "key", "cert.pem is empty"),
        ("garbage certificate", "garbage", "key", "cert.pem holds no PEM certificate"),
        ("key as certificate", "key", "key", "holds a private key, not a certificate"),
        ("blank line after chain", "cert+blank", "key", "text after its last certificate"),
        ("certificate of another key", "other cert", "key", "does not match the certificate"),
        ("empty key", "cert", "empty", "key.pem is empty"),
        ("garbage key", "cert", "garbage", "key.pem holds no PEM private key"),
        ("certificate as key", "cert", "cert", "holds a certificate, not a private key"),
        ("encrypted key", "cert", "encrypted", "is encrypted"),
        ("another certificate's key", "cert", "other key", "does not match the certificate"),
    ],
)
def test_check_certificate_pair_names_both_files_and_the_fix(
    paths: CertPaths, tmp_path: Path, case: str, cert_content: str, key_content: str, says: str
) -> None:
    other = ensure_dev_certs(tmp_path / "other")
    contents = {
        "empty": b"",
        "garbage": b"garbage\n",
        "key": paths.key.read_bytes(),
        "cert": paths.cert.read_bytes(),
        "cert+blank": paths.cert.read_bytes() + b"\n",
        "other cert": other.cert.read_bytes(),
        "other key": other.key.read_bytes(),
        "encrypted": _encrypted(paths.key),
    }
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(contents[cert_content])
    key_file.write_bytes(contents[key_content])
    with pytest.raises(ValueError) as info:
        check_certificate_pair(cert_file, key_file)
    message = str(info.value)
    assert says in message, case
    assert str(cert_file) in message and str(key_file) in message
    assert "--cert" in message and "--key" in message and "make certs" in message
    assert "\n" not in message


def test_check_certificate_pair_missing_or_unreadable(paths: CertPaths, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make certs"):
        check_certificate_pair(tmp_path / "none.pem", paths.key)
    with pytest.raises(FileNotFoundError, match=r"none\.key"):
        check_certificate_pair(paths.cert, tmp_path / "none.key")
    with pytest.raises(ValueError, match="cannot read"):
        check_certificate_pair(paths.cert, tmp_path)  # a directory


# ---- a real handshake ----------------------------------------------------------------------------


def test_aioquic_handshake_with_generated_certs(paths: CertPaths) -> None:
    server_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    server_config.load_cert_chain(paths.cert, paths.key)
    client_config = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="localhost"
    )
    client_config.load_verify_locations(cafile=str(paths.ca_cert))

    client_addr, server_addr = ("127.0.0.1", 50001), ("127.0.0.1", 4433)
    now = 1000.0
    client = QuicConnection(configuration=client_config)
    client.connect(server_addr, now=now)
    server = QuicConnection(
        configuration=server_config,
        original_destination_connection_id=client.original_destination_connection_id,
    )

    completed = {"client": False, "server": False}
    for _ in range(50):
        for data, _addr in client.datagrams_to_send(now):
            server.receive_datagram(data, client_addr, now)
        for data, _addr in server.datagrams_to_send(now):
            client.receive_datagram(data, server_addr, now)
        for side, conn in (("client", client), ("server", server)):
            while (event := conn.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    completed[side] = True
        if all(completed.values()):
            break
        now += 0.01
    assert completed == {"client": True, "server": True}
