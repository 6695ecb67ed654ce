"""Both DTP servers, blocking (``dtp.socket``) and asyncio (``dtp.aio``), behind one small
synchronous face, so that a story about what a server does is told once and run on each
(the ``server_driver`` fixture in tests/transport/conftest.py)."""

from __future__ import annotations

import asyncio
import queue
import socket
from collections.abc import Callable
from typing import Any

import dtp.aio
import dtp.socket
from dtp.testing._loops import LoopThread
from tests.support.pairs import SERVER_ID

APIS = ["blocking", "asyncio"]

#: an accept hook as the test writes it: plain, and free to block (the asyncio driver
#: awaits it in a worker thread, so the server's loop goes on meanwhile)
Hook = Callable[[str], "bool | str"]


class ServerDriver:
    """A server on 127.0.0.1 serving SERVER_ID (or the ``identity`` option); each
    connection it serves is read to its end by the application (``served()`` returns
    what it read). ``service_port`` is the DTP port of a paid server's service (the
    blocking server's ``port``, the asyncio server's ``dtp_port``). With ``echo=True``
    the application also sends each connection back what it read, then closes it."""

    api: str
    #: whether the application sends each connection back what it read
    echo = False
    #: connections handed to the application so far
    handed = 0
    #: the server object itself, for its counters (``refused``, ``replays_refused``)
    server: Any
    address: tuple[str, int]
    noise_public_key: bytes

    def served(self, timeout: float = 60) -> tuple[str, bytes]:
        """The next connection the application is given: its client's address and all
        it sent up to its end; what the read raised (the connection's end) is raised."""
        raise NotImplementedError

    def handoff(self, sock: socket.socket, peer: Any) -> None:
        """Hands the server ``sock`` as a ledger bridge's local socket from ``peer``
        (its ``handoff``, with the server's own connection config)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class BlockingDriver(ServerDriver):
    """``dtp.socket.create_server``; the test's thread calls ``accept``."""

    api = "blocking"

    def __init__(self, accept: Hook | None = None, *, echo: bool = False, **options: Any) -> None:
        self.echo = echo
        options.setdefault("identity", SERVER_ID)
        if "service_port" in options:
            options["port"] = options.pop("service_port")
        self.server = dtp.socket.create_server(("127.0.0.1", 0), accept=accept, **options)
        self.address = self.server.address
        self.noise_public_key = self.server.noise_public_key

    def served(self, timeout: float = 60) -> tuple[str, bytes]:
        sock, address = self.server.accept(timeout=timeout)
        self.handed += 1
        with sock:
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
            if self.echo:
                sock.sendall(got)
        return address, got

    def handoff(self, sock: socket.socket, peer: Any) -> None:
        # False: the server closed the carrier (closed, or its line full)
        assert self.server.handoff(sock, peer, self.server.connection_config)

    def close(self) -> None:
        self.server.close()


class AsyncioDriver(ServerDriver):
    """``dtp.aio.start_server`` on an event loop of its own thread; its handler reads
    each connection to its end and hands the result to ``served()``."""

    api = "asyncio"

    def __init__(self, accept: Hook | None = None, *, echo: bool = False, **options: Any) -> None:
        self.echo = echo
        self._served: queue.Queue[tuple[str, bytes] | BaseException] = queue.Queue()
        self._loop = LoopThread()
        hook = None if accept is None else _in_a_thread(accept)
        options.setdefault("identity", SERVER_ID)
        if "service_port" in options:
            options["dtp_port"] = options.pop("service_port")
        try:
            self.server = self._call(
                dtp.aio.start_server(self._handler, "127.0.0.1", 0, accept=hook, **options)
            )
        except BaseException:
            self._loop.close(cancel=True, timeout=60)
            raise
        self.address = self.server.sockets[0].getsockname()[:2]
        self.noise_public_key = self.server.noise_public_key

    async def _handler(
        self, reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter
    ) -> None:
        self.handed += 1
        try:
            got = await reader.read()
            if self.echo:
                writer.write(got)
                await writer.drain()
        except BaseException as exc:  # the connection's end: served() raises it
            self._served.put(exc)
        else:
            self._served.put((writer.get_extra_info("peer_address"), got))
        finally:
            writer.close()

    def _call(self, coro: Any, timeout: float = 60) -> Any:
        return self._loop.run(coro, timeout)

    def served(self, timeout: float = 60) -> tuple[str, bytes]:
        got = self._served.get(timeout=timeout)
        if isinstance(got, BaseException):
            raise got
        return got

    def handoff(self, sock: socket.socket, peer: Any) -> None:
        async def handed() -> None:  # (the asyncio server's handoff runs on its loop)
            self.server.handoff(sock, peer, self.server.connection_config)

        self._call(handed())

    def close(self) -> None:
        """Closes the server and ends its loop (again: nothing)."""
        if self._loop.closed:
            return

        async def closed() -> None:
            self.server.close()
            await self.server.wait_closed()

        try:
            self._call(closed())
        finally:
            self._loop.close(cancel=True, timeout=60)


def _in_a_thread(hook: Hook) -> Callable[[str], Any]:
    async def awaited(address: str) -> bool | str:
        return await asyncio.to_thread(hook, address)

    return awaited


DRIVERS: dict[str, type[ServerDriver]] = {"blocking": BlockingDriver, "asyncio": AsyncioDriver}

#: the ``server_driver`` fixture: ``server_driver(accept=None, echo=False, **options)``
#: starts the driver's server with ``options`` as ``create_server``/``start_server`` take them
Serve = Callable[..., ServerDriver]
