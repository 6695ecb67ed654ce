"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Callable

import pytest


def wait_for(check: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``check()`` every ``interval`` seconds until it is truthy (True) or
    ``timeout`` seconds have passed (False, after one last look)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return bool(check())
        time.sleep(interval)
    return True


def raised_within(
    call: Callable[[], object], timeout: float, unstick: Callable[[], object] | None = None
) -> BaseException | None:
    """What ``call()`` raised (None: it returned), run in a thread of its own. Still
    running after ``timeout`` seconds, the test fails, after ``unstick()`` (when given)
    ended the call's wait: a call that should return at once never hangs the suite."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # the call's exception is the result
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if unstick is not None:
            unstick()
            thread.join(timeout)
        pytest.fail(f"the call was still running after {timeout} s")
    return outcome[0]


async def async_wait_for(
    check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> bool:
    """``wait_for`` on an event loop: polls ``check()`` every ``interval`` seconds
    without blocking it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def thread_stacks() -> str:
    """Every thread's stack, for the message of a failed wait."""
    frames = sys._current_frames()
    return "\n".join(
        f"{t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
        for t in threading.enumerate()
        if t.ident in frames
    )
