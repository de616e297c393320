"""Who may connect, and which rooms they may join and publish to: JWT bearer tokens.

A client presents a token in ``Hello.token``. :meth:`Authenticator.authenticate` verifies it and
returns a :class:`Principal`; the hub asks the principal before every join and publish. The check
is sans-IO: it takes the time as ``now`` (Unix seconds, the clock the token's ``exp`` is on) and
never reads a clock. Only the loaders at the bottom of this module (:meth:`Authenticator.from_config`,
:func:`dev_secret`, :func:`default_secret`) touch files, once, when the server starts.

Tokens (claims, all others ignored):

- ``sub`` (required): the holder's identity, 1-128 printable characters. It is the sender name on
  every message the holder publishes, whatever ``Hello.client_name`` says.
- ``exp`` (required): expiry, Unix seconds. Checked against ``now`` with ``leeway_s`` of slack.
- ``nbf`` (optional): not before, Unix seconds, with the same leeway.
- ``join`` / ``publish`` (optional lists, default empty): room patterns the holder may join / may
  publish to. A pattern is a room name in which ``*`` matches any run of characters, including
  none (``fnmatch.fnmatchcase``; patterns may hold only room-name characters and ``*``, so ``?``
  and ``[`` never act as wildcards). ``"room-*"`` allows exactly the rooms starting with
  ``room-``; ``"*"`` alone allows every room. Publishing does **not** imply joining: the hub
  requires a join before a publish, so a room meant for publishing must match a ``join`` pattern
  too.
- ``aud`` / ``iss``: checked when :class:`AuthConfig` sets ``audience`` / ``issuer``. A token
  that carries ``aud`` is refused when no ``audience`` is configured (it was meant for someone
  else).

Algorithms are pinned to the key: HS256 tokens are checked only against ``hs256_secrets``, ES256
tokens only against ES256 public keys, and every other ``alg`` (``none`` included) is refused. So a
token HMAC-signed with the text of a public key can never pass as ES256 (algorithm confusion).
Several secrets or keys may be configured at once, for rotation: a token verifying with any one
of them is accepted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import InvalidSubjectError

from gateway.errors import ErrorCode, Rejected, RemoteProtocolError

__all__ = [
    "AUTH_MODES",
    "DEV_SECRET_ENV",
    "DEV_SECRET_FILE",
    "MIN_SECRET_BYTES",
    "AuthConfig",
    "Authenticator",
    "Principal",
    "check_client_name",
    "default_secret",
    "dev_secret",
    "load_es256_public_key",
    "valid_name",
    "validate_pattern",
]

AUTH_MODES = ("jwt", "insecure-dev")
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key must be at least as long as the hash
DEV_SECRET_ENV = "SKEIN_JWT_SECRET"
DEV_SECRET_FILE = Path("certs/dev-jwt-secret")
MAX_SUB_CHARS = 128
MAX_PATTERNS = 256  # per claim; the token size bounds them too
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.:@*-]{1,128}")
_ANYONE = ("*",)


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid room pattern (room characters and ``*``), else raise
    ValueError."""
    if not isinstance(pattern, str) or not _PATTERN_RE.fullmatch(pattern):
        raise ValueError(
            f"invalid room pattern {str(pattern)[:40]!r}: 1-128 characters of "
            "A-Z a-z 0-9 _ . : @ - and the wildcard *"
        )
    return pattern


def valid_name(name: object) -> bool:
    """True if ``name`` can name a principal (a token's ``sub``, a client's ``client_name``):
    a string of 1-:data:`MAX_SUB_CHARS` printable characters (``str.isprintable``: no control
    characters, line breaks, escape codes or other invisible separators; spaces are fine)."""
    return isinstance(name, str) and 0 < len(name) <= MAX_SUB_CHARS and name.isprintable()


def check_client_name(name: str) -> None:
    """Raise a fatal INVALID_ARGUMENT :class:`RemoteProtocolError` unless ``name`` (a Hello's
    ``client_name``, the identity in insecure-dev mode) is empty or a :func:`valid_name`."""
    if name and not valid_name(name):
        raise RemoteProtocolError(
            f"client_name must be 1-{MAX_SUB_CHARS} printable characters (no control "
            "characters, line breaks or escape codes)",
            code=ErrorCode.INVALID_ARGUMENT,
            fatal=True,
        )


def _matches(room: str, patterns: tuple[str, ...]) -> bool:
    return any(p == "*" or p == room or ("*" in p and fnmatchcase(room, p)) for p in patterns)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client and what it may do. Valid by construction (ValueError otherwise).

    ``expires_at`` is the moment, on the clock of ``now`` (Unix seconds), from which the grant is
    void: the token's ``exp`` plus the configured leeway; None means it never expires
    (insecure-dev). A session whose principal has :meth:`expired` should be closed.
    """

    sub: str
    join: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    expires_at: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sub, str) or not 0 < len(self.sub) <= MAX_SUB_CHARS:
            raise ValueError(f"sub must be a string of 1-{MAX_SUB_CHARS} characters")
        if not self.sub.isprintable():
            raise ValueError("sub must be printable")
        for claim in (self.join, self.publish):
            if len(claim) > MAX_PATTERNS:
                raise ValueError(f"at most {MAX_PATTERNS} room patterns per claim")
            for pattern in claim:
                validate_pattern(pattern)
        if self.expires_at is not None and math.isnan(self.expires_at):
            raise ValueError("expires_at must be a number")

    def may_join(self, room: str) -> bool:
        """True if a ``join`` pattern matches ``room`` (see the module docstring)."""
        return _matches(room, self.join)

    def may_publish(self, room: str) -> bool:
        """True if a ``publish`` pattern matches ``room``. Does not imply :meth:`may_join`."""
        return _matches(room, self.publish)

    def expired(self, now: float) -> bool:
        """True from ``expires_at`` on. ``now`` is Unix seconds."""
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfig:
    """How clients prove who they are. Loaded from the server's ``[auth]`` table.

    - ``mode``: ``"jwt"`` (the default: every session needs a valid token) or ``"insecure-dev"``
      (anyone may do anything, as whatever name they choose; for local play only).
    - ``hs256_secrets``: shared secrets for HS256 tokens, each at least 32 bytes. Several at once
      for rotation: a token signed with any of them verifies.
    - ``es256_public_key_files``: PEM files of P-256 public keys for ES256 tokens (the issuer keeps
      the private keys). Several at once for rotation.
    - ``dev_secret_file``: in jwt mode with no secret and no key configured, the HS256 secret is
      ``$SKEIN_JWT_SECRET`` or this file's content (created with 32 random bytes, mode 0600, if
      missing) - the secret ``skein token`` signs with by default. None: no fallback, so jwt mode
      then needs a configured secret or key.
    - ``audience`` / ``issuer``: when set, tokens must carry this ``aud`` / ``iss``.
    - ``leeway_s``: clock skew tolerated on ``exp`` and ``nbf``.
    - ``max_token_bytes``: longer tokens are refused unparsed.
    - ``max_token_lifetime_s``: a token whose ``exp`` is further than this from now is refused
      (7 days by default): a session lasts as long as its token, so an ``exp`` of 1e300 would be
      a grant that never ends, and no key rotation short of replacing the key would revoke it.
    """

    mode: str = "jwt"
    hs256_secrets: tuple[str, ...] = ()
    es256_public_key_files: tuple[Path, ...] = ()
    dev_secret_file: Path | None = DEV_SECRET_FILE
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 30.0
    max_token_bytes: int = 8192
    max_token_lifetime_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.mode not in AUTH_MODES:
            raise ValueError(f"auth mode must be one of {', '.join(AUTH_MODES)}, got {self.mode!r}")
        if not isinstance(self.hs256_secrets, tuple) or not all(
            isinstance(s, str) for s in self.hs256_secrets
        ):
            raise ValueError("hs256_secrets must be a list of strings")
        for secret in self.hs256_secrets:
            if len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"every HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        files = self.es256_public_key_files
        if not isinstance(files, tuple) or not all(isinstance(p, Path) for p in files):
            raise ValueError(f"es256_public_key_files must be a list of paths, got {files!r}")
        if self.dev_secret_file is not None and not isinstance(self.dev_secret_file, Path):
            raise ValueError(f"dev_secret_file must be a path, got {self.dev_secret_file!r}")
        for name in ("audience", "issuer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        has_keys = self.hs256_secrets or self.es256_public_key_files
        if self.mode == "jwt" and not has_keys and self.dev_secret_file is None:
            raise ValueError(
                "jwt auth needs at least one of hs256_secrets, es256_public_key_files or "
                "dev_secret_file (or mode = 'insecure-dev' for local play)"
            )
        leeway = self.leeway_s
        if (
            isinstance(leeway, bool)
            or not isinstance(leeway, int | float)
            or not 0 <= leeway <= 3600
        ):
            raise ValueError(f"leeway_s must be a number within 0..3600, got {leeway!r}")
        size = self.max_token_bytes
        if isinstance(size, bool) or not isinstance(size, int) or not 64 <= size <= 1 << 20:
            raise ValueError(f"max_token_bytes must be an integer within 64..1048576, got {size!r}")
        life = self.max_token_lifetime_s
        if (
            isinstance(life, bool)
            or not isinstance(life, int | float)
            or not 60 <= life <= 366 * 24 * 3600
        ):
            raise ValueError(
                f"max_token_lifetime_s must be a number within 60..31622400 (a year), got {life!r}"
            )

    @property
    def insecure(self) -> bool:
        """True in insecure-dev mode: the server must say so loudly."""
        return self.mode == "insecure-dev"


def _refuse(reason: str) -> Rejected:
    return Rejected(reason, code=ErrorCode.UNAUTHENTICATED, fatal=True)


# pyjwt checks the signature and the shape of aud/iss/sub/jti; the times we check ourselves
# against the caller's ``now`` (pyjwt would read the real clock).
_JWT_OPTIONS: Any = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "require": ["sub", "exp"],
    "enforce_minimum_key_length": True,
}

_CLAIM_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidAudienceError, "token is for another audience"),
    (jwt.InvalidIssuerError, "token is from another issuer"),
    (jwt.InvalidAlgorithmError, "token algorithm is not accepted"),
)


@dataclass(frozen=True, slots=True)
class _Keys:
    """Verification keys by the one algorithm each may be used with."""

    hs256: tuple[str, ...]
    es256: tuple[ec.EllipticCurvePublicKey, ...] = field(default=())


class Authenticator:
    """Turns tokens into principals. Pure after construction; see the module docstring."""

    __slots__ = ("_config", "_decoder", "_keys", "uses_dev_secret")

    def __init__(
        self,
        config: AuthConfig,
        *,
        es256_keys: Sequence[ec.EllipticCurvePublicKey] = (),
        uses_dev_secret: bool = False,
    ) -> None:
        """Build from ``config`` and ES256 keys already loaded (``from_config`` loads the files).

        In jwt mode at least one HS256 secret or ES256 key is needed (ValueError otherwise).
        ``uses_dev_secret`` only records, for the server's log, that the secret is the dev one.
        """
        for key in es256_keys:
            _check_p256(key)
        if config.mode == "jwt" and not config.hs256_secrets and not es256_keys:
            raise ValueError("jwt auth needs at least one HS256 secret or ES256 public key")
        self._config = config
        self._keys = _Keys(config.hs256_secrets, tuple(es256_keys))
        self._decoder = jwt.PyJWT()
        self.uses_dev_secret = uses_dev_secret

    @property
    def config(self) -> AuthConfig:
        return self._config

    def authenticate(self, token: str, now: float, *, client_name: str = "") -> Principal:
        """Verify ``token`` at time ``now`` (Unix seconds) and return its principal.

        Raises :class:`~gateway.errors.Rejected` with code UNAUTHENTICATED and ``fatal=True`` when
        the token is missing, malformed, oversized, signed with an algorithm or key not accepted,
        expired, not yet valid, for another audience or issuer, or has invalid claims. The message
        says which, and never includes key material or the token.

        In insecure-dev mode nothing is verified and nothing is refused: the principal may join and
        publish everywhere, never expires, and is named by the token's ``sub`` if it has a usable
        one, else by ``client_name``, else ``"anonymous"`` (the caller should pass a unique
        fallback, since the name is the sender identity).
        """
        if self._config.insecure:
            return _insecure_principal(token, client_name)
        if not token:
            raise _refuse("a token is required: put a JWT in Hello.token")
        limit = self._config.max_token_bytes
        if len(token) > limit or len(token.encode(errors="replace")) > limit:
            raise _refuse(f"token is longer than {self._config.max_token_bytes} bytes")
        claims = self._verified_claims(token)
        return self._principal(claims, now)

    # ---- verification ---------------------------------------------------------------------------

    def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise _refuse("token is malformed") from None
        keys: tuple[Any, ...]
        if alg == "HS256":
            keys = self._keys.hs256
        elif alg == "ES256":
            keys = self._keys.es256
        else:
            raise _refuse(f"token algorithm {str(alg)[:16]!r} is not accepted (HS256, ES256 are)")
        if not keys:
            raise _refuse(f"this gateway has no {alg} key: token algorithm is not accepted")
        for key in keys:
            try:
                return self._decoder.decode(
                    token,
                    key,
                    algorithms=[alg],  # pinned: the key set was chosen for exactly this alg
                    options=_JWT_OPTIONS,
                    audience=self._config.audience,
                    issuer=self._config.issuer,
                )
            except jwt.InvalidSignatureError:
                continue  # rotation: try the next key
            except jwt.PyJWTError as exc:
                raise _refuse(_describe(exc)) from None
            except (ValueError, TypeError):  # a malformed key-shaped value inside the token
                raise _refuse("token is malformed") from None
        raise _refuse("token signature does not verify")

    def _principal(self, claims: dict[str, Any], now: float) -> Principal:
        leeway = self._config.leeway_s
        exp = _number(claims, "exp")
        if exp is None:
            raise _refuse("token lacks the required claim 'exp'")
        if now >= exp + leeway:
            raise _refuse("token has expired")
        if exp > now + self._config.max_token_lifetime_s + leeway:
            raise _refuse(
                f"token expires too far ahead: more than max_token_lifetime_s "
                f"({self._config.max_token_lifetime_s:.0f} s) from now; mint a shorter-lived one"
            )
        nbf = _number(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise _refuse("token is not valid yet (nbf)")
        try:
            return Principal(
                claims["sub"],
                _patterns(claims, "join"),
                _patterns(claims, "publish"),
                exp + leeway,
            )
        except (ValueError, TypeError) as exc:
            raise _refuse(f"token claims are invalid: {exc}") from None

    # ---- loading (the only IO here: call once at start-up) --------------------------------------

    @classmethod
    def from_config(cls, config: AuthConfig) -> Authenticator:
        """Read the ES256 public key files (and, if nothing else is configured in jwt mode, the
        dev secret: ``$SKEIN_JWT_SECRET`` or ``dev_secret_file``, created if missing).

        Raises OSError if a file cannot be read or created, ValueError if a key is not a P-256
        public key in PEM.
        """
        keys = [load_es256_public_key(path) for path in config.es256_public_key_files]
        use_dev = (
            config.mode == "jwt"
            and not config.hs256_secrets
            and not keys
            and config.dev_secret_file is not None
        )
        if use_dev:
            assert config.dev_secret_file is not None
            config = replace(config, hs256_secrets=(default_secret(config.dev_secret_file),))
        return cls(config, es256_keys=keys, uses_dev_secret=use_dev)


def _describe(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the required claim {exc.claim!r}"
    for kind, reason in _CLAIM_ERRORS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, InvalidSubjectError):
        return "token claims are invalid: sub must be a string"
    if isinstance(exc, jwt.InvalidKeyError):
        return "token cannot be checked with the configured keys"
    return "token is malformed"


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(f"token claim {name!r} must be a number (Unix seconds)")
    return float(value)


def _patterns(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise _refuse(f"token claim {name!r} must be a list of room patterns")
    return tuple(value)


def _unverified_sub(token: str) -> str | None:
    """The ``sub`` of a token's payload, read without verifying anything (insecure-dev only)."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 8192:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    sub = payload.get("sub") if isinstance(payload, dict) else None
    return sub if isinstance(sub, str) else None


def _insecure_principal(token: str, client_name: str) -> Principal:
    for name in (_unverified_sub(token), client_name, "anonymous"):
        if name:
            try:
                return Principal(name, _ANYONE, _ANYONE, None)
            except ValueError:
                continue
    raise AssertionError("unreachable: 'anonymous' is a valid sub")


def _check_p256(key: object) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("ES256 keys must be P-256 (secp256r1) public keys")


def load_es256_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Read a PEM P-256 public key (SubjectPublicKeyInfo). Raises OSError or ValueError."""
    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except ValueError:
        raise ValueError(f"{path}: not a PEM public key") from None
    try:
        _check_p256(key)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def dev_secret(path: Path) -> str:
    """The development HS256 secret kept in ``path``: read it, or create it if missing.

    A new file gets 32 random bytes (URL-safe base64 text) and mode 0600; its directory is created
    if needed. The file appears whole and is never overwritten, so two processes starting at once
    agree on one secret.
    Raises OSError if the file cannot be read or made, ValueError if it holds a secret shorter
    than 32 bytes.
    """
    path = Path(path)
    if not path.exists():
        _create_secret_file(path)
    secret = path.read_text().strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"{path}: the secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def _create_secret_file(path: Path) -> None:
    """Write a new secret to ``path`` unless it exists: whole or not at all, never overwriting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(tmp, path)  # atomic: the file appears whole
    finally:
        Path(tmp).unlink(missing_ok=True)


def default_secret(path: Path, environ: Mapping[str, str] | None = None) -> str:
    """The secret used when none is configured: ``$SKEIN_JWT_SECRET`` if set, else
    :func:`dev_secret` of ``path``. Both ``skein token`` and the gateway use this, so a token
    minted with the defaults verifies on a gateway started with the defaults."""
    env = os.environ if environ is None else environ
    secret = env.get(DEV_SECRET_ENV, "").strip()
    if secret:
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"${DEV_SECRET_ENV} must be at least {MIN_SECRET_BYTES} bytes")
        return secret
    return dev_secret(path)
