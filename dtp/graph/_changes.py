"""What subscribers of a graph get: each changed field as a :class:`Change`, delivered to
a callback (:class:`Subscription`) or queued for an async iterator (:class:`ChangeStream`)
(docs/graph.md, "Subscriptions"; :meth:`Graph.subscribe <dtp.graph._store.Graph.subscribe>`
registers them)."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from dtp.graph._arguments import check_names
from dtp.graph.values import JSON


@dataclass(frozen=True)
class Change:
    """One field that changed, as subscribers see it."""

    soul: str
    """The node."""
    field: str
    """The field name."""
    value: JSON
    """Its new value (a link is ``{"#": soul}``)."""
    state: float
    """Its HAM state (ms since the epoch, from the writer's hybrid clock)."""


class SubscribedGraph(Protocol):
    """What subscriptions use of their graph (a :class:`~dtp.graph._store.Graph`)."""

    def subscribe(
        self, soul: str, callback: Callable[[Change], None], *, field: str | None = None
    ) -> Subscription: ...

    def _unsubscribe(self, sub: Subscription, *, wait: bool = True) -> None: ...


class Subscription:
    """A registered change callback; :meth:`cancel` removes it."""

    def __init__(
        self,
        graph: SubscribedGraph,
        soul: str,
        field: str | None,
        callback: Callable[[Change], None],
    ) -> None:
        self.soul = soul
        self.field = field
        self.callback = callback
        self._graph = graph
        self.active = True
        # called when the graph closes (a ChangeStream ends its readers' iteration)
        self._on_graph_close: Callable[[], None] | None = None
        # a ChangeStream while a reader waits on it: the graph then holds the stream, and
        # through it the waiting task (asyncio holds tasks only weakly)
        self._reader: object = None

    def cancel(self) -> None:
        """Stop receiving changes (idempotent)."""
        if self.active:
            self.active = False
            self._graph._unsubscribe(self)

    def _abandon(self) -> None:
        # run by the garbage collector, in whatever thread it runs: it must not wait
        # for the graph's lock, which that thread may be holding or waiting behind
        if self.active:
            self.active = False
            self._graph._unsubscribe(self, wait=False)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class ChangeStream:
    """An async iterator over the changes of a node or field (see
    :meth:`~dtp.graph._store.Graph.changes`).

    Changes are queued up to ``maxsize`` (at least 1); beyond that the oldest are
    dropped and :attr:`dropped` counts them (a slow reader never blocks writers). The
    iteration ends, once drained, at :meth:`close` or when the graph is closed.
    """

    def __init__(self, graph: SubscribedGraph, soul: str, field: str | None, maxsize: int) -> None:
        if type(maxsize) is not int or maxsize < 1:
            raise ValueError(f"changes(maxsize=...) must be an int >= 1, not {maxsize!r}")
        # a bad soul or field is reported as such, not as "no running event loop"
        check_names(soul, field)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "changes() is an async iterator: call it in a coroutine, with its event loop "
                "running (async for change in graph.changes(soul)); outside asyncio, "
                "graph.subscribe(soul, callback) calls back in the writer's thread"
            ) from None
        self._queue: deque[Change] = deque()
        self._maxsize = maxsize
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self.dropped = 0
        # the graph holds the stream only weakly: a stream nobody reads any more is
        # collected, and its subscription goes with it rather than at the graph's close
        stream = weakref.ref(self)

        def deliver(change: Change) -> None:
            alive = stream()
            if alive is not None:
                alive._deliver(change)

        def on_graph_close() -> None:
            alive = stream()
            if alive is not None:
                alive.close()

        self._sub = graph.subscribe(soul, deliver, field=field)
        # no change comes after the graph's close(): the iteration ends then, once
        # drained, rather than waiting for ever
        self._sub._on_graph_close = on_graph_close
        weakref.finalize(self, self._sub._abandon)

    def _deliver(self, change: Change) -> None:
        try:
            self._loop.call_soon_threadsafe(self._put, change)
        except RuntimeError:  # the loop is closed: nobody can read this stream any more
            self._sub.cancel()

    def _put(self, change: Change) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(change)
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> Change:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            self._sub._reader = self
            try:
                await waiter
            finally:
                # a cancelled reader must not leave its future behind
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                if not self._waiters:
                    self._sub._reader = None
        return self._queue.popleft()

    def close(self) -> None:
        """Stop listening; the iterator ends once the queue is drained (a reader
        waiting for the next change is woken). Callable from any thread."""
        self._sub.cancel()
        try:
            # from the loop, in turn: changes delivered before (their _put callbacks
            # already scheduled, from any thread) are still queued and read first; and
            # futures belong to their loop: the readers are woken from it
            self._loop.call_soon_threadsafe(self._finish)
        except RuntimeError:  # a closed loop has no readers left
            self._closed = True

    def _finish(self) -> None:
        self._closed = True
        self._wake()

    async def aclose(self) -> None:
        """:meth:`close`, awaitable (what ``contextlib.aclosing`` and async generators'
        users call)."""
        self.close()
