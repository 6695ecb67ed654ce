"""An asyncio event loop in a thread of its own, for tests whose clients are blocking."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def loop_in_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own (the clients are blocking)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        # a few more passes first: a transport closed in the loop's last pass has its
        # connection_lost still to run, and closing the loop would leave it "closing"
        # (a ResourceWarning wherever the garbage collector finds it next)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
