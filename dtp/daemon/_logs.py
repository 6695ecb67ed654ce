"""Structured logs of the daemon: one JSON object per line (or ``key=value`` text), on
stderr or in a file of their own, rotated by size (``[daemon] log_file``).

Call sites pass their fields as ``extra=kv(service=..., client=...)``.
"""

from __future__ import annotations

import json
import logging
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

__all__ = ["LOG_BACKUPS", "LOG_MAX_BYTES", "JsonFormatter", "kv", "setup_logging"]


def kv(**fields: Any) -> dict[str, Any]:
    """The ``extra`` argument that attaches ``fields`` to a log record."""
    return {"fields": fields}


def log_failure(log: logging.Logger, message: str, error: BaseException, **fields: Any) -> None:
    """Log at ERROR what a background task died of: ``fields`` and the error (its type
    and text in the ``error`` field, its traceback attached)."""
    log.error(message, extra=kv(**fields, error=f"{type(error).__name__}: {error}"), exc_info=error)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's
    ``fields`` extra."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict) and extra:
            text += " " + " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())
        return text


def _text_value(value: Any) -> str:
    """``value`` as one ``key=value`` token: quoted and escaped (as JSON) when it holds
    a space, a quote, an ``=`` or a character that is not printable. Written as it
    was, a field holding a newline -- a refusal's reason, which the remote daemon
    writes -- started a line of its own making in the log (a forged entry), and one
    holding a space read as more fields."""
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return json.dumps(text)


LOG_MAX_BYTES = 10 * 1024 * 1024
"""``[daemon] log_max_bytes`` by default: a log file is rotated at this size."""
LOG_BACKUPS = 5
"""``[daemon] log_backups`` by default: rotated files kept (``daemon.log.1`` …)."""


def setup_logging(
    fmt: str,
    level: str,
    path: Path | None = None,
    max_bytes: int = LOG_MAX_BYTES,
    backups: int = LOG_BACKUPS,
) -> None:
    """Send the daemon's logs to stderr in ``fmt`` (``json`` or ``text``), or to the file
    ``path``, rotated once it reaches ``max_bytes`` (0: never) with ``backups`` older
    files kept (``path.1`` the newest of them; :class:`logging.handlers.RotatingFileHandler`).
    Raises OSError when the file cannot be opened."""
    handler: logging.Handler
    if path is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, RotatingFileHandler):  # (an earlier daemon's of this process)
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
