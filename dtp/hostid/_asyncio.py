"""Host ID with asyncio: connecting (the ledger preparation, the host's endpoints or the
ledger carrier, and the metered client payment), and :func:`start_server`, which adds the
ledger's admission and listener to a server when it is given a ledger."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from dtp.hostid._address import HostAddress
from dtp.hostid._admission import (
    PreparedConnection,
    abandon_host_connection,
    check_open_grace_use,
    pinned_host_key,
    server_admission,
)
from dtp.hostid._connect import LedgerTerms, OpenJournal, prepare_reconnection
from dtp.hostid._payment_hook import MeteredClient, PaidOpening
from dtp.hostid._served import reservations_of
from dtp.hostid.ledger_carrier._bridge import (
    Accepted,
    LedgerBridge,
    LedgerCarrierOptions,
    LedgerListener,
    connect_ledger_carrier,
    listen_on_ledger,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import OpenedConnection
from dtp.payments.metering import MeteringConfig
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._admission import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)
from dtp.transport.asyncio import _connect as connect
from dtp.transport.asyncio._connect import check_limit
from dtp.transport.asyncio._protocol import LIMIT, Protocol
from dtp.transport.asyncio._server import AcceptHook, AdmitHook, ClientCallback
from dtp.transport.asyncio._server import DTPServer as TransportServer
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter
from dtp.transport.asyncio._threads import threaded_or_released
from dtp.transport.carriers._tcp import (
    PendingTcp,
    check_listen_host_port,
    checked_websocket_listen,
    connect_any,
)

if TYPE_CHECKING:
    import ssl as _ssl  # (annotations only: see dtp.transport.asyncio._server)

    from dtp.ledger.interface import Ledger


class HostStreamWriter(DTPStreamWriter):
    """The writer of a connection by host ID, as :class:`dtp.hostid._blocking.HostSocket`
    is the socket."""

    async def top_up(self, amount: int) -> None:
        """As :meth:`dtp.hostid._blocking.HostSocket.top_up`: add ``amount`` MIST to the deposit of
        this paid connection while it is open (the ledger transaction runs in a thread),
        then sign receipts up to the new deposit. Cancelling the wait does not cancel
        a transaction under way: once it lands, the receipts are signed all the same
        (the deposit is on the ledger either way)."""
        layer = self.layer
        payment = layer.hook
        if not isinstance(payment, MeteredClient):
            return await super().top_up(amount)  # (raises: NOT_PAID)
        layer.check_live()

        def landed(job: asyncio.Future[None]) -> None:
            # (a callback, not code after the await: a caller cancelled while the
            # transaction ran would leave the deposit raised and the meter not)
            if job.cancelled() or job.exception() is not None:
                return
            layer.run_and_flush(lambda: payment.topped_up(amount))

        job = asyncio.ensure_future(asyncio.to_thread(payment.top_up_on_ledger, amount))
        job.add_done_callback(landed)
        await asyncio.shield(job)


class DTPServer(TransportServer):
    """:class:`dtp.aio.DTPServer`, what :func:`start_server` makes: as
    :class:`dtp.socket.DTPServer`, on the asyncio transport's server."""

    #: listen_ledger's arguments while start_server(start_serving=False) holds it
    #: back, until start_serving()
    _ledger_pending: tuple[Ledger, str, int, LedgerCarrierOptions | None] | None = None

    def __init__(
        self,
        callback: ClientCallback,
        identity: HostIdentity,
        accept: AcceptHook | None,
        config: ConnectionConfig,
        admit: AdmitHook | None = None,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        limit: int = LIMIT,
        settle_on_close: bool = False,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        backlog: int = 128,
        first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    ) -> None:
        """As the transport's server, given the ``admit`` hook's reservations, plus
        ``settle_on_close``, as :class:`dtp.socket.DTPServer`'s (ValueError without
        ledger admission, before anything starts)."""
        self._settling = reservations_of(admit, identity, settle_on_close)
        super().__init__(
            callback,
            identity,
            accept,
            config,
            admit,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            limit=limit,
            max_handshakes=max_handshakes,
            backlog=backlog,
            first_message_timeout=first_message_timeout,
            reservations=self._settling,
        )

    async def wait_settled(self, timeout: float | None = None) -> bool:
        """As :meth:`dtp.socket.DTPServer.wait_settled` (in a thread)."""
        if self._settling is None:
            return True
        return await asyncio.to_thread(self._settling.wait_settled, timeout)

    def listen_ledger(
        self,
        ledger: Ledger,
        host_id: str,
        port: int,
        options: LedgerCarrierOptions | None = None,
    ) -> LedgerListener:
        """Also accept connections to ``host_id``:``port`` that come over the ledger
        carrier, as :meth:`dtp.socket.DTPServer.listen_ledger` does (call it from the
        event loop). The listener watches the ledger in a thread of its own and hands
        each bridged connection to the loop."""

        def handing(config: ConnectionConfig) -> Accepted:
            loop = asyncio.get_running_loop()

            def handoff(bridge: LedgerBridge) -> None:  # in the listener's thread
                try:
                    loop.call_soon_threadsafe(self.handoff, bridge.socket, bridge.peername, config)
                except RuntimeError:  # the loop is closed: nobody will serve it
                    bridge.socket.close()  # (its thread ends with it)

            return handoff

        return listen_on_ledger(self, ledger, host_id, port, options, handing)

    async def start_serving(self) -> None:
        """As :meth:`TransportServer.start_serving`, and the ledger listener
        ``start_server(start_serving=False)`` held back."""
        await super().start_serving()
        if self.closed:
            return
        pending, self._ledger_pending = self._ledger_pending, None
        if pending is not None:
            self.listen_ledger(*pending)


Carrier = Callable[[Protocol], Awaitable[None]]
"""What makes a connection's carrier and hands it to its protocol (``connect.open``'s
``carrier``)."""


def _websocket_carrier(url: str, origin: str | None, ssl: _ssl.SSLContext | None) -> Carrier:
    """The WebSocket carrier to ``url``, as ``connect.open`` takes it (the URL checked
    now, before the ledger is touched)."""
    from dtp.transport.carriers._websocket import connect_websocket, parse_url

    parse_url(url)
    if ssl is not None and not url.lower().startswith("wss:"):
        raise ValueError("ssl is for a wss:// URL")

    async def carrier(proto: Protocol) -> None:
        await connect_websocket(url, proto, origin=origin, ssl=ssl)

    return carrier


async def open_connection(
    host: str | HostAddress,
    terms: LedgerTerms,
    *,
    identity: HostIdentity | None,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    config: ConnectionConfig | None = None,
    timeout: float | None = None,
    limit: int = LIMIT,
    websocket: str | None = None,
    origin: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    reconnect: str | None = None,
    keep_failed: bool = False,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Connect to the DTP address ``host`` (``"dtp://0x<host id>:<port>"`` or a
    :class:`~dtp.hostid._address.HostAddress`) through ``ledger``, ``identity`` paying, and return
    the first stream's (reader, writer): :func:`dtp.aio.open_connection` for a DTP address
    (see there for the arguments, checked there), on ``terms`` (its ledger options).
    ``terms.on_open``: told of the connection before its deposit can move
    (:func:`~dtp.hostid._connect.prepare_host_connection`; called in a worker thread, it
    may block). ``reconnect`` and ``keep_failed``: see
    :func:`open_kept_connection`.

    ``websocket``: reach the service over the WebSocket carrier at this URL
    (``ws://…``, ``wss://…``; docs/protocol.md §13) instead of the Host's published
    endpoint -- the ledger connection, its payment and the handshake are the same --
    sending ``origin`` as its ``Origin`` and using ``ssl`` for ``wss://``.

    Overlapping as dtp.socket does: the TCP connect starts as soon as the service is
    resolved (while the open is signed), and the open executes while the server works
    on the first handshake message."""
    address = HostAddress.parse(host) if isinstance(host, str) else host
    ledger = terms.ledger
    if ledger is None or identity is None:
        raise ValueError("connecting to a DTP address needs ledger=... and identity=...")
    over: Carrier | None = None
    if websocket is not None:
        if terms.carrier == "ledger" or terms.ledger_options is not None:
            raise ValueError("websocket= and the ledger carrier exclude each other")
        terms = replace(terms, carrier="tcp")
        over = _websocket_carrier(websocket, origin, ssl)
    elif origin is not None or ssl is not None:
        raise ValueError("origin and ssl are for the WebSocket carrier (websocket=...)")
    server_key = pinned_host_key(server_key, expected_server_key)
    # the preparation may open the connection, in a thread a cancellation cannot stop:
    # what it opened for a connect cancelled meanwhile is abandoned (half-closed)
    terms.check()
    handover = threading.Lock()
    taken: list[tuple[PreparedConnection, PendingTcp | None]] = []
    cancelled = False

    def prepare() -> tuple[PreparedConnection, PendingTcp | None]:
        if reconnect is not None:
            # (nothing written to the ledger: no early connect to overlap with it)
            again = prepare_reconnection(
                ledger, address, identity, reconnect, config=config, carrier=terms.carrier
            )
            return again, None
        result = terms.prepare_early(ledger, address, identity, server_key, config)
        with handover:
            if not cancelled:
                taken.append(result)
                return result
        _abandon_prepared(ledger, identity, address, result)
        return result

    try:
        prepared, early = await asyncio.to_thread(prepare)
    except asyncio.CancelledError:
        with handover:
            cancelled = True
            left = list(taken)
        for result in left:  # ready, but the cancel came before we took it
            threading.Thread(
                target=_abandon_prepared, args=(ledger, identity, address, result)
            ).start()
        raise
    # the open runs in a worker thread, which a cancelled connect cannot stop: a failed
    # connect waits for it before it decides what to half-close
    landing: asyncio.Future[OpenedConnection | None] | None = None
    opening = PaidOpening(ledger, identity, address.host_id, prepared, terms.metering)

    async def while_waiting(proto: Protocol) -> None:
        nonlocal landing
        opened = prepared.opened
        if prepared.pending_open is not None:
            landing = asyncio.ensure_future(asyncio.to_thread(opening.land))
            opened = await asyncio.shield(landing)
        if opening.metered:
            await asyncio.to_thread(opening.meter, proto.conn, proto.loop.time(), opened)

    reached: tuple[str, int | str | None]
    sock: socket.socket | None = None
    peername: tuple[str, str] | None = None  # (a ledger bridge's names its connection)
    try:
        if over is not None:
            # the WebSocket carrier the caller named (its TCP connect done there)
            if early is not None:
                early.close()
                early = None
            reached = (f"dtp://{address.host_id}:{address.port}", None)
        elif prepared.endpoint is None:
            bridge = await threaded_or_released(
                lambda: connect_ledger_carrier(
                    ledger,
                    identity,
                    prepared.connection_id,
                    prepared.server_address,
                    terms.ledger_options,
                ),
                lambda bridge: bridge.socket.close(),  # (its thread ends with its socket)
            )
            sock, reached = bridge.socket, bridge.peername
            peername = bridge.peername
        else:
            # the host's endpoints in turn until one answers (each with the timeout)
            pending_tcp = early
            tcp, reached = await threaded_or_released(
                lambda: connect_any(pending_tcp, prepared.endpoints, timeout),
                lambda made: made[0].close(),
            )
            sock = tcp
        reader, writer = await connect.open(
            *reached,
            prepared.config,
            timeout,
            sock,
            while_waiting=while_waiting,
            writer_class=HostStreamWriter,
            limit=limit,
            peername=peername,
            carrier=over,
        )
    except BaseException as exc:
        if early is not None:
            early.close()
        if landing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(landing)
        if not keep_failed:
            await asyncio.to_thread(
                abandon_host_connection, ledger, identity, address, prepared, exc
            )
        raise
    opening.hand_over(writer, writer.layer)
    return reader, writer


async def open_kept_connection(
    address: HostAddress,
    *,
    ledger: Ledger,
    identity: HostIdentity,
    on_open: OpenJournal | None,
    reconnect: str | None = None,
    deposit: int | None = None,
    config: ConnectionConfig | None = None,
    timeout: float | None = None,
    metering: MeteringConfig | None = None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """:func:`open_connection` for a caller that keeps its ledger connections in a book
    (``on_open``: the daemon's forwards): a connect that fails once the open landed
    leaves it Open, for its keeper to reuse or refund. ``reconnect``: connect on that
    Open connection of ours (:func:`~dtp.hostid._connect.prepare_reconnection`, nothing
    written), left Open too on failure."""
    return await open_connection(
        address,
        LedgerTerms(ledger=ledger, deposit=deposit, metering=metering, on_open=on_open),
        identity=identity,
        config=config,
        timeout=timeout,
        reconnect=reconnect,
        keep_failed=on_open is not None or reconnect is not None,
    )


def _abandon_prepared(
    ledger: Ledger,
    identity: HostIdentity,
    address: HostAddress,
    result: tuple[PreparedConnection, PendingTcp | None],
) -> None:
    """Abandon what :func:`prepare_connecting_early` made for a connect cancelled while
    it ran: its early TCP connect, and the connection if it opened one."""
    prepared, early = result
    if early is not None:
        early.close()
    abandon_host_connection(
        ledger, identity, address, prepared, asyncio.CancelledError("the connect was cancelled")
    )


async def start_server(
    client_connected_cb: ClientCallback,
    host: str | None,
    port: int | None,
    *,
    identity: HostIdentity,
    accept: AcceptHook | None = None,
    admit: AdmitHook | None = None,
    config: ConnectionConfig | None = None,
    backlog: int = 128,
    ledger: Ledger | None = None,
    host_id: str | None = None,
    dtp_port: int | None = None,
    carriers: tuple[str, ...] | None = None,
    ledger_options: LedgerCarrierOptions | None = None,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
    start_serving: bool = True,
    limit: int = LIMIT,
    settle_on_close: bool = False,
    first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    open_grace: float | None = None,
    websocket: tuple[str, int] | None = None,
    origins: Iterable[str] | None = None,
) -> DTPServer:
    """Listen on ``host`` and ``port``, passed apart (a str or None, an int or None:
    TypeError otherwise, ValueError for a ``"host:port"`` string, InvalidArgument for a
    port outside 0..65535, before anything else); ``client_connected_cb(reader, writer)``
    runs for each accepted client (the ``accept`` hook, sync or async, may refuse it
    first; then the ``admit`` hook, given a :class:`~dtp.hostid._admission.PeerInfo`). It
    may be a coroutine function or a plain one. An exception it raises goes to the loop's exception
    handler, as with :func:`asyncio.start_server`, and the connection is aborted (the
    client reads ConnectionClosed, not the clean end asyncio's close gives); the
    connection's own end raised in it (a DTPError other than a LocalProtocolError on a
    live connection: the peer reset a stream, closed, vanished) is logged at INFO.

    The garbage collector's sizing for serving, ledger admission (``ledger``,
    ``host_id`` and ``dtp_port``: the DTP port served), ``settle_on_close``,
    ``carriers`` (``"ledger"`` the default when ``host`` is None), ``max_handshakes``,
    ``max_handshakes_per_address``, ``max_waiting_per_address``,
    ``first_message_timeout`` and ``open_grace`` are as :func:`dtp.socket.create_server`'s,
    checked before anything listens; at most ``backlog`` connections wait for a
    handshake to start.

    ``start_serving=False``: accept nothing until :meth:`DTPServer.start_serving` (or
    ``serve_forever()``), as :func:`asyncio.start_server`. ``limit``: the readers' line
    limit, as there (64 KiB).

    ``websocket=(host, port)``: also listen for the WebSocket carrier there
    (docs/protocol.md §13; the ``ws`` extra), with ``origins`` the web origins whose
    pages may connect (see :meth:`DTPServer.listen_websocket`); ``host`` may then be
    None for a server on WebSocket alone. Its address: ``websocket_addresses``.
    """
    check_listen_host_port(host, port)
    allowed = checked_websocket_listen(websocket, origins)
    check_limit(limit)
    check_open_grace_use(open_grace, ledger)
    carriers, admit = server_admission(
        carriers,
        admit,
        tcp=host is not None and port is not None,
        websocket=websocket is not None,
        tcp_host=host is not None,
        ledger=ledger,
        host_id=host_id,
        port=dtp_port,
        identity=identity,
        open_grace=open_grace,
        names=("host and port are", "dtp_port"),
    )
    base = config or ConnectionConfig(identity=identity, is_client=False)
    cfg = replace(base, identity=identity, is_client=False)
    server = DTPServer(
        client_connected_cb,
        identity,
        accept,
        cfg,
        admit,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        limit=limit,
        settle_on_close=settle_on_close,
        max_handshakes=max_handshakes,
        backlog=backlog,
        first_message_timeout=first_message_timeout,
    )
    if host is not None and port is not None:
        await server.listen(host, port, backlog, start_serving=start_serving)
    if websocket is not None:
        try:
            await server.listen_websocket(
                websocket[0],
                websocket[1],
                origins=allowed,
                backlog=backlog,
                start_serving=start_serving,
            )
        except BaseException:
            server.close()  # (the TCP listener started first goes too)
            raise
    if "ledger" in carriers and not start_serving:
        assert ledger is not None and host_id is not None and dtp_port is not None
        server._ledger_pending = (ledger, host_id, dtp_port, ledger_options)
    elif "ledger" in carriers:
        assert ledger is not None and host_id is not None and dtp_port is not None
        try:
            server.listen_ledger(ledger, host_id, dtp_port, ledger_options)
        except BaseException:
            # (a host it cannot serve, say): the TCP listener started first goes too,
            # rather than listen on with nobody holding the server
            server.close()
            raise
    return server
