"""A task whose first step runs at once, in the caller's turn of the loop:
``asyncio.Task(..., eager_start=True)`` from Python 3.12, and the same for 3.11.

There :func:`start_now` makes the task first (so that the step runs with it as the current
task: ``asyncio.current_task()``, ``asyncio.timeout()`` inside it see the task that
carries the coroutine on), runs the coroutine's first step in the task's context, and
hands the task a :class:`_Begun` wrapper that replays that step's outcome at the task's
own first step, then passes every later ``send``/``throw`` to the coroutine.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

_YIELDED = 0
_RETURNED = 1
_RAISED = 2
if sys.version_info < (3, 12):
    #: The running task of each loop: asyncio's own table, which current_task() reads
    _current_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = (
        asyncio.tasks._current_tasks  # type: ignore[attr-defined]
    )


class _Begun(Coroutine[Any, Any, T]):
    """``coro`` after its first step: the task's first ``send`` gets what that step
    came to (the future it waits on, its result, or its exception)."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._first: tuple[int, Any] | None = None

    def send(self, value: Any) -> Any:
        first = self._first
        if first is None:
            return self._coro.send(value)
        self._first = None
        kind, outcome = first
        if kind == _YIELDED:
            return outcome
        if kind == _RETURNED:
            raise StopIteration(outcome)
        raise outcome

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        first = self._first
        if first is not None and first[0] != _YIELDED:
            # (cancelled before the task's first step, with the work done already: the
            # outcome stands, as an eager task's does)
            return self.send(None)
        self._first = None
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)

    def close(self) -> None:
        self._first = None
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        raise TypeError("a _Begun is run by its task only")


if sys.version_info >= (3, 12):

    def start_now(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
    ) -> tuple[asyncio.Task[T], bool]:
        """A task for ``coro`` whose first step has run already (from a callback of the
        loop, with no task current), and whether ``coro`` ended in it; a plain
        ``create_task`` where a task is current (and False)."""
        if asyncio.current_task(loop) is not None:
            return loop.create_task(coro), False
        # (an eager task that ends in its first step is never scheduled at all)
        eager = asyncio.Task(coro, loop=loop, eager_start=True)
        return eager, eager.done()

else:
    # (asyncio's own functions, looked up once: a stream served calls each)
    _enter_task = asyncio.tasks._enter_task
    _leave_task = asyncio.tasks._leave_task
    _copy_context = contextvars.copy_context

    def start_now(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
    ) -> tuple[asyncio.Task[T], bool]:
        """As 3.12's (above), with a :class:`_Begun` replaying the first step."""
        # (3.11's current_task() is Python: its table is read directly, a call fewer)
        if _current_tasks.get(loop) is not None:
            return loop.create_task(coro), False
        begun: _Begun[T] = _Begun(coro)
        context = _copy_context()
        task = loop.create_task(begun, context=context)
        _enter_task(loop, task)
        # the step runs in the task's context with the task current; whatever it comes
        # to is the task's first step's (a BaseException too: the task raises it, as the
        # step's own)
        try:
            yielded = context.run(coro.send, None)
        except StopIteration as done:
            _leave_task(loop, task)
            begun._first = (_RETURNED, done.value)
            return task, True
        except BaseException as exc:
            _leave_task(loop, task)
            begun._first = (_RAISED, exc)
            return task, True
        _leave_task(loop, task)
        begun._first = (_YIELDED, yielded)
        return task, False
