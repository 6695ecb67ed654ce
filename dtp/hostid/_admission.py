"""Connecting by host ID, the server side: :class:`LedgerAdmission`, the host-ID
servers' admission hook (a funded, Open connection of this client, host and port, the
firewall and any subscription permitting), and what a hook's verdict means. The client
side is :mod:`dtp.hostid._connect`, whose names this module re-exports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, TypeVar

from dtp.errors import (
    ChainError,
    HostConfigError,
    InvalidArgument,
    connection_limit_refusal,
    finite_float,
    subscription_refusal,
)

# the client side, re-exported
from dtp.hostid._connect import (
    CarrierChoice,
    NoCarrierEndpoint,
    PreparedConnection,
    ResolvedService,
    abandon_host_connection,
    check_ledger_object,
    pinned_host_key,
    prepare_host_connection,
    resolve_service,
    tcp_endpoint,
    tcp_endpoints,
)
from dtp.hostid._served import ServedConnections
from dtp.ledger._objects import ConnectionState, Escrow, Host, TransportControl, normalize_id
from dtp.payments._sold_offers import withdraw_sold_offer

# what the transport's servers give and take of an admission hook, re-exported: this is
# where admission hooks were written against
from dtp.transport._hooks import PeerInfo
from dtp.transport._session import HOOK_FAILED, peer_info, refusal_reason

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import ConnectionView, Ledger


__all__ = [
    "HOOK_FAILED",
    "Admitted",
    "CarrierChoice",
    "ConnectionLimits",
    "LedgerAdmission",
    "NoCarrierEndpoint",
    "PeerInfo",
    "PreparedConnection",
    "ResolvedService",
    "abandon_host_connection",
    "check_open_grace_use",
    "checked_open_grace",
    "peer_info",
    "pinned_host_key",
    "prepare_host_connection",
    "refusal_reason",
    "resolve_service",
    "server_admission",
    "tcp_endpoint",
    "tcp_endpoints",
    "while_opening",
]


logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_H = TypeVar("_H")


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection limits a Host publishes for one of its services, which its
    admission enforces on the DTP connections it serves (docs/escrow.md §2: the ledger
    counts none, so that opens of a host run concurrently on Sui). 0 means unlimited."""

    host_id: str
    port: int
    #: ``Firewall.max_connections_per_client``: one client's connections to the host.
    per_client: int
    #: ``Service.max_connections``: the service's connections.
    per_service: int

    @classmethod
    def of(cls, host: Host, port: int) -> ConnectionLimits:
        """The limits of ``host``'s service on ``port`` (0 for a service it has not)."""
        service = host.services.get(port)
        return cls(
            host.id,
            port,
            host.firewall.max_connections_per_client,
            0 if service is None else service.max_connections,
        )

    def refusal(self, client: str, of_client: int, of_service: int) -> str | None:
        """None when a new connection of ``client`` fits, which already has ``of_client``
        connections served to the host while the service serves ``of_service``; else
        the refusal (``host::EMaxConnections``, raised at the client as
        :class:`~dtp.errors.ConnectionLimitReached`)."""
        if self.per_client and of_client >= self.per_client:
            return connection_limit_refusal(
                f"{client} already has {of_client} of {self.per_client} connections to "
                f"host {self.host_id}"
            )
        if self.per_service and of_service >= self.per_service:
            return connection_limit_refusal(
                f"port {self.port} of host {self.host_id} serves {of_service} of "
                f"{self.per_service} connections"
            )
        return None


class Admitted(NamedTuple):
    """What :class:`LedgerAdmission` read of a connection it accepted."""

    connection: TransportControl
    escrow: Escrow

    def of(self, key: str) -> bool:
        """Whether these are ledger connection ``key``'s, used rather than read again:
        only the server claims from the escrow, so they are current."""
        return self.connection.id == key


def checked_open_grace(open_grace: float | None) -> float | None:
    """``open_grace``: None (:attr:`LedgerAdmission.OPEN_GRACE`) or finite seconds >= 0,
    else :class:`~dtp.errors.InvalidArgument`; checked before the ledger is touched."""
    if open_grace is None:
        return None
    seconds = finite_float(open_grace)
    if seconds is None or seconds < 0:
        raise InvalidArgument(
            f"open_grace must be a finite number of seconds, 0 or more, not {open_grace!r}"
        )
    return seconds


def check_open_grace_use(open_grace: float | None, ledger: object | None) -> None:
    """A server factory's ``open_grace`` (:func:`checked_open_grace`), given with the
    ``ledger`` its admission reads: InvalidArgument with none (the grace is that
    admission's; a server admitting by a hook of its own would ignore it)."""
    checked_open_grace(open_grace)
    if open_grace is not None and ledger is None:
        raise InvalidArgument(
            "open_grace is the ledger admission's: give it with ledger and host_id"
        )


def check_serves_host(ledger: Ledger, host_id: str, noise_public: bytes) -> None:
    """That the Host ``host_id`` is on the ledger (ObjectNotFound) and publishes this
    server's Noise key (HostConfigError): else every handshake fails after the client's
    deposit went into escrow."""
    host = ledger.get_host(host_id)
    if host.noise_static_key != noise_public:
        raise HostConfigError(
            f"host {host.id} publishes the Noise key {host.noise_static_key.hex()}, not this "
            f"server's identity's ({noise_public.hex()}): its clients' handshakes would fail "
            "after their deposits went into escrow. Publish this identity's key "
            "(ledger.set_noise_static_key, or `dtp host set HOST --noise-key KEY`) before "
            "the server starts, or serve with the identity whose key the Host publishes"
        )


def server_admission(
    carriers: tuple[str, ...] | None,
    admit: _H | None,
    *,
    tcp: bool,
    websocket: bool,
    tcp_host: bool = False,
    ledger: Ledger | None,
    host_id: str | None,
    port: int | None,
    identity: HostIdentity,
    open_grace: float | None,
    names: tuple[str, str] = ("an address is", "port"),
) -> tuple[tuple[str, ...], _H | LedgerAdmission | None]:
    """The carriers a host-ID server serves and its admission hook, from the arguments
    of :func:`dtp.socket.create_server` / :func:`dtp.aio.start_server`, checked before
    anything listens: ``carriers`` default to ``("tcp",)`` with a TCP host, else
    ``("ledger",)``; with ``ledger``, ``host_id`` and ``port``, a :class:`LedgerAdmission`
    (:func:`check_serves_host`). ValueError for a contradiction, naming the arguments
    by ``names``."""
    address_is, port_name = names
    if carriers is None:
        if tcp or bool(tcp_host):
            carriers = ("tcp",)
        else:
            carriers = ("ledger",) if not websocket or ledger is not None else ()
    if (not carriers and not websocket) or not set(carriers) <= {"tcp", "ledger"}:
        raise ValueError(f"carriers must be 'tcp' and/or 'ledger', got {carriers!r}")
    if ("tcp" in carriers) != tcp:
        raise ValueError(f"{address_is} needed for the 'tcp' carrier, and only for it")
    if "ledger" in carriers and (ledger is None or host_id is None or port is None):
        raise ValueError(f"the ledger carrier needs ledger, host_id and {port_name}")
    if ledger is None and host_id is None and port is None:
        return carriers, admit
    if ledger is None or host_id is None or port is None:
        raise ValueError(f"ledger admission needs ledger, host_id and {port_name} together")
    if admit is not None:
        raise ValueError(f"pass either admit or ledger/host_id/{port_name}, not both")
    admission = LedgerAdmission(ledger, host_id, port, open_grace=open_grace)
    check_serves_host(ledger, host_id, identity.noise_public)  # (after the port's check)
    return carriers, admission


class LedgerAdmission:
    """Server admission against the ledger, for ``DTPServer(admit=...)`` of
    :mod:`dtp.socket` or :mod:`dtp.aio` (the host-ID servers: a transport server given it
    would admit but keep no reservations, and so not hold one DTP connection per ledger
    connection or the Host's connection limits).

    ``host_id``: the Host this server serves; ``port``: the DTP port it serves. Returns
    None to accept, or the refusal reason (which the client receives as
    ``ConnectionRefused(reason)``). Every decision reads the ledger afresh.

    ``open_grace``: seconds an unknown connection is looked for before it is refused
    (default :attr:`OPEN_GRACE`; :func:`checked_open_grace`).

    ``remember``: keep what was read of each accepted connection for
    :meth:`take_admitted` (the paid servers' gates and settlements), at most
    :attr:`REMEMBERED` not yet taken.

    ``withdraw_as``: the server's identity, to withdraw a subscription offer sold with
    the host as one of its connections is refused (docs/escrow.md §13), so its client
    can end the connection at once. None: refused, the offer left as it is.

    A decision takes one read where the ledger can: the connection with its escrow and
    the host together (:meth:`~dtp.ledger.interface.Ledger.connection_view`).
    """

    REMEMBERED = 256
    """How many accepted connections' objects are kept for :meth:`take_admitted`."""
    OPEN_GRACE = 2.0
    """Seconds an unknown connection is looked for before it is refused, for a client
    may name it while its open lands; generous, since a refusal locks the client's
    deposit for the half-close timeout. Equal to :data:`dtp.daemon._config.OPEN_GRACE`
    (tests/hostid/test_open_grace.py); on Sui the daemon passes 3 s
    (:data:`dtp.daemon._config.OPEN_GRACE_SUI`)."""

    def __init__(
        self,
        ledger: Ledger,
        host_id: str,
        port: int,
        *,
        remember: bool = False,
        open_grace: float | None = None,
        withdraw_as: HostIdentity | None = None,
    ) -> None:
        # a port given as "443" never equals the 443 a client names: every client would
        # be refused, with "serves port 443, not 443"
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 0xFFFF:
            raise InvalidArgument(f"A port is a u16 (0..65535), got {port!r}.")
        check_ledger_object(ledger)  # (else each client's admission failed on it)
        self.ledger = ledger
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        self.remember = remember
        self.withdraw_as = withdraw_as
        #: The connection limits of the Host as the latest admission read it (None
        #: before the first): the server counts its live connections against them as
        #: it takes each one in (:meth:`dtp.hostid._served.ServedConnections.reserve`).
        self.limits: ConnectionLimits | None = None
        open_grace = checked_open_grace(open_grace)
        if open_grace is not None:
            # (an instance's own: a full node whose indexes lag behind the one the
            # client's open executed on needs longer than a LocalLedger file)
            self.OPEN_GRACE = open_grace
        self._admitted: dict[str, Admitted] = {}
        self._admitted_lock = threading.Lock()

    def __call__(self, peer: PeerInfo) -> str | None:
        """None to accept ``peer``, or why it is refused."""
        try:
            return self._check(peer)
        except ChainError as exc:
            return f"cannot check the connection on the ledger: {exc}"

    def reservations(self, identity: HostIdentity, settle: bool) -> ServedConnections:
        """The connections a server admitting through this hook serves
        (:class:`~dtp.transport._hooks.Reservations`: one DTP connection per ledger
        connection, within the Host's limits as :attr:`limits` last read them; each
        settled as it ends with ``settle``, the server's ``settle_on_close``)."""
        own = getattr(self, "served", None)
        if isinstance(own, ServedConnections):
            # a hook that keeps its own (a paid server's, which must learn of every DTP
            # connection it admitted ending, served or not, to settle those it did not
            # serve) has it used
            if settle:
                raise ValueError("settle_on_close with an admission hook that settles itself")
            served = own
        elif settle:
            served = ServedConnections(self.ledger, identity, settle=True)
        else:
            served = ServedConnections()
        served.limits_of = lambda: self.limits
        # a connection admitted here and refused there is served by nobody: what was
        # remembered of it goes, rather than wait for REMEMBERED newer ones
        served.forget = self.take_admitted
        return served

    def take_admitted(self, connection_id: str) -> Admitted | None:
        """The connection and its escrow as read when ``connection_id`` was accepted
        (once; None when not remembered)."""
        key = normalize_id(connection_id, "connection ID")
        with self._admitted_lock:
            return self._admitted.pop(key, None)

    def _remember(self, admitted: Admitted) -> None:
        key = admitted.connection.id
        with self._admitted_lock:
            self._admitted[key] = admitted
            if len(self._admitted) > self.REMEMBERED:
                # never taken (the handshake failed after admission): drop the oldest
                del self._admitted[next(iter(self._admitted))]

    def _check(self, peer: PeerInfo) -> str | None:
        cid = peer.connection_id
        if cid is None:
            return "no connection ID: open a connection on the ledger first"
        if peer.port is not None and peer.port != self.port:
            return f"this server serves port {self.port}, not {peer.port}"
        # the connection, its escrow and the host in one read
        view = self._view(cid)
        if view is None:
            return f"unknown connection {cid}"
        tc, escrow, host = view.connection, view.escrow, view.host
        if tc.state != ConnectionState.OPEN:
            return f"connection {cid} is {tc.state.label}, not Open"
        if tc.client != peer.address:
            return f"connection {cid} belongs to another client"
        if tc.host != self.host_id:
            return f"connection {cid} is for another host"
        if tc.port != self.port:
            return f"connection {cid} is for port {tc.port}, not {self.port}"
        if escrow.balance < tc.sla.min_deposit:
            return (
                f"the escrow of connection {cid} holds {escrow.balance}, "
                f"below the minimum {tc.sla.min_deposit}"
            )
        if not self.ledger.permits(host, peer.address):
            return "the host's firewall denies this client"
        if tc.subscription is not None:
            # a connection opened with a subscription is free only while that lasts:
            # its SLA is all zeros, so once the subscription is over nothing pays for it
            over = self.ledger.subscription_over(tc.subscription, host)
            if over is not None:
                if self.withdraw_as is not None:
                    self._withdraw_sold(tc.subscription, host)
                return subscription_refusal(f"connection {cid}: {over}")
        self.limits = ConnectionLimits.of(host, self.port)
        if self.remember:
            self._remember(Admitted(tc, escrow))
        return None

    def _withdraw_sold(self, subscription_id: str, host: Host) -> None:
        """Withdraw the offer of ``subscription_id`` if it was sold with ``host``
        (:func:`~dtp.payments._sold_offers.withdraw_sold_offer`); a failure is logged,
        the refusal stands."""
        assert self.withdraw_as is not None
        try:
            withdraw_sold_offer(self.ledger, self.withdraw_as, subscription_id, host)
        except ChainError as exc:
            logger.warning(
                "could not withdraw the offer of subscription %s, sold with host %s: %s",
                subscription_id,
                host.id,
                exc,
            )

    def _view(self, cid: str) -> ConnectionView | None:
        """The connection's view; looked for again for up to :attr:`OPEN_GRACE` while
        there is no such connection (yet)."""
        return while_opening(
            lambda: self.ledger.connection_view(cid, self.host_id),
            self.OPEN_GRACE,
            getattr(self.ledger, "change_marker", None),
        )


_FIRST_LOOK_S = 0.0002
_MAX_LOOK_S = 0.02
# watching a change marker costs far less than a read: looked at sooner and more often
_FIRST_WATCH_S = 0.00005
_MAX_WATCH_S = 0.005
LOOK_SPREAD: Final = 4
"""A connection not found is read again no sooner than 1 / LOOK_SPREAD of the time
looked so far: anyone may name one that does not exist, and every 20 ms that cost ~110
reads (Sui RPC calls) over the grace; now 30 to 40 at most."""


def while_opening(
    read: Callable[[], _T | None], grace: float, changed: Callable[[], object] | None = None
) -> _T | None:
    """``read()`` of a connection a client named, again more and more rarely for up to
    ``grace`` seconds while it gives None. ``changed()``: a cheap token that differs once
    the ledger changed, so a read follows an open's landing closely. Never two reads
    closer than :data:`LOOK_SPREAD` allows; always one at the end of the grace."""
    marker = changed() if changed is not None else None
    found = read()
    if found is not None:
        return found
    start = now = time.monotonic()
    deadline = start + grace
    delay = _FIRST_LOOK_S if changed is None else _FIRST_WATCH_S
    last_read = now
    while True:
        left = deadline - now
        if left <= 0:
            return None
        looked = last_read - start
        earliest = last_read + looked / LOOK_SPREAD
        # min(max(delay, earliest - now), left), written out (a look or two a millisecond,
        # as a paid server waits for each client's open)
        wait = earliest - now
        if wait < delay:
            wait = delay
        time.sleep(left if wait > left else wait)
        now = time.monotonic()
        final = now >= deadline  # (the last look: whatever the schedule says)
        if changed is None:
            # (×1.5, not ×2: the open usually lands 0.5-2 ms in, and each doubling step
            # left up to half the wait unseen; 164 → 169 conn/s by host ID, interleaved)
            delay = delay * 1.5
            if delay > _MAX_LOOK_S:
                delay = _MAX_LOOK_S
            seen = None
        else:
            delay = delay * 1.25
            if delay > _MAX_WATCH_S:
                delay = _MAX_WATCH_S
            seen = changed()
            # a read with no change seen is a safeguard (a landing the marker missed):
            # as far apart as the time looked so far (at least _MAX_LOOK_S)
            apart = looked if looked > _MAX_LOOK_S else _MAX_LOOK_S
            if seen == marker and now - last_read < apart and not final:
                continue
        if now < earliest and not final:
            continue  # (the marker is kept: the change is read once the spread allows)
        marker = seen
        last_read = now
        found = read()
        if found is not None or final:
            return found
