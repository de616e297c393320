"""What the hub's one error boundary does with an exception nobody raised on purpose.

Every error a client can cause is meant to be a :class:`~gateway.errors.GatewayError`, which the
hub turns into an ``Error`` frame. Anything else escaping a frame handler is a bug in the gateway;
it must still never reach the server's event loop (where it would leave the client unanswered and
the session half-updated). :class:`Unexpected` turns it into a fatal ``INTERNAL`` error for the
session that sent the frame (whose state can no longer be trusted), and logs it: with its
traceback the first time each cause (exception type and the line that raised it) is seen, so a
client repeating the frame cannot flood the log; later occurrences are only counted (the hub's
``errors["INTERNAL"]`` counter, exported as ``skein_errors_total``).
"""

from __future__ import annotations

import logging
import traceback

from gateway.errors import ErrorCode, GatewayError

__all__ = ["Unexpected"]

log = logging.getLogger("skein.hub")
_MAX_CAUSES = 256  # causes remembered; past that every new one is logged (they are bugs anyway)


class Unexpected:
    """Turns unexpected exceptions into fatal INTERNAL errors, logging each cause once."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[tuple[str, str, int]] = set()

    def error(self, exc: BaseException, *, doing: str, session_id: str) -> GatewayError:
        """The error to send for ``exc``, raised while ``doing`` for session ``session_id``."""
        frames = traceback.extract_tb(exc.__traceback__)
        where = frames[-1] if frames else None
        cause = (
            type(exc).__name__,
            where.filename if where else "",
            where.lineno or 0 if where else 0,
        )
        if cause not in self._seen:
            if len(self._seen) < _MAX_CAUSES:
                self._seen.add(cause)
            log.error(
                "unexpected %s while %s for session %s: the session gets INTERNAL and is closed "
                "(logged once per cause)",
                type(exc).__name__,
                doing,
                session_id,
                exc_info=exc,
                extra={"event": "hub_internal_error", "session": session_id},
            )
        return GatewayError(
            "internal error: the gateway could not handle this frame; the session is closed",
            code=ErrorCode.INTERNAL,
            fatal=True,
        )
