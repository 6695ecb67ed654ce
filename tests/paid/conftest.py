"""The ``driver`` fixture: one paid-server test body run on both drivers, the blocking
server (``dtp.socket.serve``, handlers in its threads) and the asyncio one
(``dtp.aio.serve`` on an event loop in a thread of this process). The clients stay
blocking in both.

The receipt store whose disk stalls on demand, and the store tests' service, ledger
world and server runs in another process, are in ``tests/support/paid_stores.py``."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid.paid._aio import PaidAioServer
from dtp.hostid.paid._blocking_server import PaidServer
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from tests.support.paid_twins import (
    echo,
    echo_aio,
    loop_in_thread,
    stop,
    streams_forever,
    streams_forever_aio,
    until_idle,
)
from tests.support.polling import wait_for

#: The handlers both drivers have, by name: (blocking, asyncio)
HANDLERS: dict[str, tuple[Any, Any]] = {
    "echo": (echo, echo_aio),
    "streams_forever": (streams_forever, streams_forever_aio),
}


@dataclass
class Driver:
    """One paid server driver: how a test serves on it, waits for it, and patches it."""

    name: str
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def server_module(self) -> str:
        """The module whose names (``settle_ended``...) the server calls."""
        if self.name == "blocking":
            return "dtp.hostid.paid._blocking_server"
        return "dtp.hostid.paid._asyncio_server"

    @contextmanager
    def serve(
        self,
        host_id: str,
        port: int,
        handler: str | tuple[Any, Any],
        *,
        ledger: LocalLedger,
        identity: HostIdentity,
        **options: Any,
    ) -> Iterator[PaidServer | PaidAioServer]:
        """The paid service ``port`` of ``host_id`` with the handler named ``handler``
        (:data:`HANDLERS`), or given as (blocking handler, asyncio callback); closed at
        the end once its connections ended and settled. The server gets a ledger
        handle of its own."""
        blocking, aio = HANDLERS[handler] if isinstance(handler, str) else handler
        # the server's own handle on the ledger file (as a server in another process
        # has), not the one the test's client uses
        server_ledger = LocalLedger(ledger.path)
        try:
            if self.loop is None:
                with dtp.socket.serve(
                    host_id, port, blocking, ledger=server_ledger, identity=identity, **options
                ) as server:
                    yield server
                return
            started = dtp.aio.serve(
                host_id, port, aio, ledger=server_ledger, identity=identity, **options
            )
            served: PaidAioServer = asyncio.run_coroutine_threadsafe(started, self.loop).result(10)
            try:
                yield served
            finally:
                asyncio.run_coroutine_threadsafe(stop(served), self.loop).result(10)
        finally:
            server_ledger.close()

    @contextmanager
    def connected(
        self,
        ledger: LocalLedger,
        handler: str | tuple[Any, Any],
        *,
        host: HostIdentity,
        client: HostIdentity,
        port: int,
        sla: Sla,
        deposit: int,
        kind: str = "echo",
        metering: MeteringConfig | None = None,
        timeout: float = 10,
        **options: Any,
    ) -> Iterator[tuple[PaidServer | PaidAioServer, dtp.socket.DTPSocket]]:
        """``host``'s new host on ``ledger`` offering ``port`` (``kind``, ``sla``),
        served with ``handler`` and ``options`` as :meth:`serve` takes them (receipts
        in ``receipts.db`` next to the ledger file unless given), and ``client``
        connected to it by host ID with ``deposit``: (the server, the client's socket),
        the socket closed before the server."""
        host_id = ledger.create_host(host, host.noise_public)
        ledger.add_service(host, host_id, port, kind, sla)
        options.setdefault("receipts", Path(ledger.path).parent / "receipts.db")
        with (
            self.serve(host_id, port, handler, ledger=ledger, identity=host, **options) as server,
            dtp.socket.create_connection(
                f"dtp://{host_id}:{port}",
                timeout=timeout,
                ledger=ledger,
                identity=client,
                deposit=deposit,
                metering=metering,
            ) as sock,
        ):
            yield server, sock

    def close(self, server: PaidServer | PaidAioServer) -> None:
        """``server.close()`` (the asyncio one's on its loop: asyncio's server is not
        thread-safe)."""
        if isinstance(server, PaidAioServer):
            assert self.loop is not None

            async def close() -> None:
                server.close()

            asyncio.run_coroutine_threadsafe(close(), self.loop).result(60)
            return
        server.close()

    def wait_closed(self, server: PaidServer | PaidAioServer, timeout: float) -> bool:
        """Whether the server's wait for its close returned within ``timeout`` seconds:
        the asyncio one's ``wait_closed()`` (awaited on its loop), the blocking one's
        ``serve_forever()`` (it has no ``wait_closed``: that is what blocks until
        :meth:`close`), called in a thread of its own."""
        if isinstance(server, PaidAioServer):
            assert self.loop is not None
            closed = asyncio.run_coroutine_threadsafe(
                asyncio.wait_for(server.wait_closed(), timeout), self.loop
            )
            try:
                closed.result(timeout + 30)
            except TimeoutError:
                return False
            return True
        waiting = threading.Thread(target=server.serve_forever, daemon=True)
        waiting.start()
        waiting.join(timeout)
        return not waiting.is_alive()

    def wait_released(self, server: PaidServer | PaidAioServer, timeout: float) -> bool:
        """``server.wait_released(timeout)`` (the asyncio one's awaited on its loop)."""
        if isinstance(server, PaidAioServer):
            assert self.loop is not None
            released = asyncio.run_coroutine_threadsafe(server.wait_released(timeout), self.loop)
            return released.result(timeout + 30)
        return server.wait_released(timeout)

    def until_idle(self, server: PaidServer | PaidAioServer, timeout: float = 10.0) -> None:
        """Wait until the server's connections have ended and settled."""
        if isinstance(server, PaidAioServer):
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(until_idle(server), self.loop).result(timeout)
            return
        assert wait_for(lambda: server.core.working == 0, timeout), "the server never idled"


def exchange(sock: dtp.socket.DTPSocket, rounds: int) -> None:
    """Echo 30,000 bytes ``rounds`` times through an echo handler, checking each reply:
    enough for the client to owe a fee and sign receipts for it."""
    for _ in range(rounds):
        sock.sendall(b"z" * 30_000)
        got = b""
        while len(got) < 30_000:
            data = sock.recv(65536)
            assert data
            got += data
        assert got == b"z" * 30_000


@pytest.fixture(params=["blocking", "asyncio"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """Each paid-server driver in turn (see :class:`Driver`)."""
    if request.param == "blocking":
        yield Driver("blocking")
        return
    with loop_in_thread() as loop:
        yield Driver("asyncio", loop)
