"""``skein token``: mint access tokens (JWTs) for development and tests.

    skein token --sub alice --join 'lobby,room-*' --publish lobby --ttl 24h

prints a token that lets ``alice`` join ``lobby`` and every room starting with ``room-``, and
publish to ``lobby``, for 24 hours. By default it is signed (HS256) with the secret a gateway in
jwt mode uses when none is configured: ``$SKEIN_JWT_SECRET`` if set, else the file
``certs/dev-jwt-secret`` (created with 32 random bytes, mode 0600, if missing). The claims and
their meaning are described in :mod:`gateway.core.auth` and ``docs/security.md``.

Production deployments mint tokens in their own identity service, not with this command; ES256
(``--es256-key``) shows what such a service does: sign with a private key whose public half the
gateway is configured with.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from gateway.core.auth import (
    DEV_SECRET_ENV,
    DEV_SECRET_FILE,
    MIN_SECRET_BYTES,
    Principal,
    default_secret,
    dev_secret,
)

__all__ = ["DESCRIPTION", "add_arguments", "dev_secret", "main", "mint", "parse_ttl", "run_args"]

MAX_TTL_S = 366 * 86400.0
_TTL_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_TTL_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DESCRIPTION = (
    "Mint a development access token (a JWT) and print it. Without --secret, --secret-file or "
    f"--es256-key it is signed (HS256) with ${DEV_SECRET_ENV} if set, else with the secret in "
    f"{DEV_SECRET_FILE} (created if missing): the secret `skein serve` uses when no key is "
    "configured. Publishing does not imply joining: list a room in --join too. Clients send the "
    "token in Hello (SDK: connect(..., token=TOKEN)). Example: "
    "skein token --sub alice --join 'lobby,room-*' --publish lobby --ttl 24h"
)


def mint(
    *,
    sub: str,
    join: Sequence[str],
    publish: Sequence[str],
    ttl_s: float,
    now: float,
    secret: str | None = None,
    es256_private_key_pem: bytes | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """Return a signed token for ``sub``, valid from ``now`` (Unix seconds) for ``ttl_s``.

    Give exactly one of ``secret`` (HS256, at least 32 bytes) or ``es256_private_key_pem`` (a PEM
    P-256 private key, unencrypted). Raises ValueError for an invalid sub or room pattern, a
    non-positive ttl, or an unusable key.
    """
    if (secret is None) == (es256_private_key_pem is None):
        raise ValueError("give exactly one of secret and es256_private_key_pem")
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be within 0..{MAX_TTL_S:.0f} seconds")
    Principal(sub, tuple(join), tuple(publish))  # validates sub and patterns
    claims: dict[str, object] = {
        "sub": sub,
        "join": list(join),
        "publish": list(publish),
        "iat": int(now),
        "exp": int(now + ttl_s),
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if secret is not None:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        return jwt.encode(claims, secret, algorithm="HS256")
    assert es256_private_key_pem is not None
    try:
        key = load_pem_private_key(es256_private_key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("ES256 needs a P-256 (secp256r1) private key")
    return jwt.encode(claims, key, algorithm="ES256")


def parse_ttl(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``24h`` or ``7d``. Raises ValueError."""
    match = _TTL_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (examples: 3600, 90s, 30m, 24h, 7d)")
    seconds = float(match[1]) * _TTL_UNITS[match[2]]
    if not 0 < seconds <= MAX_TTL_S:
        raise ValueError(f"duration {text!r} is out of range (1 second to 366 days)")
    return seconds


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``skein token`` (for ``gateway.cli`` to mount as a subcommand)."""
    parser.add_argument("--sub", required=True, help="the holder's identity (its sender name)")
    parser.add_argument(
        "--join",
        default="",
        metavar="PATTERNS",
        help="comma-separated rooms the holder may join; '*' matches any run of characters "
        "('room-*'), '*' alone means every room",
    )
    parser.add_argument(
        "--publish",
        default="",
        metavar="PATTERNS",
        help="comma-separated rooms the holder may publish to (it must be able to join them too)",
    )
    parser.add_argument(
        "--ttl", default="24h", help="lifetime: seconds, or 90s, 30m, 24h, 7d (default 24h)"
    )
    parser.add_argument("--aud", help="audience claim (if the gateway checks one)")
    parser.add_argument("--iss", help="issuer claim (if the gateway checks one)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--secret", help="HS256 secret (visible to other local users: prefer --secret-file)"
    )
    source.add_argument("--secret-file", type=Path, help="file holding the HS256 secret")
    source.add_argument(
        "--es256-key", type=Path, metavar="PEM", help="sign with ES256 using this private key"
    )


def _signing_key(args: argparse.Namespace) -> tuple[str | None, bytes | None]:
    if args.secret is not None:
        return args.secret, None
    if args.secret_file is not None:
        return args.secret_file.read_text().strip(), None
    if args.es256_key is not None:
        return None, args.es256_key.read_bytes()
    return default_secret(DEV_SECRET_FILE), None


def run_args(args: argparse.Namespace) -> int:
    """Mint and print the token described by ``args``; 0 on success, 2 on bad input, 1 on IO."""
    join, publish = _patterns(args.join), _patterns(args.publish)
    for pattern in publish:
        if not any(fnmatchcase(pattern, j) for j in join):
            print(
                f"skein token: warning: publish pattern {pattern!r} is not covered by --join; "
                "the holder must join a room before publishing to it",
                file=sys.stderr,
            )
    try:
        ttl_s = parse_ttl(args.ttl)
        secret, pem = _signing_key(args)
        token = mint(
            sub=args.sub,
            join=join,
            publish=publish,
            ttl_s=ttl_s,
            now=time.time(),
            secret=secret,
            es256_private_key_pem=pem,
            audience=args.aud,
            issuer=args.iss,
        )
    except OSError as exc:
        print(f"skein token: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"skein token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``skein token`` on its own (``python -m gateway.tokens``)."""
    parser = argparse.ArgumentParser(prog="skein token", description=DESCRIPTION)
    add_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
