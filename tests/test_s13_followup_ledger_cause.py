"""When the ledger under a ledger-carrier connection fails (LedgerUnavailable), the
connection's error says so: the user got ConnectionLost("the peer vanished (carrier
closed)"), the bridge's error (LedgerBridge.error) lost. Both APIs, a LocalLedger file,
the client's ledger made to fail once connected; the server in this process."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp._session import Session
from dtp.carriers.ledger_bridge import LedgerCarrierOptions
from dtp.chain.ledger import Ledger
from dtp.connection import ConnectionConfig
from dtp.errors import ChainError, ConnectionLost, DTPError
from tests.polling import wait_for
from tests.test_ledger_carrier_sockets import (
    CLIENT,
    DEPOSIT,
    Host,
    bridge_threads,
    host,
    server_in_thread,
)

__all__ = ["host"]  # (the fixture, imported)


class _Breakable:
    """A ledger whose calls fail as a node that does not answer does, once broken."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            if self.broken:
                raise ChainError("the node does not answer", name="LedgerUnavailable")
            return attr(*args, **kw)

        return call


class _Echo:
    """The server's handler: echoes, and aborts its connection once told (the client's
    ledger failed, so its pipe stays: the server's bridge would wait for the idle
    timeout)."""

    def __init__(self) -> None:
        self.socks: list[dtp.socket.DTPSocket] = []

    def __call__(self, sock: dtp.socket.DTPSocket) -> None:
        self.socks.append(sock)
        with contextlib.suppress(DTPError):
            while data := sock.recv(1 << 16):
                sock.sendall(data)

    def abort(self) -> None:
        for sock in self.socks:
            sock.abort()


def _options() -> tuple[LedgerCarrierOptions, list[_Breakable]]:
    made: list[_Breakable] = []

    def wrap(ledger: Ledger) -> Ledger:
        made.append(_Breakable(ledger))
        return made[-1]  # type: ignore[return-value]

    # (outage_timeout 0: the first failure ends the carrier; see test_s14_ledger_outage)
    return LedgerCarrierOptions(ledger_filter=wrap, peer_close_grace=0.2, outage_timeout=0), made


def _says_why(exc: BaseException) -> None:
    assert isinstance(exc, ConnectionLost)
    assert "ledger carrier failed" in str(exc) and "LedgerUnavailable" in str(exc), exc
    assert "the node does not answer" in str(exc)
    # and the ledger's own error is there to be caught or logged: the chain of causes
    causes = []
    cause = exc.__cause__
    while cause is not None and len(causes) < 5:
        causes.append(cause)
        cause = cause.__cause__
    assert any(isinstance(c, ChainError) for c in causes), causes


def test_blocking_a_failed_ledger_bridge_says_why(host: Host) -> None:
    options, made = _options()
    echo = _Echo()
    with (
        server_in_thread(host, echo),
        dtp.socket.create_connection(
            host.address,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=10,
            ledger_options=options,
        ) as sock,
    ):
        try:
            sock.sendall(b"hi")
            assert sock.recv(2) == b"hi"
            made[0].broken = True
            with pytest.raises(ConnectionLost) as lost:
                sock.recv(2)
        finally:
            echo.abort()
    _says_why(lost.value)


def test_asyncio_a_write_after_the_bridge_failed_says_why(host: Host) -> None:
    """The write side: once the bridge ended, a write meets its closed end (EPIPE)
    before the read side sees the end."""
    options, made = _options()
    echo = _Echo()

    async def main() -> BaseException:
        reader, writer = await dtp.aio.open_connection(
            host.address,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=10,
            ledger_options=options,
        )
        try:
            writer.write(b"hi")
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"hi"
            made[0].broken = True
            # (a thread's wait: the loop must not look at the carrier meanwhile)
            assert wait_for(lambda: not [t for t in bridge_threads() if "client" in t.name], 10)
            writer.write(b"x")  # the transport sends at once
            with pytest.raises(ConnectionLost) as lost:
                await asyncio.wait_for(reader.read(2), 10)
            return lost.value
        finally:
            writer.close()
            with contextlib.suppress(DTPError):
                await asyncio.wait_for(writer.wait_closed(), 10)

    with server_in_thread(host, echo):
        try:
            _says_why(asyncio.run(main()))
        finally:
            echo.abort()


def test_asyncio_a_failed_ledger_bridge_says_why(host: Host) -> None:
    options, made = _options()
    echo = _Echo()

    async def main() -> BaseException:
        reader, writer = await dtp.aio.open_connection(
            host.address,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=10,
            ledger_options=options,
        )
        try:
            writer.write(b"hi")
            assert await asyncio.wait_for(reader.readexactly(2), 10) == b"hi"
            made[0].broken = True
            with pytest.raises(ConnectionLost) as lost:
                await asyncio.wait_for(reader.read(2), 10)
            return lost.value
        finally:
            writer.close()
            with contextlib.suppress(DTPError):
                await asyncio.wait_for(writer.wait_closed(), 10)

    with server_in_thread(host, echo):
        try:
            _says_why(asyncio.run(main()))
        finally:
            echo.abort()


@pytest.mark.parametrize("cause", [None, ConnectionLost("the ledger carrier failed: X")])
def test_session_carrier_lost_keeps_the_cause(cause: BaseException | None) -> None:
    """Session.carrier_lost: what the adapters call as their carrier ends, the error
    then raised having the carrier's own as ``__cause__``."""
    session = Session(ConnectionConfig(identity=CLIENT, is_client=True))
    session.carrier_lost(f"carrier error: {cause}" if cause else "the peer vanished", cause)
    session.process_events()
    assert isinstance(session.error, ConnectionLost)
    assert session.error.__cause__ is cause
    with pytest.raises(ConnectionLost) as raised:
        session.take(0, 1)
    assert raised.value.__cause__ is cause
