"""An asyncio event loop in a thread of its own, for tests whose clients are blocking:
:class:`LoopThread` for a helper that keeps one (a server driver, a node stand-in), and
:func:`loop_in_thread` for a test body."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: How many more passes a stopping loop runs before it stops (see :meth:`LoopThread.close`):
#: each polls the sockets and runs what is due, so a closing transport's last write and
#: its connection_lost (each a pass later) have run by then, at no cost in time.
SETTLE_PASSES = 10


async def _settle() -> None:
    for _ in range(SETTLE_PASSES):
        await asyncio.sleep(0)


async def _cancel_the_rest() -> None:
    # what is still pending is cancelled and awaited, as asyncio.run does at its end
    rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


class LoopThread:
    """An event loop running in a daemon thread from construction until :meth:`close`.

    With ``catch_errors``, what the loop meets that no code caught ("Exception in
    callback ...") is appended to :attr:`errors` instead of being logged, for a test to
    assert there was none."""

    def __init__(self, *, catch_errors: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        #: The loop's uncaught errors' contexts (with ``catch_errors``).
        self.errors: list[dict[str, Any]] = []
        if catch_errors:
            self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``work`` on the loop; its future, not waited for."""
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``work`` on the loop and return its result (``TimeoutError`` after
        ``timeout`` seconds)."""
        return self.submit(work).result(timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has closed the loop."""
        return self.loop.is_closed()

    def close(self, *, cancel: bool = False, timeout: float = 5) -> None:
        """Stop the loop, join its thread and close it (again: nothing). With ``cancel``,
        the tasks still pending are cancelled and awaited first (an error doing so is
        raised once the loop is closed all the same)."""
        if self.loop.is_closed():
            return
        try:
            if cancel:
                self.run(_cancel_the_rest(), timeout)
        finally:
            # a few more passes first: a transport closed in the loop's last pass has its
            # connection_lost still to run, and closing the loop would leave it "closing"
            # (a ResourceWarning wherever the garbage collector finds it next)
            with contextlib.suppress(Exception):
                self.run(_settle(), timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
            self.loop.close()


@contextmanager
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own (the clients are blocking)."""
    thread = LoopThread()
    try:
        yield thread.loop
    finally:
        thread.close()
