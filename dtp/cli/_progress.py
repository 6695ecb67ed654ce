"""Progress on stderr for CLI work that takes a while (``dtp deploy``, an encrypted key's
derivation, ``dtp refund --wait``, a ledger scan): a spinner, or a bar when the end is
known, drawn only on a terminal and only once the work has taken more than
:data:`SHOW_AFTER` seconds, then erased. Standard library only (a thread and ``\\r``):
the bar is one line, which is all these commands need.

    with progress("publishing") as shown:
        ...                     # a spinner, after a second
    with progress("waiting", total=600) as shown:
        shown.update(120)       # a bar, 20 %
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, TextIO

__all__ = ["SHOW_AFTER", "Progress", "progress"]

#: Work that ends sooner shows nothing.
SHOW_AFTER: Final = 1.0
_FRAMES: Final = "|/-\\"
_WIDTH: Final = 24
_TICK: Final = 0.1


class Progress:
    """One line of progress on ``stream`` (see :func:`progress`)."""

    def __init__(self, label: str, total: float | None, stream: TextIO, enabled: bool) -> None:
        self.label = label
        self.total = total
        self.done = 0.0
        self.note = ""
        self._stream = stream
        self._enabled = enabled
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._drawn = 0
        self._thread: threading.Thread | None = None

    def update(self, done: float, note: str = "") -> None:
        """How far along (in the units of ``total``) and a few words beside it."""
        self.done, self.note = done, note

    def line(self, frame: int) -> str:
        """The line as drawn now (tested without a terminal)."""
        elapsed = time.monotonic() - self._started
        if self.total:
            share = min(1.0, max(0.0, self.done / self.total))
            filled = int(share * _WIDTH)
            bar = "#" * filled + "-" * (_WIDTH - filled)
            text = f"{self.label} [{bar}] {share:4.0%}"
        else:
            text = f"{self.label} {_FRAMES[frame % len(_FRAMES)]} {elapsed:.0f} s"
        return f"{text} {self.note}".rstrip()

    def _run(self) -> None:
        frame = 0
        if self._stop.wait(SHOW_AFTER):
            return
        while not self._stop.is_set():
            self._draw(self.line(frame))
            frame += 1
            self._stop.wait(_TICK)

    def _draw(self, text: str) -> None:
        pad = max(0, self._drawn - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._drawn = len(text)

    def start(self) -> None:
        if self._enabled:
            self._thread = threading.Thread(target=self._run, name="dtp-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self._drawn:  # erase it: what the command prints next starts clean
                self._stream.write("\r" + " " * self._drawn + "\r")
                self._stream.flush()


@contextmanager
def progress(
    label: str, total: float | None = None, *, stream: TextIO | None = None
) -> Iterator[Progress]:
    """Progress of the work in the ``with`` block, on ``stream`` (default stderr) when it
    is a terminal; nothing otherwise (a pipe, a log file, a test)."""
    out = stream if stream is not None else sys.stderr
    enabled = bool(getattr(out, "isatty", lambda: False)())
    shown = Progress(label, total, out, enabled)
    shown.start()
    try:
        yield shown
    finally:
        shown.stop()
