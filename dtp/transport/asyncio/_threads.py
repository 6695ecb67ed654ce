"""Worker-thread calls that a cancelled await cannot stop, and what they made is
released when nobody will take it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def threaded_or_released(make: Callable[[], T], release: Callable[[T], None]) -> T:
    """``make()`` in a worker thread, which a cancelled await cannot stop: cancelled
    meanwhile, what it makes is released once it is there (a ledger bridge's thread and
    socket pair, a connected TCP socket: else they leak, the thread running on)."""
    job = asyncio.ensure_future(asyncio.to_thread(make))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:

        def made(job: asyncio.Future[T]) -> None:
            if not job.cancelled() and job.exception() is None:
                release(job.result())

        job.add_done_callback(made)
        raise
