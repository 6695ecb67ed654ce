"""Blocking DTP sockets that feel like the :mod:`socket` module.

    import dtp.socket

    with dtp.socket.create_server(("127.0.0.1", 7000), identity=server_id) as server:
        ...  # in another thread / process:
    with dtp.socket.create_connection(("127.0.0.1", 7000), server_key=key) as sock:
        sock.sendall(b"hello")
        print(sock.recv(1024))

A connection carries many streams; the socket returned by ``create_connection`` /
``accept`` is its first stream, :meth:`DTPSocket.open_stream` opens more.

I/O is driven by the calling thread, as with :mod:`ssl` sockets: whoever waits does the
socket work, so a request/response costs no thread hand-off. A small per-connection
timer thread only steps in when no caller is active, to send keepalives and notice
idle timeouts. Sockets are thread-safe: different threads may use different streams
of one connection at once.

This module is the public face: a plain address goes to the blocking transport
(:mod:`dtp.transport.blocking`), a ``dtp://`` address to :mod:`dtp.hostid._blocking`, and
:func:`serve` to the paid server (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from dtp.hostid._address import HostAddress
from dtp.hostid._admission import PeerInfo
from dtp.hostid._blocking import DTPServer, connect_by_host_id, create_server
from dtp.hostid._connect import (
    CarrierChoice,
    LedgerTerms,
    OpenJournal,
    pinned_host_key,
    websocket_url,
)
from dtp.hostid._payment_hook import PAID_CLOSE_WAIT
from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions
from dtp.identity.keys import HostIdentity
from dtp.payments.metering import MeteringConfig
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._admission import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)
from dtp.transport.blocking import LINGER, AcceptHook, AdmitHook
from dtp.transport.blocking import _connect as blocking_connect
from dtp.transport.blocking._connect import DEFAULT_TIMEOUT
from dtp.transport.blocking._files import FileStream, stream_file
from dtp.transport.blocking._socket import SEND_HIGH_WATER, SHUT_RD, SHUT_RDWR, SHUT_WR, DTPSocket

if TYPE_CHECKING:
    import ssl as _ssl
    from pathlib import Path

    from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
    from dtp.hostid.paid._request_billing import RequestServer
    from dtp.ledger.interface import Ledger
    from dtp.payments.receipt_store import ReceiptStore

__all__ = [
    "LINGER",
    "PAID_CLOSE_WAIT",
    "SEND_HIGH_WATER",
    "SHUT_RD",
    "SHUT_RDWR",
    "SHUT_WR",
    "AcceptHook",
    "AdmitHook",
    "DTPServer",
    "DTPSocket",
    "FileStream",
    "PeerInfo",
    "create_connection",
    "create_server",
    "serve",
    "stream_file",
]


def create_connection(
    address: tuple[str, int] | str | HostAddress,
    timeout: float | None = DEFAULT_TIMEOUT,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
    ledger: Ledger | None = None,
    deposit: int | None = None,
    cap_id: str | None = None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
    on_open: OpenJournal | None = None,
    origin: str | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> DTPSocket:
    """Connect to a DTP server and return the connection's first stream.

    ``address``: the server's carrier endpoint ``(host, port)``, a WebSocket URL
    (``"ws://host:port/path"``, ``"wss://…"``: the WebSocket carrier, docs/protocol.md
    §13; the ``ws`` extra; ``origin`` the ``Origin`` header sent, None for none as
    programs send, and ``ssl`` a ``wss://`` URL's TLS context, None for the system's;
    ``timeout`` bounds the connect, the upgrade and the handshake, and with none the
    upgrade is bounded by the config's ``handshake_timeout``, as with
    :func:`dtp.aio.open_connection`), or a DTP address
    (``"dtp://0x<host id>:<port>"`` or a :class:`~dtp.hostid._address.HostAddress`). ``server_key``:
    its Noise static public key (32 bytes) if known — the handshake is then Noise IK and a
    server without that key cannot answer; without it the handshake is Noise XX and
    ``expected_server_key`` may pin the key the server must present. ``identity``: our
    keys (a fresh anonymous identity when omitted). A ``config``'s identity and server
    keys stand where these arguments are omitted (a key given both ways must agree:
    ValueError). Raises ConnectionRefused when the
    server refuses us, HandshakeError when the handshake fails, DTPTimeoutError when
    ``timeout`` passes first. ``timeout`` left out is, as for
    :func:`socket.create_connection`, the process's :func:`socket.getdefaulttimeout`
    (None, blocking, unless set), which the stream then has as its timeout too.

    **Connecting by host ID.** With a DTP address, ``ledger`` and ``identity`` (the
    paying Sui key) are required. In order: the Host is read (``ObjectNotFound``); the
    service must exist (``ServiceNotFound``), the firewall must permit us
    (``FirewallDenied``), ``deposit`` (default: the SLA's ``min_deposit``) must reach
    the minimum and our balance (``InsufficientFunds``), and with ``carrier="tcp"`` the host
    must publish a TCP endpoint (:class:`~dtp.hostid._connect.NoCarrierEndpoint`) — all before
    any money moves.
    Then, when ``cap_id`` is None, a new SpendingCap owned by us with
    ``max_per_epoch = deposit`` is created (pass ``cap_id`` to reuse one); the connection
    is opened on the ledger (``deposit`` MIST into its escrow); and we connect to the
    host's first TCP endpoint with Noise IK to the host's published ``noise_static_key``
    (``server_key`` may not disagree with it), naming the connection ID and port in the
    handshake. The socket's ``connection_id`` and ``escrow_id`` name the ledger objects.
    When the host publishes no TCP endpoint (``carrier="auto"``), or with
    ``carrier="ledger"``, the records travel through pipes on the ledger instead (the
    IP-hiding mode, docs/ledger-carrier.md; ``ledger_options`` tunes it); the connection
    then acknowledges and retransmits itself and its handshake timeout is at least 30 s.
    If anything fails after the ledger open (refused, timeout, handshake), we close the
    connection on the ledger (our half-close), so that the deposit can be refunded once
    the close timeout has passed (docs/escrow.md §7); the original error is raised.
    ``timeout`` bounds the carrier connect to each of the host's endpoints in turn
    (:func:`dtp.transport.carriers._tcp.connect_any`) and then the handshake, not the ledger calls.
    The connection is metered (signed cumulative receipts in-band, a final one at
    close, then our half-close on the ledger; docs/escrow.md §6.1) unless
    ``metering=MeteringConfig(enabled=False)``; ``metering`` also sets the cadence.
    ``subscription`` (a live Subscription of ours to this service: the connection opens
    unmetered, ``deposit`` defaulting to 0) or ``sponsor_pool`` (the service's
    SponsorPool, which pledges its share of the deposit) pay another way (docs/escrow.md
    §13-14; :func:`dtp.hostid._connect.prepare_host_connection`).

    ``on_open(cap_id, connection_id)`` (a DTP address only): told of the ledger
    connection before its deposit can move, for a caller that keeps a durable record of
    its deposits -- ``dtp.payments._refunds.refunds_for(ledger, identity,
    path=...).record_open`` keeps them in a file, so that a process killed with the
    connection open leaves it to the next run, which takes the deposit back
    (docs/escrow.md §7.1). Called before the open's transaction with the spending cap
    (and the connection ID where the ledger tells it ahead), again with the ID once
    the open landed; when it raises, nothing is opened and its error is raised.
    """
    timeout = blocking_connect.connect_timeout(timeout)
    url = websocket_url(address)
    if url is None and (origin is not None or ssl is not None):
        raise ValueError("origin and ssl are for a WebSocket URL (ws://…, wss://…)")
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
    if url is not None or not isinstance(address, (str, HostAddress)):
        terms.refuse(url is not None)  # (the ledger's options belong to a DTP address only)
    if url is not None:
        return blocking_connect.create_websocket_connection(
            url,
            timeout,
            server_key=server_key,
            expected_server_key=expected_server_key,
            identity=identity,
            config=config,
            origin=origin,
            ssl=ssl,
        )
    if isinstance(address, (str, HostAddress)):
        return connect_by_host_id(
            HostAddress.parse(address) if isinstance(address, str) else address,
            timeout,
            terms,
            server_key=pinned_host_key(server_key, expected_server_key),
            identity=identity,
            config=config,
        )
    return blocking_connect.create_connection(
        address,
        timeout,
        server_key=server_key,
        expected_server_key=expected_server_key,
        identity=identity,
        config=config,
    )


def serve(
    host_id: str,
    port: int,
    handler: Callable[[PaidSocket], None] | RequestServer,
    *,
    ledger: Ledger,
    identity: HostIdentity,
    address: tuple[str, int] = ("127.0.0.1", 0),
    receipts: ReceiptStore | str | Path | None = None,
    policy: ServicePolicy | None = None,
    config: ConnectionConfig | None = None,
    endpoint: tuple[str, int] | None = None,
    backlog: int = 128,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
    open_grace: float | None = None,
    billing: Literal["bytes", "requests"] = "bytes",
) -> PaidServer:
    """Serve a paid DTP service on ``port`` of the Host ``host_id``: publish the endpoint
    and Noise key in the Host, admit clients through the ledger, meter them, apply the
    host's firewall at runtime and settle each connection when it ends. Returns the
    running :class:`~dtp.hostid.paid.PaidServer` (``close()`` stops it); see :mod:`dtp.hostid.paid`.

    ``backlog``, ``max_handshakes``, ``max_handshakes_per_address``,
    ``max_waiting_per_address`` and ``open_grace``: the listen backlog, the bounds on
    handshakes in progress and the admission's grace for an open still landing, as
    :func:`create_server`'s (same defaults; refused as there, but before the ledger is
    read or written).

    ``billing``: ``"bytes"`` (the default) meters each connection by its transport --
    bytes and streams, in receipts the client's socket signs -- and ``handler`` takes a
    :class:`~dtp.hostid.paid.PaidSocket`. ``"requests"`` bills per request: ``handler``
    is an :class:`~dtp.messaging.rpc.RpcServer` made without ``payments``, and each of
    its requests is paid by the receipt it carries, checked by the RPC fee engine (the
    SLA's ``price_per_request``, or the method's price under the server's rules,
    docs/messaging.md §2.5), kept in ``receipts`` before it is served and claimed when
    the connection ends. Clients connect with
    ``metering=MeteringConfig(enabled=False)`` and call with a
    :class:`~dtp.payments.receipts.Meter` (``RpcClient(sock, meter=...)``). TypeError /
    ValueError for a handler that is not such a server, before the ledger is read or
    written."""
    from dtp.hostid.paid import PaidServer

    # (PaidServer checks the identity, then the other options, before the ledger is
    # read or written: ServerOptions.checked)
    return PaidServer(
        host_id,
        port,
        handler,
        ledger=ledger,
        identity=identity,
        address=address,
        receipts=receipts,
        policy=policy,
        config=config,
        endpoint=endpoint,
        backlog=backlog,
        max_handshakes=max_handshakes,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        open_grace=open_grace,
        billing=billing,
    )
