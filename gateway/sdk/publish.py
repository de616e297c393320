"""A publish's life after the call that made it: the contract of :meth:`Client.publish`.

A publish is **pending** from the moment it is made until exactly one of these ends it:

- **acked**: the gateway sequenced it (and, on the reliable path, stored it) once; ``wait()``
  returns the :class:`~gateway.wire.frames.Ack`. Re-sends after reconnects carry the same
  ``client_msg_id``, so the gateway never sequences it twice (§5.6 of docs/protocol.md).
- **refused**: the gateway answered with an ``Error``; ``wait()`` raises
  :class:`~gateway.errors.ServerError`. Not sequenced.
- **withdrawn**: the application called :meth:`PendingPublish.cancel`; ``wait()`` raises
  :class:`PublishWithdrawn`. ``cancel()`` says whether it can still have been stored.
- **the session ended** for good (``close()``, a fatal error, reconnecting gave up); ``wait()``
  raises :class:`~gateway.errors.ConnectionLost`. If it had been sent (:attr:`PendingPublish.sent`)
  it may have been stored: publish it again **with the same** ``client_msg_id`` in a new session
  (same sender identity) to learn its place without storing it twice.

Running out of time is none of these: :class:`PublishTimeout` (a builtin ``TimeoutError``) says
the publish is still pending, and the client keeps sending it, across reconnects, until one of the
four happens. An application that must not show a message twice waits on it or withdraws it; it
never re-publishes the same content under a new id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from gateway.errors import ErrorCode, GatewayError
from gateway.wire import frames as f

__all__ = ["PendingPublish", "PublishTimeout", "PublishWithdrawn"]


class PublishTimeout(GatewayError, TimeoutError):
    """(SDK) A publish got no ack within the time it was given, and is **still pending**: the
    client keeps sending it until it is acked, refused, withdrawn or the session ends; it may yet
    be stored. ``pending`` is its handle: ``await pending.wait()`` for the outcome, or
    ``pending.cancel()`` to withdraw it. Also a builtin :class:`TimeoutError`."""

    default_code = ErrorCode.UNSPECIFIED

    def __init__(self, message: str, *, pending: PendingPublish) -> None:
        super().__init__(message)
        self.pending = pending


class PublishWithdrawn(GatewayError):
    """(SDK) The application withdrew the publish with :meth:`PendingPublish.cancel`; the client
    no longer sends it."""

    default_code = ErrorCode.UNSPECIFIED


@dataclass(slots=True)
class Outstanding:
    """What the client keeps for one request until its answer: the future the answer resolves
    and, for a publish, what to re-send after a reconnect and whether it ever left."""

    future: asyncio.Future[Any]
    room: str = ""
    publish: tuple[bytes, f.Priority, str] | None = None
    sent: bool = False  # handed to a QUIC connection at least once: the gateway may have it


class PendingPublish:
    """The handle of one publish (see the module docstring for the contract). Made by
    :meth:`Client.start_publish`, or carried by the :class:`PublishTimeout` that
    :meth:`Client.publish` raises."""

    __slots__ = ("_outstanding", "client_msg_id", "room")

    def __init__(self, outstanding: Outstanding, room: str, client_msg_id: str) -> None:
        self._outstanding = outstanding
        self.room = room
        self.client_msg_id = client_msg_id

    @property
    def sent(self) -> bool:
        """Whether it left for the gateway at least once (so the gateway may have stored it)."""
        return self._outstanding.sent

    def done(self) -> bool:
        """Whether it was acked, refused, withdrawn or ended with the session."""
        return self._outstanding.future.done()

    async def wait(self, timeout_s: float | None = None) -> f.Ack:
        """Wait for the outcome; ``None`` waits as long as the session lasts.

        Returns the Ack. Raises :class:`PublishTimeout` if ``timeout_s`` passes first (it stays
        pending; wait again or cancel), ServerError if refused, :class:`PublishWithdrawn` after
        :meth:`cancel`, ConnectionLost if the session ended. Cancelling the waiting task does not
        withdraw the publish."""
        future = self._outstanding.future
        try:
            ack: f.Ack = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise PublishTimeout(
                f"no ack for {self.client_msg_id!r} in {self.room!r} within {timeout_s:g} s; "
                "it is still pending (wait on it or cancel it; do not publish it again)",
                pending=self,
            ) from None
        return ack

    def cancel(self) -> bool:
        """Withdraw it: the client stops sending it (no re-send after a reconnect), and
        :meth:`wait` raises :class:`PublishWithdrawn`.

        Returns True if it never left, so the gateway does not have it and never will. Returns
        False if it had been sent (it may be stored, or be stored from what is in flight; publish
        it again with the same ``client_msg_id`` to learn where, without storing it twice) or was
        already done."""
        future = self._outstanding.future
        if future.done():
            return False
        future.set_exception(PublishWithdrawn(f"{self.client_msg_id!r} was withdrawn"))
        future.exception()  # marked retrieved: nobody need wait on a withdrawn publish
        return not self._outstanding.sent
