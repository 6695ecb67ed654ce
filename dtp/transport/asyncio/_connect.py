"""Opening an asyncio DTP connection to a carrier address: the carrier connect, the
handshake and the server's verdict, with a ready client config."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dtp.errors import (
    ConnectionLost,
    ConnectionRefused,
    DTPTimeoutError,
    HandshakeError,
)
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import CloseCode, ConnectionConfig, direct_client_config
from dtp.transport._session import (
    Session,
    bounded_by_caller,
    check_connect_timeout,
    connect_timed_out,
)
from dtp.transport.asyncio._protocol import LIMIT, Protocol, abort, carrier_failure
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter
from dtp.transport.carriers._tcp import carrier_error, endpoint_text, unreachable

if TYPE_CHECKING:
    import ssl as _ssl  # (annotations only: see dtp.transport.asyncio._server)


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
    the arguments); a ``dtp://`` address goes to :mod:`dtp.hostid._asyncio`."""
    check_connect_timeout(timeout)
    check_limit(limit)
    cfg, _ = direct_client_config(
        config, identity, server_key, expected_server_key, HostIdentity.generate
    )
    return await open(host, port, cfg, timeout, limit=limit)


async def open_websocket_connection(
    url: str,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
    timeout: float | None = None,
    limit: int = LIMIT,
    origin: str | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """:func:`dtp.aio.open_connection` for a WebSocket URL (docs/protocol.md §13; see
    there for the arguments): ``timeout`` bounds the connect, the upgrade and the
    handshake; with none, the connect and the upgrade are bounded by the config's
    ``handshake_timeout`` (HandshakeError), as the handshake is. Needs the ``ws`` extra."""
    from dtp.transport.carriers._websocket import connect_websocket, parse_url

    check_connect_timeout(timeout)
    check_limit(limit)
    parse_url(url)  # (a bad URL is a ValueError before anything is made)
    if ssl is not None and not url.lower().startswith("wss:"):
        raise ValueError("ssl is for a wss:// URL")
    cfg, _ = direct_client_config(
        config, identity, server_key, expected_server_key, HostIdentity.generate
    )

    async def carrier(proto: Protocol) -> None:
        await connect_websocket(url, proto, origin=origin, ssl=ssl)

    return await open(url, None, cfg, timeout, limit=limit, carrier=carrier)


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
    carrier: Callable[[Protocol], Awaitable[None]] | None = None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Carrier connect + handshake + acceptance with a ready client config; with
    ``sock`` (a connected socket, e.g. a ledger bridge's), over that instead of TCP.
    ``while_waiting(protocol)`` runs once the first handshake message is out, while the
    server works on it; what it raises fails the connect. ``writer_class``: the writer
    made (a connection by host ID's: ``HostStreamWriter``). ``limit``: the readers'
    line limit; ``peername``: what ``get_extra_info("peername")`` reports when ``sock``'s
    own would not name the peer (a ledger bridge's ``("ledger", <connection id>)``).
    ``carrier(protocol)``: makes the carrier and hands it to ``protocol`` instead of a
    TCP connect (the WebSocket carrier's; ``host`` is its URL then, ``port`` None)."""
    loop = asyncio.get_running_loop()
    bounded = bounded_by_caller(cfg, timeout)
    session = Session(bounded, now=loop.time())
    proto = Protocol(session, loop)
    proto.limit = limit
    proto.peername = peername
    if sock is not None:
        proto.carrier_failure = carrier_failure(sock)

    async def establish() -> None:
        try:
            if carrier is not None:
                # the connection's handshake timer starts when the carrier is handed
                # over, after the WebSocket upgrade: the upgrade is bounded by the same
                # timeout here, or a server that never answers it held an unbounded
                # connect for good (over TCP, the timer covers that wait)
                try:
                    async with asyncio.timeout(bounded.handshake_timeout):
                        await carrier(proto)
                except TimeoutError:
                    raise HandshakeError(
                        f"{host}: the WebSocket upgrade timed out ({bounded.handshake_timeout:g} s)"
                    ) from None
            elif sock is None:
                await loop.create_connection(lambda: proto, host, port)
            else:
                await loop.create_connection(lambda: proto, sock=sock)
        except (ConnectionRefused, HandshakeError):
            raise  # (a WebSocket upgrade refused, or not answered in time: said why)
        except OSError as exc:
            if carrier is not None:
                raise _websocket_error(host, exc) from exc
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
        if isinstance(exc, (ConnectionRefused, HandshakeError)):
            await _carrier_closed(proto)
        if isinstance(exc, TimeoutError):
            if timeout is None:  # (a ledger call's, in while_waiting)
                raise DTPTimeoutError(f"connecting to {host}:{port} timed out") from None
            where = host if carrier is not None else endpoint_text(host, port)
            raise connect_timed_out(where, timeout) from None
        raise
    return DTPStreamReader(proto, 0), writer_class(proto, 0, primary=True)


REFUSED_CLOSE_WAIT = 1.0
"""Seconds a refused connect waits for its carrier to close before it raises."""


async def _carrier_closed(proto: Protocol) -> None:
    """Wait for the carrier of a connection the server refused to close, aborting it
    after :data:`REFUSED_CLOSE_WAIT` (or when the wait is cancelled): the error is raised
    with nothing left open. A TCP carrier closes within a loop iteration, but a
    WebSocket one waits for the peer's half of its close handshake, a round trip, which
    a program that ends its loop on the error (``asyncio.run``) would not wait for."""
    transport = proto.transport
    if transport is None or proto.closed_future.done():
        return
    try:
        async with asyncio.timeout(REFUSED_CLOSE_WAIT):
            await asyncio.shield(proto.closed_future)
    except TimeoutError:
        transport.abort()
    except asyncio.CancelledError:
        transport.abort()
        raise


def _websocket_error(url: str, exc: OSError) -> ConnectionLost:
    """What a failed TCP connect under a WebSocket carrier raises, as
    :func:`~dtp.transport.carriers._tcp.carrier_error` for TCP."""
    return unreachable(url, exc)
