"""The two browsers over one :class:`~dtp.discovery._mdns.BrowseCore`: :class:`Browser`
(blocking: iterate its events, wait for a peer, or have a callback called in a thread of
its own) and :class:`AsyncBrowser` (the same for asyncio). They differ only in how an
event found on the mDNS thread reaches the caller."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

from dtp.discovery._mdns import BrowseCore, LanDiscovery
from dtp.discovery._peers import LanEvent, LanPeer, PeerFilter, PeerTable
from dtp.discovery.errors import LanDiscoveryError
from dtp.errors import DTPTimeoutError

__all__ = ["MAX_QUEUED", "AsyncBrowser", "Browser", "EventCallback"]

logger = logging.getLogger("dtp.discovery")

MAX_QUEUED = 1024
"""Events a browser holds for its reader at most: past it the oldest is dropped and
counted in ``dropped`` (its peer table, :meth:`Browser.peers`, stays exact)."""

EventCallback = Callable[[LanEvent], Any]
"""Called with each event (a coroutine function too, on :class:`AsyncBrowser`)."""


def _check_timeout(name: str, value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9
    ):
        raise ValueError(f"{name} must be None or a number of seconds >= 0, not {value!r}")


def _matching(peers: list[LanPeer], predicate: Callable[[LanPeer], bool] | None) -> LanPeer | None:
    for peer in peers:
        if predicate is None or predicate(peer):
            return peer
    return None


class _BrowserBase:
    def __init__(
        self,
        discovery: LanDiscovery | None,
        peer_filter: PeerFilter,
        on_event: EventCallback | None,
        max_peers: int,
        max_queued: int,
    ) -> None:
        if on_event is not None and not callable(on_event):
            raise TypeError("on_event must be callable")
        for name, value in (("max_peers", max_peers), ("max_queued", max_queued)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")
        self.discovery = discovery
        self.on_event = on_event
        self.max_queued = max_queued
        self.dropped = 0
        """Events dropped from a full queue (nobody read them in time)."""
        self.owns_discovery = False
        """Close :attr:`discovery` with the browser (the module functions make one of
        their own)."""
        self._table = PeerTable(peer_filter, max_peers)
        self._queue: deque[LanEvent] = deque()
        self._closed = False
        self._core: BrowseCore | None = None

    def _queued(self, event: LanEvent) -> None:
        if len(self._queue) >= self.max_queued:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)

    def peers(self) -> list[LanPeer]:
        """The peers found and still announced, as resolved."""
        if self._core is None:
            return []
        return self._core.peers()

    @property
    def refused(self) -> int:
        """Records refused (bad TXT records, no address, a full table): never raised,
        never delivered."""
        if self._core is None:
            return 0
        with self._core.lock:
            return self._table.refused

    @property
    def refused_by_reason(self) -> Counter[str]:
        if self._core is None:
            return Counter()
        with self._core.lock:
            return Counter(self._table.refused_by_reason)

    @property
    def closed(self) -> bool:
        return self._closed


class Browser(_BrowserBase):
    """Peers found on the LAN, as they come and go (:func:`dtp.discovery.lan.browse`).

    Iterating it (or :meth:`events`) yields :class:`LanEvent`\\ s as they happen, until
    :meth:`close`; :meth:`wait_for` waits for one peer; :meth:`peers` lists those found
    now. ``on_event`` is called with each event in a thread of the browser's (one at a
    time, in order; what it raises is logged). Close it, or use ``with``."""

    def __init__(
        self,
        discovery: LanDiscovery,
        peer_filter: PeerFilter,
        *,
        on_event: EventCallback | None = None,
        max_peers: int,
        max_queued: int = MAX_QUEUED,
        timeout: float | None = 10.0,
    ) -> None:
        super().__init__(discovery, peer_filter, on_event, max_peers, max_queued)
        self.discovery: LanDiscovery = discovery
        self._cond = threading.Condition()
        self._version = 0
        self._callbacks: deque[LanEvent] = deque()
        self._thread: threading.Thread | None = None
        if on_event is not None:
            self._thread = threading.Thread(
                target=self._run_callbacks, name="dtp-lan-browse", daemon=True
            )
            self._thread.start()
        core = BrowseCore(discovery, self._table, self._deliver)
        self._core = core
        try:
            discovery.start_browsing(core, timeout)
        except BaseException:
            self.close()
            raise

    def _deliver(self, event: LanEvent) -> None:  # (on the mDNS thread)
        with self._cond:
            self._queued(event)
            if self.on_event is not None:
                self._callbacks.append(event)
            self._version += 1
            self._cond.notify_all()

    def _run_callbacks(self) -> None:
        assert self.on_event is not None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._callbacks or self._closed)
                if not self._callbacks:
                    return
                event = self._callbacks.popleft()
            try:
                self.on_event(event)
            except Exception:
                logger.exception("LAN discovery: the on_event callback raised")

    def events(self, timeout: float | None = None) -> Iterator[LanEvent]:
        """The events as they come, until the browser closes or ``timeout`` seconds
        pass with none (None: until it closes)."""
        _check_timeout("timeout", timeout)
        while True:
            with self._cond:
                if not self._cond.wait_for(lambda: self._queue or self._closed, timeout):
                    return
                if not self._queue:
                    return
                event = self._queue.popleft()
            yield event

    def __iter__(self) -> Iterator[LanEvent]:
        return self.events()

    def wait_for(
        self, predicate: Callable[[LanPeer], bool] | None = None, timeout: float | None = 10.0
    ) -> LanPeer:
        """A peer found (now or later) for which ``predicate`` is true (None: any);
        DTPTimeoutError after ``timeout`` seconds, LanDiscoveryError once closed."""
        _check_timeout("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                version = self._version
            peer = _matching(self.peers(), predicate)
            if peer is not None:
                return peer
            with self._cond:
                left = None if deadline is None else deadline - time.monotonic()
                if self._closed:
                    raise LanDiscoveryError("the browser is closed")
                if left is not None and left <= 0:
                    raise DTPTimeoutError(f"no matching peer found on the LAN in {timeout} s")
                self._cond.wait_for(
                    lambda seen=version: self._version != seen or self._closed,  # type: ignore[misc]
                    left,
                )

    def close(self) -> None:
        """Stop browsing (a callback running finishes first, unless this is called from
        it). Safe to call twice."""
        if self._core is not None:
            self.discovery.stop_browsing(self._core)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.owns_discovery:
            self.discovery.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncBrowser(_BrowserBase):
    """:class:`Browser` for asyncio (:func:`dtp.discovery.lan.browse_async`): started by
    ``await`` or ``async with``; ``async for`` yields its events; ``on_event`` (a
    function or a coroutine function) runs on the event loop."""

    def __init__(
        self,
        discovery: LanDiscovery | Callable[[], LanDiscovery],
        peer_filter: PeerFilter,
        *,
        on_event: EventCallback | None = None,
        max_peers: int,
        max_queued: int = MAX_QUEUED,
        timeout: float | None = 10.0,
    ) -> None:
        super().__init__(None, peer_filter, on_event, max_peers, max_queued)
        _check_timeout("timeout", timeout)
        self._make = discovery
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Task[AsyncBrowser] | None = None

    async def start(self) -> AsyncBrowser:
        """Start browsing (once; ``await browser`` and ``async with`` call it)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def _start(self) -> AsyncBrowser:
        self._loop = asyncio.get_running_loop()
        if isinstance(self._make, LanDiscovery):
            self.discovery = self._make
        else:
            self.discovery = await asyncio.to_thread(self._make)
            self.owns_discovery = True
        core = BrowseCore(self.discovery, self._table, self._deliver)
        self._core = core
        try:
            await self.discovery.start_browsing_async(core, self._timeout)
        except BaseException:
            await self.aclose()
            raise
        return self

    def __await__(self) -> Generator[Any, None, AsyncBrowser]:
        return self.start().__await__()

    async def __aenter__(self) -> AsyncBrowser:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _deliver(self, event: LanEvent) -> None:  # (on the mDNS thread)
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # (the loop closed: nobody to tell)
            self._loop.call_soon_threadsafe(self._on_loop, event)

    def _on_loop(self, event: LanEvent) -> None:
        if self._closed:
            return
        self._queued(event)
        self._wake()
        if self.on_event is not None:
            try:
                result = self.on_event(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._callback_done)
            except Exception:
                logger.exception("LAN discovery: the on_event callback raised")

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("LAN discovery: the on_event callback raised", exc_info=task.exception())

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _changed(self, timeout: float | None) -> bool:
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)

    async def events(self, timeout: float | None = None) -> AsyncIterator[LanEvent]:
        """The events as they come, until the browser closes or ``timeout`` seconds
        pass with none (None: until it closes)."""
        _check_timeout("timeout", timeout)
        await self.start()
        while True:
            while self._queue:
                yield self._queue.popleft()
            if self._closed or not await self._changed(timeout):
                return

    def __aiter__(self) -> AsyncIterator[LanEvent]:
        return self.events()

    async def wait_for(
        self, predicate: Callable[[LanPeer], bool] | None = None, timeout: float | None = 10.0
    ) -> LanPeer:
        """A peer found (now or later) for which ``predicate`` is true (None: any);
        DTPTimeoutError after ``timeout`` seconds, LanDiscoveryError once closed."""
        _check_timeout("timeout", timeout)
        await self.start()
        assert self._loop is not None
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            peer = _matching(self.peers(), predicate)
            if peer is not None:
                return peer
            if self._closed:
                raise LanDiscoveryError("the browser is closed")
            left = None if deadline is None else deadline - self._loop.time()
            if left is not None and left <= 0:
                raise DTPTimeoutError(f"no matching peer found on the LAN in {timeout} s")
            await self._changed(left)

    async def aclose(self) -> None:
        """Stop browsing. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self.discovery is not None and self._core is not None:
            await self.discovery.stop_browsing_async(self._core)
        for task in list(self._tasks):
            task.cancel()
        if self.discovery is not None and self.owns_discovery:
            await self.discovery.aclose()
