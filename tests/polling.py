"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``check()`` every ``interval`` seconds until it is truthy (True) or
    ``timeout`` seconds have passed (False, after one last look)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return bool(check())
        time.sleep(interval)
    return True
