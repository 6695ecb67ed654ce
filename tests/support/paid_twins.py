"""What the paid-server tests written in twins (blocking and asyncio server, the same
story) share: identities, a funded ledger, an event loop in a thread, handlers that
stream until the server cuts them off, and a raw second connection on a ledger
connection ID."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError, LedgerUnavailable
from dtp.hostid.paid import PaidServer, PaidSocket
from dtp.hostid.paid._aio import PaidAioServer, PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import object_id_bytes
from dtp.protocol.connection import ConnectionConfig
from dtp.testing._loops import loop_in_thread as loop_in_thread  # (its users import it here too)
from tests.support.settlements import settled_escrow

CHUNK = b"x" * (64 << 10)


def ident(seed: int) -> HostIdentity:
    """A fixed identity (the same keys in every run)."""
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


@contextmanager
def funded_ledger(tmp_path: Path, client: HostIdentity) -> Iterator[LocalLedger]:
    """A LocalLedger file in ``tmp_path`` where ``client`` has 10,000,000 MIST."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    ledger.faucet(client.sui_address, 10_000_000)
    try:
        yield ledger
    finally:
        ledger.close()


@contextmanager
def hosted_ledger(
    tmp_path: Path,
    server: HostIdentity,
    client: HostIdentity,
    port: int,
    sla: Sla,
    kind: str = "echo",
) -> Iterator[tuple[LocalLedger, str]]:
    """:func:`funded_ledger` with ``server``'s host offering a service of ``kind`` on
    ``port``: (the ledger, the host ID)."""
    with funded_ledger(tmp_path, client) as ledger:
        host_id = ledger.create_host(server, server.noise_public)
        ledger.add_service(server, host_id, port, kind, sla)
        yield ledger, host_id


@contextmanager
def hosted_ledgers(
    tmp_path: Path,
    server: HostIdentity,
    client: HostIdentity,
    port: int,
    sla: Sla,
    kind: str = "echo",
) -> Iterator[tuple[LocalLedger, LocalLedger, str]]:
    """:func:`hosted_ledger` and the server's own handle on the same file: (the client's
    ledger, the server's, the host ID)."""
    with hosted_ledger(tmp_path, server, client, port, sla, kind) as (ledger, host_id):
        server_ledger = LocalLedger(tmp_path / "ledger.db")
        try:
            yield ledger, server_ledger, host_id
        finally:
            server_ledger.close()


@dataclass
class PaidWorld:
    """:func:`hosted_ledgers`' two handles and host, and the test's directory (receipt
    stores go there); test files add their own ``connect``."""

    ledger: LocalLedger  # the client's
    server_ledger: LocalLedger
    host_id: str
    tmp_path: Path

    def connect_as(
        self,
        client: HostIdentity,
        port: int,
        deposit: int,
        *,
        metering: Any = None,
        timeout: float = 30.0,
        **options: Any,
    ) -> dtp.socket.DTPSocket:
        """``client``'s connection by host ID to ``port``, with ``deposit`` in escrow
        (``options`` as ``create_connection`` takes them)."""
        return dtp.socket.create_connection(
            f"dtp://{self.host_id}:{port}",
            timeout=timeout,
            ledger=self.ledger,
            identity=client,
            deposit=deposit,
            metering=metering,
            **options,
        )

    def claimed(self, connection_id: str) -> int:
        """What the connection's escrow has paid the server so far (read from its
        settlement once its client deleted it)."""
        return settled_escrow(self.ledger, connection_id).claimed

    def serve_blocking(
        self, port: int, handler: Any, identity: HostIdentity, **options: Any
    ) -> PaidServer:
        """``dtp.socket.serve`` of the host's ``port`` with the server's own ledger
        handle (``options`` as it takes them): the server."""
        return dtp.socket.serve(
            self.host_id, port, handler, ledger=self.server_ledger, identity=identity, **options
        )

    def serve_on(
        self,
        driver: Any,
        port: int,
        handlers: str | tuple[Any, Any],
        identity: HostIdentity,
        **options: Any,
    ) -> AbstractContextManager[Any]:
        """``driver``'s paid server of the host's ``port`` (tests/paid/conftest.py
        ``Driver.serve``, which gives the server a ledger handle of its own) with
        ``handlers`` (blocking handler, asyncio callback), ``options`` as it takes
        them: a context manager, the server closed and released at its end."""
        served: AbstractContextManager[Any] = driver.serve(
            self.host_id, port, handlers, ledger=self.ledger, identity=identity, **options
        )
        return served

    def serve_aio(
        self,
        loop: asyncio.AbstractEventLoop,
        port: int,
        handler: Any,
        identity: HostIdentity,
        *,
        timeout: float = 60.0,
        **options: Any,
    ) -> PaidAioServer:
        """``dtp.aio.serve`` of the host's ``port`` on ``loop`` (one of
        :func:`loop_in_thread`'s), with the server's own ledger handle: the server."""
        started = dtp.aio.serve(
            self.host_id, port, handler, ledger=self.server_ledger, identity=identity, **options
        )
        server: PaidAioServer = asyncio.run_coroutine_threadsafe(started, loop).result(timeout)
        return server


def streams_forever(sock: PaidSocket) -> None:
    """Blocking handler: after the client's b"go", send until the server cuts it off."""
    assert sock.recv(2) == b"go"
    with pytest.raises(DTPError):
        while True:
            sock.sendall(CHUNK)


async def streams_forever_aio(reader: PaidReader, writer: PaidWriter) -> None:
    """asyncio handler: after the client's b"go", write until the server cuts it off."""
    assert await reader.readexactly(2) == b"go"
    with pytest.raises(DTPError):
        while True:
            writer.write(CHUNK)
            await writer.drain()


async def until_idle(server: PaidAioServer) -> None:
    """Wait until the server's connections have ended and settled."""
    while server.core.working:
        await asyncio.sleep(0.01)


async def stop(server: PaidAioServer) -> None:
    """Close the server (on its loop: asyncio's server is not thread-safe) and wait
    until its connections have ended and settled."""
    server.close()
    await server.wait_closed()
    await until_idle(server)


def again(
    address: tuple[str, int],
    cid: str,
    receipt: bytes,
    *,
    client: HostIdentity,
    server_key: bytes,
    port: int,
    limit: int,
) -> int:
    """Connect straight to the server naming ``cid`` (port ``port``), send ``receipt``
    (another connection's) and read what is served, up to ``limit``: the bytes read."""
    config = ConnectionConfig(
        identity=client, is_client=True, connection_id=object_id_bytes(cid), port=port
    )
    got = 0
    with dtp.socket.create_connection(
        address, timeout=5, server_key=server_key, identity=client, config=config
    ) as second:
        engine = second._engine
        with engine.lock:
            engine.conn.send_receipt(receipt)
            engine.flush()
        second.sendall(b"go")
        while got < limit:
            data = second.recv(1 << 16)
            if not data:
                break
            got += len(data)
    return got


def echo(sock: PaidSocket) -> None:
    """Blocking handler: echo until the client closes."""
    while data := sock.recv(65536):
        sock.sendall(data)


async def echo_aio(reader: PaidReader, writer: PaidWriter) -> None:
    """asyncio handler: echo until the client closes."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


@contextmanager
def echo_server(
    api: str, ledger: Any, host_id: str, *, port: int, identity: HostIdentity, policy: Any
) -> Iterator[Any]:
    """A paid echo server of the kind ``api`` ("blocking", or "asyncio" on a loop in a
    thread of its own) on ``ledger`` (a LocalLedger, or a wrapper of one), stopped at
    the end of the block."""
    if api == "blocking":
        with dtp.socket.serve(
            host_id, port, echo, ledger=ledger, identity=identity, policy=policy
        ) as server:
            yield server
        return
    with loop_in_thread() as loop:
        aio_server = asyncio.run_coroutine_threadsafe(
            dtp.aio.serve(host_id, port, echo_aio, ledger=ledger, identity=identity, policy=policy),
            loop,
        ).result(30)
        try:
            yield aio_server
        finally:
            asyncio.run_coroutine_threadsafe(stop(aio_server), loop).result(60)


class OutageLedger:
    """The server's ledger, whose settlement calls fail (LedgerUnavailable) while
    :attr:`down` is set; everything else passes through to the real LocalLedger."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.down = threading.Event()
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def _edge(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.refused += 1
                raise LedgerUnavailable(f"ledger unavailable ({name})")
            return getattr(self._ledger, name)(*args, **kwargs)

        return call

    @property
    def settle(self) -> Callable[..., Any]:
        return self._edge("settle")

    @property
    def settle_with_receipt(self) -> Callable[..., Any]:
        return self._edge("settle_with_receipt")

    @property
    def close_connection(self) -> Callable[..., Any]:
        return self._edge("close_connection")
