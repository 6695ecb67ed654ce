"""An asyncio server's new connection until its handshake starts: :class:`_Arrival` (the
protocol of its transport that reads its first record, then holds it unread while it
waits for its handshake slots), and the look at it the admission makes while it waits
(:func:`_waiting_gone`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio.protocol import Protocol, tune_transport
from dtp.transport.handshake_gate import FirstMessage, Progress

if TYPE_CHECKING:
    from dtp.transport.asyncio.server_admission import ServerAdmission

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.asyncio.server")


class _Arrival(asyncio.Protocol):
    """A server's new connection until its handshake starts (dtp.transport.handshake_gate): it
    reads the client's first record, then waits for its handshake slots unread. It
    holds its socket and what the client sent -- no Session, task or timer -- and is the
    connection's entry in the server's :class:`~dtp.transport.handshake_gate.Admission` for good
    (its handshake's end releases its slots by it). Once the handshake may start, the
    transport goes to the connection's :class:`Protocol` (:meth:`DTPServer._begin`)."""

    def __init__(
        self,
        server: ServerAdmission,
        config: ConnectionConfig,
        by_address: bool,
        peername: Any = None,
    ) -> None:
        self.server = server
        self.config = config
        #: capped by the client's address (TCP); else a ledger bridge, a local socket
        self.by_address = by_address
        self.peername = peername
        #: Protocol.carrier_failure of the connection (a handed-off ledger bridge's)
        self.carrier_failure: Callable[[], BaseException | None] | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = FirstMessage()
        self.key: str | None = None
        self.deadline = 0.0  # its accept plus its handshake timeout (monotonic)
        self.proto: Protocol | None = None  # made as its handshake starts
        self.lost = False
        self.gave_way = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream transport, asyncio's or uvloop's: uvloop's are no asyncio.Transport
        # subclasses, so an isinstance check refused every connection on uvloop)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        try:
            tune_transport(transport)
            self.server._arrived(self)
        except Exception:
            # (a server fault at a connection's start: closed, the server goes on)
            logger.exception("dtp: a new connection could not be taken in")
            transport.close()

    def data_received(self, data: bytes) -> None:
        progress = self.reader.feed(data)
        if progress is Progress.COMPLETE:
            assert self.transport is not None
            self.transport.pause_reading()  # (until its handshake starts)
            self.server._proven(self)
        elif progress is Progress.INVALID:
            self.server._not_dtp(self)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        # (a client that hung up before its first record: its address is struck)
        self.server._admission.dropped(self, self.server._now())


def _waiting_gone(arrival: _Arrival) -> bool:
    """Whether a connection waiting for a handshake slot was closed meanwhile."""
    return arrival.lost or arrival.transport is None or arrival.transport.is_closing()
