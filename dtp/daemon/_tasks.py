"""Ending the daemon's own background tasks without losing the caller's cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from dtp.daemon._logs import kv, log_failure
from dtp.errors import DTPError, DTPTimeoutError

__all__ = ["cancel_and_wait", "end_for_cleanup", "within"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def cancel_and_wait(task: asyncio.Future[Any]) -> Exception | None:
    """Cancel ``task`` and wait for it to end; returns the error it died of (an
    :class:`Exception`), or None when it was cancelled or returned.

    :class:`asyncio.CancelledError` comes out of this only when the *caller* is
    cancelled while it waits (``task`` then finishes its ending unwatched: an error it
    dies of then is logged). The usual ``task.cancel()`` then ``await task`` in a
    ``suppress(CancelledError)`` cannot tell the task's CancelledError from the
    caller's, and swallows both: worse, a caller's cancel while it awaits a task is
    passed on to that task, so the caller's own cancellation is lost outright, and a
    drain cancelled (or timed out by ``wait_for``) goes on as if nothing had happened.
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
    wait is over; an error one dies of then is logged). Raised at once, it would skip
    the settlement and the rest; swallowed, the cancellation would be lost."""
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


async def within(
    timeout: float,
    work: Coroutine[Any, Any, T],
    unwinding: set[asyncio.Task[Any]],
    why: str,
) -> T:
    """``await work``, given up after ``timeout`` seconds (:class:`DTPTimeoutError`,
    saying ``why``): the caller waits no longer, even while ``work`` unwinds. Past the
    timeout (or at the caller's cancel) ``work`` is cancelled and left to finish its
    unwinding in the background -- an open on the ledger abandoned, which is a
    half-close, a transaction that a stalled node holds up for as long as it stalls --
    kept in ``unwinding`` until it ends (a drain waits for those), an error it dies of
    then logged. (``asyncio.timeout`` around ``work`` waits for that unwinding: a bound
    on an open became the open's timeout plus the abandoning transaction's.)"""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        _leave_unwinding(task, unwinding)
        raise
    if task.done():
        return task.result()
    _leave_unwinding(task, unwinding)
    raise DTPTimeoutError(why)


def _leave_unwinding(task: asyncio.Task[Any], unwinding: set[asyncio.Task[Any]]) -> None:
    task.cancel()
    unwinding.add(task)
    task.add_done_callback(unwinding.discard)
    task.add_done_callback(_log_abandoned)


def _log_abandoned(task: asyncio.Task[Any]) -> None:
    """An abandoned work's end: a DTPError (the open failing as it was given up) is
    what the caller reported already, the timeout; anything else is a fault, logged."""
    if task.cancelled() or (error := task.exception()) is None:
        return
    if isinstance(error, DTPError):
        logger.debug("abandoned work ended with an error", extra=kv(error=str(error)))
        return
    _log_late_failure(task)


def _watch_unwatched(task: asyncio.Future[Any]) -> None:
    """Have the error ``task`` may yet die of logged, once nobody waits for it: left
    alone, the error would be lost, and asyncio say only "Task exception was never
    retrieved" when the task is collected (if ever)."""
    task.add_done_callback(_log_late_failure)


def _log_late_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled() or (error := task.exception()) is None:
        return
    name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
    log_failure(logger, "task failed after its waiter was cancelled", error, task=name)
