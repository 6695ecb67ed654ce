"""Closing a listening :class:`asyncio.Server` without losing the connections it
accepted a moment before: the transport servers' (:mod:`dtp.transport.asyncio._server`)
and the daemon's own listeners (its forwarders', its status endpoint's)."""

from __future__ import annotations

import asyncio
import inspect
from asyncio.selector_events import BaseSelectorEventLoop

__all__ = ["accepts_waiting", "close_listener"]


def close_listener(listener: asyncio.base_events.Server) -> asyncio.Future[None] | None:
    """Close ``listener`` once the connections it accepted already have their transports:
    the future done then (None: closed now, as it is when no accept waits). asyncio's
    selector loops accept in a task of their own whose first step makes the transport,
    a pass later; a listener closed before that step fails it (``Server._attach``
    asserts the listener is open, and the error goes unseen), leaving the connection's
    socket open until the garbage collector finds it -- a ResourceWarning where it does.
    So the listener stops reading at once and, while such a step waits, is closed after
    it, which the loop runs first (tests/transport/test_aio_server_close_accepting.py,
    tests/daemon/test_listener_close_accepting.py)."""
    loop = listener.get_loop()
    # (sockets without a descriptor: a simulated network's, which accept without a reader)
    fds = [fd for sock in listener.sockets if (fd := sock.fileno()) >= 0]
    if not isinstance(loop, BaseSelectorEventLoop) or not loop.is_running() or not fds:
        listener.close()  # (no accept task: uvloop makes the transport as it accepts)
        return None
    for fd in fds:
        loop.remove_reader(fd)
    if not accepts_waiting(loop):
        # closed now, as asyncio's own close() does: a loop stopped right after close()
        # would never run the pass a deferred close waits for
        listener.close()
        return None
    closed = loop.create_future()

    def close() -> None:
        listener.close()
        if not closed.done():
            closed.set_result(None)

    loop.call_soon(close)
    return closed


def accepts_waiting(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether an accept task of ``loop`` has not yet taken its first step (asyncio's
    ``BaseSelectorEventLoop._accept_connection2``; under another name, none is seen
    and the listener closes at once, as before this rule)."""
    for task in asyncio.all_tasks(loop):
        coro = task.get_coro()
        if (
            getattr(coro, "__qualname__", "").endswith("_accept_connection2")
            and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED  # type: ignore[arg-type]
        ):
            return True
    return False
