"""Host ID with the blocking transport: connecting (the ledger half, :mod:`dtp.hostid._connect`,
around the blocking connect, and the client's payment), and :func:`create_server`, which
adds the ledger's admission and listener to a server when it is given a ledger."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dtp.hostid._address import HostAddress
from dtp.hostid._admission import check_open_grace_use, server_admission
from dtp.hostid._connect import LedgerTerms, abandon_host_connection
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
    terms: LedgerTerms,
    *,
    server_key: bytes | None,
    identity: HostIdentity | None,
    config: ConnectionConfig | None,
) -> HostSocket:
    """:func:`dtp.socket.create_connection` for a DTP address (see there), on ``terms``."""
    ledger = terms.ledger
    if ledger is None:
        raise ValueError("connecting to a DTP address needs the ledger (ledger=...)")
    if identity is None:
        raise ValueError("connecting to a DTP address needs the paying identity (identity=...)")
    terms.check()
    prepared, early = terms.prepare_early(ledger, address, identity, server_key, config)
    opening = PaidOpening(ledger, identity, address.host_id, prepared, terms.metering)

    def while_waiting(conn: Connection) -> None:
        # while the server works on our first message
        opened = opening.land()
        if opening.metered:
            opening.meter(conn, time.monotonic(), opened)

    reached: tuple[str, int | str]  # (a ledger bridge's names its connection)
    try:
        if prepared.endpoint is None:
            bridge = connect_ledger_carrier(
                ledger,
                identity,
                prepared.connection_id,
                prepared.server_address,
                terms.ledger_options,
            )
            carrier, reached = bridge.socket, bridge.peername
        else:
            # the host's endpoints in turn until one answers (each with the timeout)
            carrier, reached = connect_any(early, prepared.endpoints, timeout)
            early = None  # (finished: what it made is carrier, or closed)
        sock = connect(
            reached,
            timeout,
            prepared.config,
            str(address),
            carrier,
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
    layer = sock.layer
    opening.hand_over(sock, layer)
    layer.start_timer()  # (after the payment: a metered engine's passes come sooner)
    return sock


class HostSocket(DTPSocket):
    """A connection by host ID (what :func:`dtp.socket.create_connection` returns for a
    ``dtp://`` address, and each of its streams): a :class:`DTPSocket` that names its
    ledger objects (on the first stream) and can top its deposit up."""

    def top_up(self, amount: int) -> None:
        """Add ``amount`` MIST to the deposit of this paid connection while it is open:
        an ``escrow::top_up`` transaction (blocking), then receipts are signed up to the
        new deposit. The server sees it within about a second and serves on.

        Raises :class:`~dtp.errors.LocalProtocolError` on a connection that is not paid
        or a closed socket, the connection's error once it has ended (before any
        transaction), InvalidArgument for an amount that is not a positive int, and what
        the ledger raises (InsufficientFunds: nothing was added)."""
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

        def handing(config: ConnectionConfig) -> Accepted:
            def handoff(bridge: LedgerBridge) -> None:
                self.handoff(bridge.socket, bridge.peername, config)

            return handoff

        return listen_on_ledger(self, ledger, host_id, port, options, handing)


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

    The first server a process makes sizes CPython's garbage collector for serving,
    once: ``gc.freeze()`` of what exists, the youngest generation's threshold 700 ->
    10,000 (:mod:`dtp.transport._collector`); not when the program set thresholds of
    its own, nor with ``DTP_SERVER_GC=default`` in the environment.

    ``accept`` / ``admit``: see :class:`DTPServer`. With ``ledger``, ``host_id`` and
    ``port`` (the DTP port served), clients are admitted only through
    :class:`~dtp.hostid._admission.LedgerAdmission`: their handshake must name an Open,
    funded ledger connection of theirs to this host and port, and the firewall must
    permit them (else ConnectionRefused with the reason). The Host must exist
    (ObjectNotFound) and publish ``identity``'s Noise key (HostConfigError), checked
    before anything listens. One DTP connection is served per ledger connection, within
    the Host's connection limits counted over the connections served now (one beyond
    them: ``ConnectionLimitReached`` at the client). Such a server claims nothing, and
    by default leaves the ledger connection Open (a client may reconnect on it), the
    deposit waiting for the half-close timeout (``dtp refund``).
    ``settle_on_close=True`` closes and settles each ledger connection as its DTP
    connection ends or is refused at a limit, in a thread of the server's, refunding
    the client at once (:meth:`DTPServer.wait_settled`); ``identity`` must then be the
    host's authority. A paid service is :func:`serve`'s.

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
    for before it is refused as unknown (its open may still be landing); by default
    :attr:`~dtp.hostid._admission.LedgerAdmission.OPEN_GRACE` (2 s; the daemon's on Sui,
    whose full node may lag, is 3 s). InvalidArgument unless None or a finite number
    >= 0, or when given without ledger admission.
    """
    if address is not None:
        check_listen_address(address)
    check_open_grace_use(open_grace, ledger)
    carriers, admit = server_admission(
        carriers,
        admit,
        tcp=address is not None,
        websocket=False,
        ledger=ledger,
        host_id=host_id,
        port=port,
        identity=identity,
        open_grace=open_grace,
    )
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
