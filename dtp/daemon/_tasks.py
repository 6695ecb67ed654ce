"""Ending the daemon's own background tasks without losing the caller's cancellation."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dtp.daemon.logs import log_failure

__all__ = ["cancel_and_wait", "end_for_cleanup"]

logger = logging.getLogger("dtp.daemon.tasks")


async def cancel_and_wait(task: asyncio.Future[Any]) -> Exception | None:
    """Cancel ``task`` and wait for it to end; returns the error it died of (an
    :class:`Exception`), or None when it was cancelled or returned.

    :class:`asyncio.CancelledError` comes out of this only when the *caller* is
    cancelled while it waits (``task`` then finishes its ending unwatched: an error it
    dies of then is logged). The usual ``task.cancel()`` then ``await task`` in a
    ``suppress(CancelledError)`` cannot tell the task's CancelledError from the
    caller's, and swallows both: worse, a caller's cancel while it awaits a task is
    passed on to that task, so the caller's own cancellation was lost outright, and a
    drain cancelled (or timed out by ``wait_for``) went on as if nothing had happened.
    ``asyncio.wait`` raises only the caller's. A task ending with a BaseException that
    is no Exception (SystemExit, KeyboardInterrupt) has it raised here, as ``await
    task`` did."""
    task.cancel()
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        _watch_unwatched(task)
        raise
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
    finishes its cleanup and raises it then (the tasks still ending end unwatched: the
    wait is over; an error one dies of then is logged). Raised at once, the settlement
    and the rest were skipped; swallowed, as before cancel_and_wait, the cancellation
    was lost."""
    for task in tasks:
        task.cancel()
    cancelled: asyncio.CancelledError | None = None
    try:
        await asyncio.wait(set(tasks))
    except asyncio.CancelledError as exc:
        cancelled = exc
    errors = []
    for task in tasks:
        if not task.done():
            _watch_unwatched(task)
            continue
        if task.cancelled():
            continue
        error = task.exception()
        if error is None:
            continue
        if not isinstance(error, Exception):
            raise error
        errors.append(error)
    return errors, cancelled


def _watch_unwatched(task: asyncio.Future[Any]) -> None:
    """Have the error ``task`` may yet die of logged, once nobody waits for it: left
    alone, the error was lost, and asyncio said only "Task exception was never
    retrieved" when the task was collected (if ever)."""
    task.add_done_callback(_log_late_failure)


def _log_late_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled() or (error := task.exception()) is None:
        return
    name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
    log_failure(logger, "task failed after its waiter was cancelled", error, task=name)
