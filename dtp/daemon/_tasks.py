"""Ending the daemon's own background tasks without losing the caller's cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait", "end_for_cleanup"]


async def cancel_and_wait(task: asyncio.Future[Any]) -> Exception | None:
    """Cancel ``task`` and wait for it to end; returns the error it died of (an
    :class:`Exception`), or None when it was cancelled or returned.

    :class:`asyncio.CancelledError` comes out of this only when the *caller* is
    cancelled while it waits (``task`` then finishes its ending unwatched). The usual
    ``task.cancel()`` then ``await task`` in a ``suppress(CancelledError)`` cannot tell
    the task's CancelledError from the caller's, and swallows both: worse, a caller's
    cancel while it awaits a task is passed on to that task, so the caller's own
    cancellation was lost outright, and a drain cancelled (or timed out by
    ``wait_for``) went on as if nothing had happened. ``asyncio.wait`` raises only the
    caller's. A task ending with a BaseException that is no Exception (SystemExit,
    KeyboardInterrupt) has it raised here, as ``await task`` did."""
    task.cancel()
    await asyncio.wait({task})
    if task.cancelled():
        return None
    error = task.exception()
    if error is None or isinstance(error, Exception):
        return error
    raise error


async def end_for_cleanup(
    *tasks: asyncio.Future[Any],
) -> tuple[list[Exception], asyncio.CancelledError | None]:
    """:func:`cancel_and_wait` for a ``finally`` block whose cleanup must run whole (a
    connection's settlement, its client's rate-limit slot, the counts): cancel
    ``tasks``, wait for them to end, and return the errors they died of and the
    caller's own cancellation, should it come meanwhile -- not raised here: the caller
    finishes its cleanup and raises it then (the tasks end unwatched: the wait is
    over). Raised at once, the settlement and the rest were skipped; swallowed, as
    before cancel_and_wait, the cancellation was lost."""
    for task in tasks:
        task.cancel()
    cancelled: asyncio.CancelledError | None = None
    try:
        await asyncio.wait(set(tasks))
    except asyncio.CancelledError as exc:
        cancelled = exc
    errors = []
    for task in tasks:
        if not task.done() or task.cancelled():
            continue
        error = task.exception()
        if error is None:
            continue
        if not isinstance(error, Exception):
            raise error
        errors.append(error)
    return errors, cancelled
