"""start_now(): a task whose first step runs at once from a callback of the loop, with
the task current, as serve_streams() starts a stream's handler
(dtp.transport.asyncio._begun)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

from dtp.transport.asyncio._begun import start_now

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="outside")


def _from_callback(
    make: Callable[[], Coroutine[Any, Any, Any]],
) -> tuple[asyncio.Task[Any], bool, list[str]]:
    """Run start_now(make()) in a callback of a new loop (no task current); then the
    loop until the task ends: (the task, whether it ended at once, what was seen
    right after start_now returned)."""
    loop = asyncio.new_event_loop()
    seen: list[str] = []
    got: list[tuple[asyncio.Task[Any], bool]] = []

    def callback() -> None:
        got.append(start_now(loop, make()))
        seen.append(f"after start_now: {VAR.get()}")

    try:
        loop.call_soon(callback)
        loop.run_until_complete(asyncio.sleep(0))
        task, ended = got[0]
        loop.run_until_complete(asyncio.wait([task]))
    finally:
        loop.close()
    return task, ended, seen


def test_the_first_step_runs_at_once_with_its_task_current() -> None:
    steps: list[str] = []
    current: list[asyncio.Task[Any] | None] = []

    async def handler() -> int:
        current.append(asyncio.current_task())
        VAR.set("inside")  # (in the task's own context: not the callback's)
        steps.append("first step")
        return 7

    task, ended, seen = _from_callback(handler)
    assert steps == ["first step"]
    assert ended and current == [task]
    assert seen == ["after start_now: outside"]
    assert task.result() == 7


def test_a_step_that_waits_goes_on_in_the_task() -> None:
    order: list[str] = []

    async def handler() -> str:
        order.append("before")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        loop.call_later(0.01, future.set_result, "answer")
        async with asyncio.timeout(5):  # (needs the current task: the one that goes on)
            got = await future
        order.append(f"after: {got} in {asyncio.current_task() is not None}")
        return got

    task, ended, _ = _from_callback(handler)
    assert not ended
    assert order == ["before", "after: answer in True"]
    assert task.result() == "answer"


def test_an_error_after_a_wait_is_the_tasks() -> None:
    async def handler() -> None:
        await asyncio.sleep(0)
        raise ValueError("late")

    task, ended, _ = _from_callback(handler)
    assert not ended
    assert isinstance(task.exception(), ValueError)


def test_an_error_in_the_first_step_is_the_tasks() -> None:
    async def handler() -> None:
        raise ValueError("early")

    task, ended, _ = _from_callback(handler)
    assert ended
    assert isinstance(task.exception(), ValueError)


def test_a_cancel_reaches_the_coroutine_where_it_waits() -> None:
    seen: list[str] = []
    loop = asyncio.new_event_loop()

    async def handler() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled at its wait")
            raise

    holder: list[asyncio.Task[Any]] = []

    def callback() -> None:
        task, _ = start_now(loop, handler())
        task.cancel()  # (before the task's own first step)
        holder.append(task)

    try:
        loop.call_soon(callback)
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(asyncio.wait(holder))
    finally:
        loop.close()
    assert seen == ["cancelled at its wait"]
    assert holder[0].cancelled()


def test_inside_a_task_it_is_a_plain_create_task() -> None:
    steps: list[str] = []

    async def handler() -> None:
        steps.append("ran")

    async def main() -> bool:
        task, ended = start_now(asyncio.get_running_loop(), handler())
        assert steps == []  # (not yet: a task is current)
        await task
        return ended

    assert asyncio.run(main()) is False
    assert steps == ["ran"]
