"""How a ``dtp`` command reports that it failed: one line on stderr, ``dtp COMMAND:
MESSAGE``, or with ``--json`` one JSON object, ``{"error": KIND, "message": MESSAGE,
"exit_status": STATUS}``, for scripts that branch on the kind of failure (docs/cli.md,
"Exit status"). ``dtp daemon`` and ``dtp status`` report through :func:`report`, the
ledger and funds commands through :func:`dtp.cli._common.print_error`, which prints the
same forms. The standard library only: ``dtp daemon`` imports it before the rest of
the daemon (:mod:`dtp.cli._daemon`).
"""

from __future__ import annotations

import json
import sys
from typing import Final

__all__ = ["COMMAND_ERROR", "USAGE_ERROR", "report"]

#: The kinds of the failures a command line names itself, not a typed error of
#: :mod:`dtp.errors`: one that cannot be used as given (exit 2), and any other.
USAGE_ERROR: Final = "UsageError"
COMMAND_ERROR: Final = "CommandError"


def report(
    command: str, status: int, message: str | BaseException, *, as_json: bool, kind: str = ""
) -> int:
    """Print the failure ``message`` (an exception: its text) of ``dtp COMMAND`` on
    stderr and return ``status``. With ``as_json``, the JSON object; its ``error`` is
    ``kind``, else the exception's class name (``DaemonConfigError``, ``KeyFileError``...),
    else :data:`USAGE_ERROR` for exit status 2 and :data:`COMMAND_ERROR` otherwise."""
    text = str(message) or type(message).__name__
    if as_json:
        if not kind:
            if isinstance(message, BaseException):
                kind = type(message).__name__
            else:
                kind = USAGE_ERROR if status == 2 else COMMAND_ERROR
        data = {"error": kind, "message": text, "exit_status": status}
        print(json.dumps(data, sort_keys=True), file=sys.stderr, flush=True)
    else:
        print(f"dtp{' ' + command if command else ''}: {text}", file=sys.stderr, flush=True)
    return status
