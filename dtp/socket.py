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
(:mod:`dtp.transport.blocking`), a ``dtp://`` address to :mod:`dtp.hostid.blocking`, and
:func:`serve` to the paid server (docs/architecture.md).
"""

from __future__ import annotations

import socket as _socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.hostid.address import HostAddress
from dtp.hostid.admission import LedgerAdmission, PeerInfo, check_open_grace_use
from dtp.hostid.blocking import connect_by_host_id
from dtp.hostid.connect import CarrierChoice, pinned_host_key
from dtp.hostid.ledger_carrier.bridge import LedgerCarrierOptions
from dtp.identity.keys import HostIdentity
from dtp.payments.metering import MeteringConfig
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking import LINGER, AcceptHook, AdmitHook
from dtp.transport.blocking import connect as blocking_connect
from dtp.transport.blocking.checks import (
    SSIZE_MAX,
    checked_flags,
    checked_size,
    checked_timeout,
    readable,
    recv_into_target,
)
from dtp.transport.blocking.connect import DEFAULT_TIMEOUT
from dtp.transport.blocking.engine import (
    DRAIN_QUIET,
    FIRST_RECV_CHUNK,
    LOSSY_LINGER,
    PAID_CLOSE_WAIT,
    READ_FIRST_SKIP,
    RECV_CHUNK,
)
from dtp.transport.blocking.files import FileStream, stream_file
from dtp.transport.blocking.server import (
    DTPServer,
    check_backlog,
    check_handshake_bounds,
    check_server_identity,
)
from dtp.transport.blocking.socket import SEND_HIGH_WATER, SHUT_RD, SHUT_RDWR, SHUT_WR, DTPSocket
from dtp.transport.handshake_gate import DEFAULT_FIRST_MESSAGE_TIMEOUT
from dtp.transport.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)
from dtp.transport.session import check_connect_timeout

if TYPE_CHECKING:
    from pathlib import Path

    from dtp.ledger.interface import Ledger
    from dtp.paid import PaidServer, PaidSocket, ServicePolicy
    from dtp.payments.receipt_store import ReceiptStore

__all__ = [
    "DRAIN_QUIET",
    "FIRST_RECV_CHUNK",
    "LINGER",
    "LOSSY_LINGER",
    "PAID_CLOSE_WAIT",
    "READ_FIRST_SKIP",
    "RECV_CHUNK",
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
    "recv_into_target",
    "serve",
    "stream_file",
]


# still imported by modules moving in other stage-1 branches; removed when they repoint
_SSIZE_MAX = SSIZE_MAX
_checked_flags = checked_flags
_checked_size = checked_size
_checked_timeout = checked_timeout
_readable = readable
_check_backlog = check_backlog
_check_handshake_bounds = check_handshake_bounds
_check_server_identity = check_server_identity


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
) -> DTPSocket:
    """Connect to a DTP server and return the connection's first stream.

    ``address``: the server's carrier endpoint ``(host, port)``, or a DTP address
    (``"dtp://0x<host id>:<port>"`` or a :class:`~dtp.hostid.address.HostAddress`). ``server_key``:
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
    must publish a TCP endpoint (:class:`~dtp.hostid.connect.NoCarrierEndpoint`) — all before
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
    (:func:`dtp.transport.carriers.tcp.connect_any`) and then the handshake, not the ledger calls.
    The connection is metered (signed cumulative receipts in-band, a final one at
    close, then our half-close on the ledger; docs/escrow.md §6.1) unless
    ``metering=MeteringConfig(enabled=False)``; ``metering`` also sets the cadence.
    ``subscription`` (a live Subscription of ours to this service: the connection opens
    unmetered, ``deposit`` defaulting to 0) or ``sponsor_pool`` (the service's
    SponsorPool, which pledges its share of the deposit) pay another way (docs/escrow.md
    §13-14; :func:`dtp.hostid.connect.prepare_host_connection`).
    """
    if timeout is DEFAULT_TIMEOUT:
        # left out, or passed on as socket.create_connection takes it (http.client and
        # others do): the process's default socket timeout
        timeout = _socket.getdefaulttimeout()
    check_connect_timeout(timeout)
    if isinstance(address, (str, HostAddress)):
        return connect_by_host_id(
            HostAddress.parse(address) if isinstance(address, str) else address,
            timeout,
            server_key=pinned_host_key(server_key, expected_server_key),
            identity=identity,
            config=config,
            ledger=ledger,
            deposit=deposit,
            cap_id=cap_id,
            carrier=carrier,
            ledger_options=ledger_options,
            metering=metering,
            subscription=subscription,
            sponsor_pool=sponsor_pool,
        )
    if (
        ledger is not None
        or deposit is not None
        or cap_id is not None
        or carrier == "ledger"
        or ledger_options is not None
        or subscription is not None
        or sponsor_pool is not None
    ):
        raise ValueError("ledger, deposit, cap_id and the ledger carrier need a DTP address")
    return blocking_connect.create_connection(
        address,
        timeout,
        server_key=server_key,
        expected_server_key=expected_server_key,
        identity=identity,
        config=config,
    )


def create_server(
    address: tuple[str, int] | None,
    *,
    identity: HostIdentity,
    accept: AcceptHook | None = None,
    admit: AdmitHook | None = None,
    config: ConnectionConfig | None = None,
    backlog: int = 128,
    ledger: Ledger | None = None,
    host_id: str | None = None,
    port: int | None = None,
    carriers: tuple[str, ...] | None = None,
    ledger_options: LedgerCarrierOptions | None = None,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
    settle_on_close: bool = False,
    first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    open_grace: float | None = None,
) -> DTPServer:
    """Listen for DTP connections on ``address`` with the host's ``identity``.

    ``accept`` / ``admit``: see :class:`DTPServer`. With ``ledger``, ``host_id`` and
    ``port`` (the DTP port served, a service of that Host), clients are admitted only
    through :class:`~dtp.hostid.admission.LedgerAdmission`: their handshake must name an Open
    ledger connection of theirs to this host and port with a funded escrow, and the
    host's firewall must permit them; others get ConnectionRefused with the reason. One
    DTP connection is served per ledger connection at a time, within the Host's
    connection limits (``max_connections_per_client``, the service's
    ``max_connections``), counted over the DTP connections the server serves now: one
    beyond them is refused (``ConnectionLimitReached`` at the client). Such a server
    only admits: it claims nothing. By default it does not close its side of the ledger
    connection either, so a client may reconnect on the same ledger connection, but its
    deposit waits for the half-close timeout (10 minutes) -- as does that of a client
    refused at a limit, which half-closes its ledger connection as it meets the refusal
    and collects its refund once the timeout has passed (``dtp refund``).
    ``settle_on_close=True`` closes and settles each ledger connection as its DTP
    connection ends, and each one refused at a limit as it is refused (in a thread of
    the server's: the client is refunded its whole deposit at once;
    :meth:`DTPServer.wait_settled`); ``identity`` must then be the host's authority. A
    paid service is :func:`serve`'s (which claims what the client's receipts say and
    settles each connection as it ends, and refunds one refused at a limit at once).

    ``carriers``: ``("tcp",)``, ``("ledger",)`` or both (default: ``("tcp",)``, or
    ``("ledger",)`` when ``address`` is None). With ``"ledger"`` the server also accepts
    connections that come over the ledger carrier — how a host that publishes no endpoint
    (IP-hiding) is reached: it needs ``ledger``/``host_id``/``port``, ``identity`` must be
    the host's authority, and the same admission applies (docs/ledger-carrier.md).

    ``max_handshakes`` / ``max_handshakes_per_address`` / ``max_waiting_per_address``: at
    most that many handshakes in progress at once, and at most that many from one client
    IP address (an IPv6 /64), whose further connections wait in a line of at most that
    many, so one client cannot hold every handshake slot (None: no per-address cap).
    ``first_message_timeout``: seconds a new connection has to send its complete first
    handshake record (ValueError unless a number > 0); at most ``backlog`` connections
    wait for theirs, the oldest closed to make room. See :class:`DTPServer`.

    ``open_grace``: with ledger admission, seconds a connection a client names is looked
    for on the ledger before it is refused as unknown (its open may still be landing:
    the client's open overlaps its handshake); by default
    :attr:`~dtp.hostid.admission.LedgerAdmission.OPEN_GRACE` (2 s). On Sui, where the host's
    full node may show an open later than the client's did, a longer one spares clients
    a refusal (the daemon's default there is 3 s). InvalidArgument unless None or a
    finite number >= 0, or when given without ledger admission.
    """
    check_open_grace_use(open_grace, ledger)
    if carriers is None:
        carriers = ("tcp",) if address is not None else ("ledger",)
    if not carriers or not set(carriers) <= {"tcp", "ledger"}:
        raise ValueError(f"carriers must be 'tcp' and/or 'ledger', got {carriers!r}")
    if ("tcp" in carriers) != (address is not None):
        raise ValueError("an address is needed for the 'tcp' carrier, and only for it")
    if "ledger" in carriers and (ledger is None or host_id is None or port is None):
        raise ValueError("the ledger carrier needs ledger, host_id and port")
    if ledger is not None or host_id is not None or port is not None:
        if ledger is None or host_id is None or port is None:
            raise ValueError("ledger admission needs ledger, host_id and port together")
        if admit is not None:
            raise ValueError("pass either admit or ledger/host_id/port, not both")
        admit = LedgerAdmission(ledger, host_id, port, open_grace=open_grace)
    server = DTPServer(
        address,
        identity,
        accept=accept,
        admit=admit,
        config=config,
        backlog=backlog,
        max_handshakes=max_handshakes,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        settle_on_close=settle_on_close,
        first_message_timeout=first_message_timeout,
    )
    if "ledger" in carriers:
        assert ledger is not None and host_id is not None and port is not None
        try:
            server.listen_ledger(ledger, host_id, port, ledger_options)
        except BaseException:
            server.close()  # its TCP listener and threads, started already
            raise
    return server


def serve(
    host_id: str,
    port: int,
    handler: Callable[[PaidSocket], None],
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
) -> PaidServer:
    """Serve a paid DTP service on ``port`` of the Host ``host_id``: publish the endpoint
    and Noise key in the Host, admit clients through the ledger, meter them, apply the
    host's firewall at runtime and settle each connection when it ends. Returns the
    running :class:`~dtp.paid.PaidServer` (``close()`` stops it); see :mod:`dtp.paid`.

    ``backlog``, ``max_handshakes``, ``max_handshakes_per_address``,
    ``max_waiting_per_address`` and ``open_grace``: the listen backlog, the bounds on
    handshakes in progress and the admission's grace for an open still landing, as
    :func:`create_server`'s (same defaults; refused as there, but before the ledger is
    read or written)."""
    from dtp.paid import PaidServer

    # before the ledger is read or written (PaidServer checks the handshake bounds first)
    check_server_identity(identity)
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
    )
