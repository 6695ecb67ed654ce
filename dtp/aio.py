"""asyncio DTP: ``open_connection`` / ``start_server`` with reader/writer objects that
behave like :class:`asyncio.StreamReader` / :class:`asyncio.StreamWriter`.

    reader, writer = await dtp.aio.open_connection("127.0.0.1", 7000, server_key=key)
    writer.write(b"ping\\n")
    await writer.drain()
    print(await reader.readline())
    writer.close()
    await writer.wait_closed()

Each connection carries many streams: ``await writer.open_stream()`` opens another
(reader, writer) pair, ``await writer.accept_stream()`` waits for one the peer opens,
and ``await writer.serve_streams(handler)`` serves each one the peer opens with
``handler(reader, writer)`` in a task of its own, whose first step runs as the
stream's opening is read (a request a stream that came whole is answered in the loop
pass that read it; an ``accept_stream()`` loop starting tasks answers two passes later).

Where these differ from asyncio's streams, on purpose:

* errors are typed (``ConnectionClosed``, ``ConnectionLost``, ``StreamReset``, each
  a ``ConnectionError``); a read gives the bytes that came before a failure first,
  then raises (asyncio's raises at once); ``wait_closed()`` does not raise it;
* ``write()`` after ``close()`` or ``write_eof()`` raises ``LocalProtocolError``
  (asyncio's drops the bytes after close(), and raises RuntimeError after write_eof());
* ``close()`` of the first stream lets queued bytes go out first (at most
  ``CLOSE_LINGER``), then closes the connection; of another stream, that stream only;
* a client callback's exception goes to the loop's exception handler, then the
  connection is aborted: the peer reads an error, not a clean end;
* the reader is fed by its connection: it has no ``feed_data``, ``feed_eof``,
  ``set_exception`` or ``set_transport``; ``start_tls()`` raises ``LocalProtocolError``
  (a DTP stream is encrypted already); ``writer.transport`` is the carrier's, shared by
  the connection's streams (writing to it breaks the connection);
* a client connection whose readers and writers were all garbage-collected unclosed
  is closed without a ResourceWarning (as :mod:`dtp.socket`'s).

The WebSocket carrier (docs/protocol.md §13, the ``ws`` extra) carries the same records
for clients that cannot open a TCP socket (a browser): a server listens for it beside
TCP (``start_server(..., websocket=("0.0.0.0", 8443), origins=[...])``, or
``await server.listen_websocket(host, port)``), and a ``ws://`` or ``wss://`` URL
connects over it::

    reader, writer = await dtp.aio.open_connection("ws://127.0.0.1:8443/", server_key=key)

``dtp.aio.run(main())`` runs a program on uvloop when it is installed (``dtp-sui[fast]``),
else on asyncio's loop (:mod:`dtp.eventloop`; ``$DTP_EVENT_LOOP`` or ``loop=`` chooses);
the API itself works on whichever loop calls it.

This module is the face: a plain address goes to the asyncio transport
(:mod:`dtp.transport.asyncio`), a ``ws://`` / ``wss://`` URL to its WebSocket carrier, a
``dtp://`` address to :mod:`dtp.hostid._asyncio`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtp.eventloop import run
from dtp.hostid import _asyncio as hostid
from dtp.hostid._address import HostAddress
from dtp.hostid._asyncio import DTPServer, start_server
from dtp.hostid._connect import LedgerTerms, websocket_url
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._session import check_connect_timeout
from dtp.transport.asyncio import _connect as connect
from dtp.transport.asyncio._connect import check_limit
from dtp.transport.asyncio._protocol import CARRIER_GRACE, LIMIT
from dtp.transport.asyncio._server import AcceptHook, AdmitHook, ClientCallback
from dtp.transport.asyncio._streams import (
    CLOSE_LINGER,
    SEND_HIGH_WATER,
    DTPStreamReader,
    DTPStreamWriter,
)

if TYPE_CHECKING:
    import ssl as _ssl

    from dtp.hostid._admission import CarrierChoice
    from dtp.hostid._connect import OpenJournal
    from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions
    from dtp.hostid.paid._aio import serve
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.payments.metering import MeteringConfig

__all__ = [
    "CARRIER_GRACE",
    "CLOSE_LINGER",
    "SEND_HIGH_WATER",
    "AcceptHook",
    "AdmitHook",
    "ClientCallback",
    "DTPServer",
    "DTPStreamReader",
    "DTPStreamWriter",
    "open_connection",
    "run",
    "serve",
    "start_server",
]


async def open_connection(
    host: str | HostAddress,
    port: int | None = None,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
    timeout: float | None = None,
    ledger: Ledger | None = None,
    deposit: int | None = None,
    cap_id: str | None = None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
    limit: int = LIMIT,
    on_open: OpenJournal | None = None,
    websocket: str | None = None,
    origin: str | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Connect and return the first stream's (reader, writer).

    ``host`` may also be a WebSocket URL (``"ws://host:port/path"``, ``"wss://…"``,
    ``port`` omitted): the connection runs over the WebSocket carrier (docs/protocol.md
    §13; the ``ws`` extra), with ``origin`` the ``Origin`` header sent (None: none, as
    programs send) and ``ssl`` a ``wss://`` URL's TLS context (None: the system's). A
    DTP address reaches its service over WebSocket with ``websocket="ws://…"`` (the
    ledger connection and its payment as ever, the carrier that URL).

    Arguments as :func:`dtp.socket.create_connection`: ``host`` and ``port`` name the
    carrier endpoint, or ``host`` is a DTP address (``"dtp://0x<host id>:<port>"`` or a
    :class:`~dtp.hostid._address.HostAddress`, ``port`` omitted) reached through ``ledger`` with
    ``identity`` paying ``deposit``; the ledger calls run in a worker thread. The
    writer's ``connection_id`` / ``escrow_id`` name the ledger connection then; a host
    without a TCP endpoint (or ``carrier="ledger"``) is reached over the ledger carrier,
    as with the blocking API. Raises
    ConnectionRefused, HandshakeError or DTPTimeoutError as the blocking API does.
    A connection by host ID is metered as with the blocking API (``metering``), and may
    pay with a ``subscription`` or through a ``sponsor_pool`` as there.

    ``timeout`` bounds the carrier connect and the handshake; left out it is None: no
    bound on the carrier connect, as asyncio's own connects have none
    (:func:`socket.getdefaulttimeout`, which the blocking API takes then, is for
    blocking sockets; wrap the call in :func:`asyncio.timeout` for an overall bound),
    and the handshake within the config's ``handshake_timeout`` (10 s, HandshakeError),
    as with the blocking API.

    ``limit``: the line limit of the connection's readers (readline, readuntil), as
    :func:`asyncio.open_connection`'s (64 KiB).

    ``on_open(cap_id, connection_id)`` (a DTP address only): told of the ledger
    connection before its deposit can move -- for a caller that keeps a durable record
    of its deposits (the services daemon's forwarders;
    ``dtp.payments._refunds.refunds_for(ledger, identity, path=...).record_open``) -- in
    a worker thread, as :func:`dtp.socket.create_connection`'s
    (:func:`dtp.hostid._connect.prepare_host_connection`).
    """
    check_connect_timeout(timeout)
    check_limit(limit)
    url = websocket_url(host)
    if url is not None:
        if port is not None:
            raise ValueError("a WebSocket URL names its port: pass no port")
        if websocket is not None:
            raise ValueError("the URL is the WebSocket already: pass no websocket=")
    elif port is not None:
        if websocket is not None or origin is not None or ssl is not None:
            raise ValueError("websocket, origin and ssl need a DTP address or a WebSocket URL")
        if isinstance(host, HostAddress):
            raise ValueError("a HostAddress names its port: pass no port")
    terms = LedgerTerms(
        ledger=ledger,
        deposit=deposit,
        cap_id=cap_id,
        carrier=carrier,
        ledger_options=ledger_options,
        metering=metering,
        subscription=subscription,
        sponsor_pool=sponsor_pool,
        on_open=on_open,
    )
    if url is not None or port is not None:
        terms.refuse(url is not None)  # (the ledger's options belong to a DTP address only)
    if url is not None:
        return await connect.open_websocket_connection(
            url,
            server_key=server_key,
            expected_server_key=expected_server_key,
            identity=identity,
            config=config,
            timeout=timeout,
            limit=limit,
            origin=origin,
            ssl=ssl,
        )
    if port is None:
        return await hostid.open_connection(
            host,
            terms,
            identity=identity,
            server_key=server_key,
            expected_server_key=expected_server_key,
            config=config,
            timeout=timeout,
            limit=limit,
            websocket=websocket,
            origin=origin,
            ssl=ssl,
        )
    assert not isinstance(host, HostAddress)  # (refused with a port above)
    return await connect.open_connection(
        host,
        port,
        server_key=server_key,
        expected_server_key=expected_server_key,
        identity=identity,
        config=config,
        timeout=timeout,
        limit=limit,
    )


def __getattr__(name: str) -> Any:
    """``serve``: :func:`dtp.hostid.paid._aio.serve`, imported on first use (PEP 562), so
    that ``import dtp.aio`` loads nothing of the paid server (as :func:`dtp.socket.serve`
    imports its server when called)."""
    if name != "serve":
        raise AttributeError(f"module 'dtp.aio' has no attribute {name!r}")
    from dtp.hostid.paid._aio import serve as paid_serve

    globals()["serve"] = paid_serve
    return paid_serve


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
