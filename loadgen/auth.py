"""Tokens for loadgen's clients: one minted per client from a shared secret, or one for all.

A gateway in its default ``jwt`` mode refuses a session without a valid token (see
``docs/security.md``). :class:`TokenSource` gives each simulated client what it presents in its
Hello and on the history endpoint:

- ``secret`` (``skein loadgen --token-secret-file F``): the HS256 secret the gateway's ``[auth]``
  holds. Each client gets its own token, minted with :func:`gateway.tokens.mint`: ``sub`` is its
  name (so the gateway's sender identity is the client's), and it may join and publish to the
  run's rooms (``{prefix}-{run id}-*``) and nothing else.
- ``token`` (``--token T``): one pre-minted token shared by every client. Its ``join`` and
  ``publish`` patterns must cover the run's rooms (``{prefix}-*`` does, or ``*``), and every client
  then publishes under its one ``sub``.

Minting is pure (the time is passed in); only :func:`read_secret_file` touches a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.core.auth import MIN_SECRET_BYTES
from gateway.tokens import mint

__all__ = ["MIN_TTL_S", "TokenSource", "read_secret_file", "room_pattern"]

MIN_TTL_S = 3600.0  # minted tokens outlive any reconnect of a normal run by far


def room_pattern(prefix: str, run_id: str) -> str:
    """The pattern matching every room of a run (rooms are ``{prefix}-{run id}-{rank}``)."""
    return f"{prefix}-{run_id}-*"


def read_secret_file(path: Path) -> str:
    """The HS256 secret in ``path`` (surrounding whitespace stripped), as ``skein token
    --secret-file`` reads it. Raises OSError if unreadable, ValueError if shorter than 32 bytes."""
    secret = Path(path).read_text(encoding="utf-8").strip()
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"{path}: an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSource:
    """Where clients' tokens come from: exactly one of ``secret`` (mint one per client, valid
    for ``ttl_s``) or ``token`` (the same for all). Raises ValueError otherwise."""

    secret: str | None = None
    token: str | None = None
    ttl_s: float = MIN_TTL_S

    def __post_init__(self) -> None:
        if (self.secret is None) == (self.token is None):
            raise ValueError("give exactly one of a token secret and a shared token")
        if self.secret is not None and len(self.secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_BYTES} bytes")
        if self.token is not None and not self.token.strip():
            raise ValueError("the shared token is empty")
        if not MIN_TTL_S <= self.ttl_s <= 366 * 86400.0:
            raise ValueError(f"ttl_s must be within {MIN_TTL_S:g} s .. 366 days")

    def for_client(self, name: str, rooms: str, now: float) -> str:
        """The token client ``name`` presents: its own (``sub`` = ``name``, join and publish
        ``rooms``, a pattern) minted at ``now`` (Unix seconds), or the shared one."""
        if self.token is not None:
            return self.token
        assert self.secret is not None
        return mint(
            sub=name, join=(rooms,), publish=(rooms,), ttl_s=self.ttl_s, now=now, secret=self.secret
        )
