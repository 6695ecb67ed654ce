"""What a piece of test code leaves open: the ResourceWarnings (unclosed sockets,
transports, files) that a garbage collection right after it reports, and the file
descriptors still on a file."""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Callable
from pathlib import Path


def resource_warnings(run: Callable[[], object]) -> list[str]:
    """``run()``, then the messages of the ResourceWarnings it left behind."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def open_fds(path: Path) -> int:
    """How many of this process's file descriptors are on ``path`` (Linux /proc)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
    return count
