"""Load spreading over a service's TCP backends: round robin over the healthy ones,
periodic TCP health checks, and failover when a connect fails."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import TypeVar

from dtp.daemon._config import Backend
from dtp.daemon._tasks import cancel_and_wait
from dtp.errors import TunnelError

__all__ = ["BackendPool"]

from dtp.daemon._logs import kv

P = TypeVar("P", bound=asyncio.BaseProtocol)

logger = logging.getLogger("dtp.daemon._balancer")


class BackendPool:
    """The backends of one service and what is known of their health."""

    def __init__(
        self,
        name: str,
        backends: tuple[Backend, ...],
        health_interval: float,
        connect_timeout: float,
        on_failure: Callable[[Backend], None] | None = None,
    ) -> None:
        self.name = name
        self.backends = backends
        self.health_interval = health_interval
        self.connect_timeout = connect_timeout
        self.healthy: dict[Backend, bool] = dict.fromkeys(backends, True)
        self._on_failure = on_failure
        self._turn = itertools.count()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the health checks (in the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._check_forever())

    async def stop(self) -> None:
        """Stop the health checks and wait for them to end."""
        task, self._task = self._task, None
        if task is not None:
            # (not "await task" in a suppress(CancelledError): a drain or reload
            # cancelled, or timed out, during this wait would go on as if nothing happened)
            exc = await cancel_and_wait(task)
            if exc is not None:
                # the checks died of a fault: logged, not raised, so that the daemon's
                # drain goes on to its end
                logger.error("health checks failed", extra=kv(service=self.name, error=repr(exc)))

    @property
    def healthy_count(self) -> int:
        return sum(self.healthy.values())

    def _mark(self, backend: Backend, ok: bool) -> None:
        if self.healthy.get(backend) != ok:
            logger.log(
                logging.INFO if ok else logging.WARNING,
                "backend up" if ok else "backend down",
                extra=kv(service=self.name, backend=str(backend)),
            )
        self.healthy[backend] = ok

    async def _probe(self, backend: Backend) -> bool:
        """Connect to ``backend`` once and mark it by the outcome, as soon as it is
        known. (Marked once every probe had ended, a backend's result waited for the
        slowest -- one timing out --, then overwrote what the tunnels had learnt since:
        a backend whose connect failed meanwhile was marked up again, and tried first.)"""
        try:
            async with asyncio.timeout(self.connect_timeout):  # (not wait_for: see connect)
                _, writer = await asyncio.open_connection(backend.host, backend.port)
        except (OSError, TimeoutError, ValueError):
            # ValueError: getaddrinfo's UnicodeError for a host name it cannot encode
            # (an empty label, or one over 63 bytes), which killed the checks
            self._mark(backend, False)
            return False
        self._mark(backend, True)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def check_now(self) -> None:
        """Probe every backend once."""
        await asyncio.gather(*(self._probe(b) for b in self.backends))

    async def _check_forever(self) -> None:
        while True:
            await self.check_now()
            await asyncio.sleep(self.health_interval)

    def order(self) -> list[Backend]:
        """Backends to try, healthy ones first, rotating the start for spreading.

        The healthy ones rotate among themselves: rotated over all backends and then
        filtered, a backend that is down handed its turns to the healthy one after it
        (two thirds of the tunnels to one of two healthy backends when the third is
        down). The ones down follow, for failover when every healthy one fails."""
        turn = next(self._turn)
        up = [b for b in self.backends if self.healthy[b]]
        down = [b for b in self.backends if not self.healthy[b]]
        return _rotated(up, turn) + _rotated(down, turn)

    async def connect(self, factory: Callable[[], P]) -> tuple[P, Backend]:
        """A TCP connection (driven by ``factory()``'s protocol) to the first backend
        that answers; unreachable ones are marked down. Raises :class:`TunnelError`
        when none answers."""
        loop = asyncio.get_running_loop()
        tried: list[str] = []
        for backend in self.order():
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                # connection when the tunnel's cancel (the drain cutting it) comes as the
                # connect ends, the cancel swallowed: the tunnel would go on past the cut
                # (its connection's handler waits on its tunnels before the settlement)
                async with asyncio.timeout(self.connect_timeout):
                    _, protocol = await loop.create_connection(factory, backend.host, backend.port)
            except (OSError, TimeoutError, ValueError) as exc:
                # (ValueError, as in _probe: escaping, the tunnel would never be answered)
                tried.append(f"{backend} ({_why(exc)})")
                self._mark(backend, False)
                if self._on_failure is not None:
                    self._on_failure(backend)
                continue
            self._mark(backend, True)
            return protocol, backend
        raise TunnelError(f"no backend of service {self.name} is reachable: {', '.join(tried)}")


def _why(exc: Exception) -> str:
    """A connect failure, for the refusal: the OS's words, else the error's."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__


def _rotated(backends: list[Backend], turn: int) -> list[Backend]:
    """``backends`` starting at the ``turn``-th (modulo their number)."""
    if not backends:
        return backends
    start = turn % len(backends)
    return backends[start:] + backends[:start]
