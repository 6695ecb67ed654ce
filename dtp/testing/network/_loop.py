"""An asyncio event loop on a virtual clock: when nothing is ready to run and no socket
has anything to say, the clock jumps to the next timer instead of waiting for it, so a
test of minutes of timeouts, retransmissions and deadlines runs in the time its code
takes, and the same every run.

:class:`VirtualEventLoop` is a :class:`asyncio.SelectorEventLoop` (real sockets still
work, and are polled before the clock moves) with three differences:

- ``time()`` is the virtual clock, starting at ``start`` (0.0);
- ``run_in_executor`` (hence ``asyncio.to_thread``) runs the function **inline** by
  default, so that its result comes at a point fixed by the program, not by a thread's
  timing; with ``threads=True`` it runs in a thread as usual, and the clock stands still
  until the thread is done (its completion is waited for in real time);
- ``create_connection`` and ``create_server`` on a host of its :class:`SimNetwork
  <dtp.testing.network.SimNetwork>` reach it instead of the operating system (the
  asyncio API -- ``dtp.aio``, ``asyncio.open_connection`` -- runs on it unchanged).

When nothing can ever happen again -- no task ready, no timer, no thread, no socket --
the loop raises :class:`SimulationDeadlock` rather than wait for ever (after a grace of
``deadlock_grace`` real seconds for a thread of the program's own to post something).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import socket
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["SimulationDeadlock", "VirtualEventLoop"]

T = TypeVar("T")


class _Host(Protocol):
    @property
    def ip(self) -> str: ...


_H = TypeVar("_H", bound=_Host)


class LoopNetwork(Protocol[_H]):
    """What the loop asks of its network (:class:`~dtp.testing.network.SimNetwork`, whose
    hosts are ``_H``): its connects, servers and names go there."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def knows(self, name: object) -> bool: ...

    def resolve(self, name: str) -> _H: ...

    def host_to_listen_on(self, host: object) -> _H | None: ...

    async def connect(
        self, host: str, port: int, protocol_factory: Callable[[], asyncio.BaseProtocol]
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]: ...

    async def listen(
        self,
        host: _H,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        start_serving: bool = True,
    ) -> asyncio.AbstractServer: ...


class SimulationDeadlock(RuntimeError):
    """Every task waits for something nothing will bring: no timer is set, no data is on
    its way, no thread is working (on a real clock the program would hang here)."""


class _VirtualSelector(selectors.BaseSelector):
    """A real selector whose waits move the virtual clock instead of waiting."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.loop: VirtualEventLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0 or self.loop is None:
            return ready
        loop = self.loop
        if loop._threads_busy:
            # a thread works for the program: the clock stands still until it is done
            # (its result wakes the self-pipe), unless it takes over a real second
            return self._real.select(1.0)
        if timeout is None:
            ready = self._real.select(loop.deadlock_grace)
            if ready:
                return ready
            raise SimulationDeadlock(
                f"at virtual time {loop.time():.6f} s nothing can happen any more: no task is "
                "ready, no timer set, nothing on its way and no thread working -- every task "
                "waits for something that will not come"
            )
        loop._advance(timeout)
        return []


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """The event loop of a simulated run (see the module docs). ``network``: the
    :class:`~dtp.testing.network.SimNetwork` whose hosts its connects and servers reach;
    ``start``: the clock's first reading."""

    def __init__(
        self,
        network: LoopNetwork[Any] | None = None,
        *,
        start: float = 0.0,
        threads: bool = False,
        deadlock_grace: float = 1.0,
    ) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        self._now = float(start)
        self._threads = threads
        self._threads_busy = 0
        #: Real seconds the loop waits for a thread of the program's own before it
        #: declares a deadlock.
        self.deadlock_grace = deadlock_grace
        self.network = network
        selector.loop = self
        if network is not None:
            network.bind(self)

    # -- the clock -----------------------------------------------------------------------

    def time(self) -> float:
        return self._now

    def reach(self, when: float) -> None:
        """Move the clock on to ``when`` if it is behind: a timer asyncio ran early,
        within its clock resolution (1 ns), whose waiter reads the clock and must find
        its time come (dtp.testing.network._blocking)."""
        if when > self._now:
            self._now = when

    def _advance(self, timeout: float) -> None:
        """Move the clock to the next timer (``timeout`` seconds on, as the loop computed
        it from that timer: landing exactly on its time, whatever the rounding)."""
        target = self._now + timeout
        scheduled = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            when = float(scheduled[0]._when)
            if abs(when - target) <= 1e-9 * max(1.0, abs(when)):
                target = when
        self._now = max(self._now, target)

    # -- executors: inline, or threads the clock waits for ----------------------------------

    def run_in_executor(  # type: ignore[override]
        self, executor: concurrent.futures.Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        if self._threads:
            self._threads_busy += 1
            threaded = super().run_in_executor(executor, func, *args)

            def done(_: asyncio.Future[T]) -> None:
                self._threads_busy -= 1

            threaded.add_done_callback(done)
            return threaded
        self._check_closed()  # type: ignore[attr-defined]
        future: asyncio.Future[T] = self.create_future()
        try:
            result = func(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        return future

    # -- connects and servers on the simulated network ---------------------------------------

    async def create_connection(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        network = self.network
        if network is not None and kwargs.get("sock") is None and network.knows(host):
            for unsupported in ("ssl", "local_addr"):
                if kwargs.get(unsupported) is not None:
                    raise ValueError(f"{unsupported} is not simulated")
            assert host is not None
            return await network.connect(host, _port(port), protocol_factory)
        return await super().create_connection(
            protocol_factory,
            host,  # type: ignore[arg-type]
            port,  # type: ignore[arg-type]
            **kwargs,
        )

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | list[str] | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        network = self.network
        if network is not None and kwargs.get("sock") is None:
            listened = network.host_to_listen_on(host)
            if listened is not None:
                if kwargs.get("ssl") is not None:
                    raise ValueError("ssl is not simulated")
                return await network.listen(
                    listened,
                    _port(port or 0),
                    protocol_factory,
                    start_serving=kwargs.get("start_serving", True),
                )
        return await super().create_server(protocol_factory, host, port, **kwargs)

    async def getaddrinfo(
        self, host: bytes | str | None, port: bytes | str | int | None, **kwargs: Any
    ) -> list[Any]:
        network = self.network
        if network is not None and isinstance(host, str) and network.knows(host):
            ip = network.resolve(host).ip
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, _port(port or 0)))]
        return await super().getaddrinfo(host, port, **kwargs)


def _port(port: object) -> int:
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"a port is an int in 0..65535, got {port!r}")
    return port
