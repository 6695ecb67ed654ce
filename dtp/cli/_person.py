"""Keeping a demo page up for a person (the browser steps of ``dtp demo``): until Enter
at a terminal, or for a few seconds where nobody can press it (a pipe, a file, CI)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["PERSON_WAIT", "SHORT_WAIT", "interactive", "wait_for_person"]

SHORT_WAIT = 5.0
"""Seconds the page stays up for a person when nobody can press Enter (output to a
pipe or a file, CI)."""
PERSON_WAIT = 600.0
"""The longest wait for Enter at a terminal: a demo left alone still ends."""
_POLL = 0.1


def interactive() -> bool:
    """A person is at a terminal: stdin and stdout are terminals, and no CI runs us."""
    if os.environ.get("CI"):
        return False
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):  # (a closed or replaced stream)
        return False


def wait_for_person(
    seconds: float,
    stdin: TextIO | None,
    on_tick: Callable[[], None],
) -> str:
    """Keep the page up for a person: ``seconds`` at most, or until a line (Enter) or
    end of input on ``stdin`` (None: a person cannot answer; only time ends it).
    ``on_tick`` runs about every 0.1 s meanwhile. Returns ``"enter"`` or ``"time"``."""
    deadline = time.monotonic() + seconds
    while True:
        on_tick()
        # (to a pipe, stdout is block-buffered: the address and what people write must
        # show while the page is up, not after)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stdout.flush()
        left = deadline - time.monotonic()
        if left <= 0:
            return "time"
        if stdin is None:
            time.sleep(min(_POLL, left))
            continue
        try:
            ready, _, _ = select.select([stdin], [], [], min(_POLL, left))
            if ready:
                stdin.readline()  # (Enter, or "" at end of input: either ends the wait)
                return "enter"
        except (OSError, ValueError):  # (a terminal that went away: time alone ends it)
            stdin = None
