"""Opening an asyncio DTP connection to a carrier address: the carrier connect, the
handshake and the server's verdict, with a ready client config."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from dtp.errors import DTPTimeoutError, HandshakeError
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode, ConnectionConfig, direct_client_config
from dtp.transport.asyncio.protocol import LIMIT, Protocol, abort
from dtp.transport.asyncio.streams import DTPStreamReader, DTPStreamWriter
from dtp.transport.carriers.tcp import carrier_error, endpoint_text
from dtp.transport.session import (
    Session,
    bounded_by_caller,
    check_connect_timeout,
    connect_timed_out,
)


async def open_connection(
    host: str,
    port: int,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
    timeout: float | None = None,
    limit: int = LIMIT,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Connect to the carrier endpoint ``host``:``port`` and return the first stream's
    (reader, writer): :func:`dtp.aio.open_connection` for a plain address (see there for
    the arguments); a ``dtp://`` address goes to :mod:`dtp.hostid.asyncio`."""
    check_connect_timeout(timeout)
    check_limit(limit)
    cfg, _ = direct_client_config(
        config, identity, server_key, expected_server_key, HostIdentity.generate
    )
    return await open(host, port, cfg, timeout, limit=limit)


def check_limit(limit: int) -> None:
    """Refuse a readers' line limit below 1, in :class:`asyncio.StreamReader`'s words."""
    if limit <= 0:
        raise ValueError("Limit cannot be <= 0")  # (asyncio.StreamReader's words)


async def open(
    host: str,
    port: Any,
    cfg: ConnectionConfig,
    timeout: float | None,
    sock: socket.socket | None = None,
    *,
    while_waiting: Callable[[Protocol], Awaitable[None]] | None = None,
    writer_class: type[DTPStreamWriter] = DTPStreamWriter,
    limit: int = LIMIT,
    peername: Any = None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Carrier connect + handshake + acceptance with a ready client config; with
    ``sock`` (a connected socket, e.g. a ledger bridge's), over that instead of TCP.
    ``while_waiting(protocol)`` runs once the first handshake message is out, while the
    server works on it; what it raises fails the connect. ``writer_class``: the writer
    made (a connection by host ID's: ``HostStreamWriter``). ``limit``: the readers'
    line limit; ``peername``: what ``get_extra_info("peername")`` reports when ``sock``'s
    own would not name the peer (a ledger bridge's ``("ledger", <connection id>)``)."""
    loop = asyncio.get_running_loop()
    session = Session(bounded_by_caller(cfg, timeout), now=loop.time())
    proto = Protocol(session, loop)
    proto.limit = limit
    proto.peername = peername

    async def establish() -> None:
        try:
            if sock is None:
                await loop.create_connection(lambda: proto, host, port)
            else:
                await loop.create_connection(lambda: proto, sock=sock)
        except OSError as exc:
            raise carrier_error(host, port, exc) from exc
        if while_waiting is not None:
            await while_waiting(proto)
        await proto.wait_for(
            lambda: session.conn.handshake_hash is not None or session.terminated is not None
        )
        if session.terminated is None:
            session.conn.open_stream()
            proto.flush()
            await proto.wait_for(lambda: session.accepted or session.terminated is not None)
        if not session.accepted:
            raise HandshakeError.for_client(session.error)

    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the inner result
    # when a cancel comes as the handshake completes, so a cancelled open_connection
    # would return a live connection (the cancellation swallowed); here establish() runs
    # in the caller's task, which the cancel reaches directly.
    try:
        async with asyncio.timeout(timeout):
            await establish()
    except BaseException as exc:
        abort(proto, CloseCode.HANDSHAKE_FAILED, "client gave up")
        if isinstance(exc, TimeoutError):
            if timeout is None:  # (a ledger call's, in while_waiting)
                raise DTPTimeoutError(f"connecting to {host}:{port} timed out") from None
            raise connect_timed_out(endpoint_text(host, port), timeout) from None
        raise
    return DTPStreamReader(proto, 0), writer_class(proto, 0, primary=True)
