"""Host ID with the blocking transport: connecting (the ledger half, :mod:`dtp.hostid._connect`,
around the blocking connect, and the client's payment), and :func:`create_server`, which
adds the ledger's admission and listener to a server when it is given a ledger."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dtp.errors import LocalProtocolError
from dtp.hostid._address import HostAddress
from dtp.hostid._admission import LedgerAdmission, check_open_grace_use, check_serves_host
from dtp.hostid._connect import (
    CarrierChoice,
    OpenJournal,
    abandon_host_connection,
    check_connect_options,
    prepare_connecting_early,
)
from dtp.hostid._payment_hook import MeteredClient
from dtp.hostid._served import reservations_of
from dtp.hostid.ledger_carrier._bridge import (
    LedgerBridge,
    LedgerCarrierOptions,
    LedgerListener,
    connect_ledger_carrier,
    ledger_config,
)
from dtp.identity.keys import HostIdentity
from dtp.payments.metering import MeteringConfig
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.transport._admission import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)
from dtp.transport.blocking import AcceptHook, AdmitHook
from dtp.transport.blocking._checks import checked_timeout
from dtp.transport.blocking._connect import connect
from dtp.transport.blocking._server import DTPServer as TransportServer
from dtp.transport.blocking._socket import DTPSocket
from dtp.transport.carriers._tcp import check_listen_address, connect_any

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger


def connect_by_host_id(
    address: HostAddress,
    timeout: float | None,
    *,
    server_key: bytes | None,
    identity: HostIdentity | None,
    config: ConnectionConfig | None,
    ledger: Ledger | None,
    deposit: int | None,
    cap_id: str | None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
    on_open: OpenJournal | None = None,
) -> HostSocket:
    """:func:`dtp.socket.create_connection` for a DTP address (see there)."""
    if ledger is None:
        raise ValueError("connecting to a DTP address needs the ledger (ledger=...)")
    if identity is None:
        raise ValueError("connecting to a DTP address needs the paying identity (identity=...)")
    check_connect_options(metering, ledger_options)
    prepared, early = prepare_connecting_early(
        ledger,
        address,
        identity,
        deposit=deposit,
        cap_id=cap_id,
        server_key=server_key,
        config=config,
        carrier=carrier,
        subscription=subscription,
        sponsor_pool=sponsor_pool,
        on_open=on_open,
    )
    payments: list[MeteredClient] = []
    metered = metering is None or metering.enabled

    def while_waiting(conn: Connection) -> None:
        # While the server works on our first message: the open lands on the ledger (the
        # server's admission gives it a moment), then the meter is set up from it
        opened = prepared.opened
        if prepared.pending_open is not None:
            opened = prepared.pending_open.execute()
        if metered:
            payments.append(
                MeteredClient(
                    ledger,
                    identity,
                    address.host_id,
                    prepared.connection_id,
                    conn,
                    metering,
                    now=time.monotonic(),
                    opened=opened,
                )
            )

    try:
        if prepared.endpoint is None:
            bridge = connect_ledger_carrier(
                ledger, identity, prepared.connection_id, prepared.server_address, ledger_options
            )
            sock = connect(
                bridge.peername,
                timeout,
                prepared.config,
                str(address),
                bridge.socket,
                while_waiting=while_waiting,
                timer=False,
                socket_class=HostSocket,
            )
        else:
            # the host's endpoints in turn until one answers (each with the timeout)
            tcp, reached = connect_any(early, prepared.endpoints, timeout)
            early = None  # (finished: what it made is tcp, or closed)
            sock = connect(
                reached,
                timeout,
                prepared.config,
                name=str(address),
                carrier=tcp,
                while_waiting=while_waiting,
                timer=False,
                socket_class=HostSocket,
            )
    except BaseException as exc:
        if early is not None:
            early.close()
        abandon_host_connection(ledger, identity, address, prepared, exc)
        raise
    assert isinstance(sock, HostSocket)
    sock.connection_id = prepared.connection_id
    sock.escrow_id = prepared.escrow_id
    layer = sock.layer
    if payments:
        layer.set_hook(payments[0], payments[0].on_receipt_frame)
    layer.start_timer()  # (after the payment: a metered engine's passes come sooner)
    return sock


class HostSocket(DTPSocket):
    """A connection by host ID (what :func:`dtp.socket.create_connection` returns for a
    ``dtp://`` address, and each of its streams): a :class:`DTPSocket` that names its
    ledger objects (on the first stream) and can top its deposit up."""

    def top_up(self, amount: int) -> None:
        """Add ``amount`` MIST to the deposit of this paid connection (one made by host
        ID with a ``deposit``) while it is open: an ``escrow::top_up`` transaction
        (blocking), then receipts are signed up to the new deposit -- usage the old one
        did not cover is paid at once. The server reads the escrow again when the
        deposit holds the connection (within about a second) and serves on.

        Raises :class:`~dtp.errors.LocalProtocolError` on a connection that is not paid
        or a closed socket, the connection's error (ConnectionClosed, ...) once it has
        ended -- before any transaction: what it added would only come back in the
        refund --, InvalidArgument for an amount that is not a positive int, and what
        the ledger raises (InsufficientFunds: the balance is short; nothing was added
        then)."""
        layer = self.layer
        payment = layer.hook
        if not isinstance(payment, MeteredClient):
            return super().top_up(amount)  # (raises SocketClosed when closed, else NOT_PAID)
        layer.check_live()
        payment.top_up_on_ledger(amount)  # (without the lock: a ledger transaction)
        layer.run_and_flush(lambda: payment.topped_up(amount))


class DTPServer(TransportServer):
    """The transport's :class:`~dtp.transport.blocking._server.DTPServer` that can also
    serve the ledger carrier (:meth:`listen_ledger`) and settle what its ledger admission
    admitted (``settle_on_close``, :meth:`wait_settled`): :class:`dtp.socket.DTPServer`,
    what :func:`create_server` makes."""

    def __init__(
        self,
        address: tuple[str, int] | None,
        identity: HostIdentity,
        *,
        accept: AcceptHook | None = None,
        admit: AdmitHook | None = None,
        config: ConnectionConfig | None = None,
        backlog: int = 128,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_pending: int = 128,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        settle_on_close: bool = False,
        first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    ) -> None:
        """As the transport's server, which is given the ``admit`` hook's reservations
        (:class:`~dtp.hostid._admission.LedgerAdmission`'s: one DTP connection per ledger
        connection, within the Host's limits). ``settle_on_close``: with such a hook,
        close and settle each client's ledger connection on the ledger as its DTP
        connection ends (see :func:`create_server`; ValueError with another hook, before
        anything listens)."""
        self._settling = reservations_of(admit, identity, settle_on_close)
        super().__init__(
            address,
            identity,
            accept=accept,
            admit=admit,
            config=config,
            backlog=backlog,
            max_handshakes=max_handshakes,
            max_pending=max_pending,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            first_message_timeout=first_message_timeout,
            reservations=self._settling,
        )

    def wait_settled(self, timeout: float | None = None) -> bool:
        """With ``settle_on_close``: wait until the ledger connections of the DTP
        connections that ended so far are settled (True), or ``timeout`` seconds
        (False). Without it there is nothing to wait for (True). A ``timeout``
        :meth:`settimeout` refuses raises as there, with or without it."""
        timeout = checked_timeout(timeout)
        return self._settling is None or self._settling.wait_settled(timeout)

    def listen_ledger(
        self,
        ledger: Ledger,
        host_id: str,
        port: int,
        options: LedgerCarrierOptions | None = None,
    ) -> LedgerListener:
        """Also accept connections to ``host_id``:``port`` that come over the ledger
        carrier (the IP-hiding mode): each one, bridged to a local socket, goes through
        the same handshake, hooks and :meth:`accept` / :meth:`serve_forever` as TCP
        connections. Our identity must be the host's authority (NotAuthorized otherwise;
        ObjectNotFound when there is no such host)."""
        if self.attached is not None:
            raise LocalProtocolError("this server already listens on the ledger")
        config = ledger_config(self.connection_config)

        def handoff(bridge: LedgerBridge) -> None:
            self.handoff(bridge.socket, bridge.peername, config)

        listener = LedgerListener(ledger, self.identity, host_id, port, handoff, options=options)
        self.attach(listener)
        return listener


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
    """Listen for DTP connections on ``address`` with the host's ``identity``:
    a ``(host, port)`` tuple, checked before anything else (TypeError naming what was
    given, InvalidArgument for a port outside 0..65535).

    ``accept`` / ``admit``: see :class:`DTPServer`. With ``ledger``, ``host_id`` and
    ``port`` (the DTP port served, a service of that Host), clients are admitted only
    through :class:`~dtp.hostid._admission.LedgerAdmission`: their handshake must name an Open
    ledger connection of theirs to this host and port with a funded escrow, and the
    host's firewall must permit them; others get ConnectionRefused with the reason. The
    Host must exist (ObjectNotFound) and publish ``identity``'s Noise key
    (HostConfigError), checked before anything listens: its clients take the key from
    the Host and open their deposits first. One
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
    :attr:`~dtp.hostid._admission.LedgerAdmission.OPEN_GRACE` (2 s). On Sui, where the host's
    full node may show an open later than the client's did, a longer one spares clients
    a refusal (the daemon's default there is 3 s). InvalidArgument unless None or a
    finite number >= 0, or when given without ledger admission.
    """
    if address is not None:
        check_listen_address(address)
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
        check_serves_host(ledger, host_id, identity.noise_public)  # (after the port's check)
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
