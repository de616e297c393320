"""Structured logs: one event per line, as JSON for collectors or as text for a terminal.

Code logs as usual and names the event and its context in ``extra``::

    log.info("connection migrated", extra={"event": "migration", "cid": cid, "kind": kind})

and a JSON line comes out with fixed keys first, then every extra the record carries::

    {"ts":"2024-05-01T12:00:00.123Z","level":"info","logger":"skein.server","event":"migration",
     "message":"connection migrated","cid":"6f1c...","kind":"nat_rebinding"}

- ``ts``: RFC 3339, UTC, milliseconds. ``level``: ``debug``, ``info``, ``warning``, ``error``,
  ``critical``. ``logger``: the logger's name.
- ``event``: the record's ``event`` extra; without one, the message *template* (before ``%``
  arguments) in snake_case, so one call site always gives one event name. A ``[tag]`` that starts
  a template (aioquic prefixes its connection's id so) goes to ``tag`` instead.
- ``message``: the formatted message. ``exc`` / ``stack``: a traceback, when there is one.
- everything else passed in ``extra`` (``conn``, ``cid``, ``room``, ``kind``, ``code``, ...), as
  JSON values (anything JSON cannot hold becomes its ``str``). An extra whose name is one of the
  fixed keys is kept as ``extra_<name>`` instead of overwriting it.
"""

from __future__ import annotations

import json as _json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["LEVELS", "JsonFormatter", "TextFormatter", "setup_logging"]

LEVELS = ("debug", "info", "warning", "error", "critical")
_FIXED = ("ts", "level", "logger", "event", "message", "exc", "stack")
# Attributes every LogRecord has; whatever else a record carries came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_MAX_EVENT_CHARS = 64
_NOT_WORD = re.compile(r"[^0-9a-z]+")
_TAG = re.compile(r"\[([^\]%]{1,64})\]\s*")
# Loggers that write a line per connection at info: at any level above debug, only their warnings.
_CHATTY = ("quic",)


def _timestamp(created: float) -> str:
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


def _event(record: logging.LogRecord) -> tuple[str, str | None]:
    """The record's event name, and the ``[tag]`` its template started with, if any."""
    template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
    tag = _TAG.match(template)
    event = getattr(record, "event", None)
    if isinstance(event, str) and event:
        return event, tag[1] if tag else None
    if tag:
        template = template[tag.end() :]
    # Drop %-placeholders so "route %s failed" names one event whatever the route.
    words = _NOT_WORD.sub("_", re.sub(r"%\S", " ", template).lower()).strip("_")
    name = words[:_MAX_EVENT_CHARS].rstrip("_") or record.name.rsplit(".", 1)[-1]
    return name, tag[1] if tag else None


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """``event``, ``tag`` (if any) and every extra the record carries."""
    event, tag = _event(record)
    fields: dict[str, Any] = {"event": event}
    if tag is not None:
        fields["tag"] = tag
    for key, value in vars(record).items():
        if key not in _STANDARD and key != "event" and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": fields.pop("event"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in fields.items():
            out[f"extra_{key}" if key in _FIXED else key] = value
        # json escapes newlines inside strings, so a traceback stays on its record's line.
        return _json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``ts level logger message event=... key=value ...``: the same fields, for a human."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (
            f"{_timestamp(record.created)} {record.levelname.lower():<7} {record.name} "
            f"{record.getMessage()} {pairs}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _SkeinHandler(logging.StreamHandler[TextIO]):
    """Marks the handler setup_logging installed, so a second call replaces it."""


def setup_logging(
    level: str, *, json: bool = True, stream: TextIO | None = None
) -> logging.Handler:
    """Send every record at ``level`` or above to ``stream`` (stderr by default), one per line.

    ``level`` is one of :data:`LEVELS` (any case), or ValueError. ``json`` picks
    :class:`JsonFormatter`, else :class:`TextFormatter`. Sets the root logger's level and
    replaces the handler an earlier call installed (so calling twice never doubles lines);
    other handlers are left alone. Above ``debug``, aioquic's ``quic`` logger (two info lines per
    handshake) is held to warnings. Returns the handler: remove it from the root logger to undo.
    """
    name = level.lower()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = _SkeinHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SkeinHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name.upper())
    for chatty in _CHATTY:
        logging.getLogger(chatty).setLevel(logging.NOTSET if name == "debug" else logging.WARNING)
    return handler
