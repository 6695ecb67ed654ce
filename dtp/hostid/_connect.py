"""Connecting by host ID, the client side: before any money moves, the Host object is
read and the ledger's own admission rules (docs/escrow.md §2, §5) are checked early — the
service exists, the firewall permits us, the deposit reaches the SLA minimum — and the
carrier is picked: the host's first TCP endpoint when it publishes one, otherwise the
ledger carrier (the IP-hiding mode, docs/ledger-carrier.md). Then the connection is
opened on the ledger (:func:`prepare_host_connection`), and half-closed there when the
connect fails (:func:`abandon_host_connection`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from dtp.errors import (
    DTPError,
    HandshakeError,
    InsufficientFunds,
    InvalidArgument,
    SubscriptionRefused,
    move_error,
)
from dtp.hostid._address import HostAddress
from dtp.hostid.ledger_carrier._bridge import LedgerCarrierOptions, ledger_config
from dtp.identity.keys import HostIdentity
from dtp.ledger._economics import lane_order
from dtp.ledger._objects import (
    ConnectionState,
    Host,
    OpenedConnection,
    Service,
    is_low_order_noise_key,
    normalize_id,
)
from dtp.payments._refunds import connection_ended
from dtp.payments.metering import MeteringConfig
from dtp.protocol.connection import ConnectionConfig, checked_noise_key, ledger_client_config
from dtp.transport.carriers._tcp import PendingTcp

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger, PendingOpen


__all__ = [
    "CarrierChoice",
    "LedgerTerms",
    "NoCarrierEndpoint",
    "OpenJournal",
    "PreparedConnection",
    "ResolvedService",
    "abandon_host_connection",
    "check_connect_options",
    "pinned_host_key",
    "prepare_connecting_early",
    "prepare_host_connection",
    "prepare_reconnection",
    "resolve_service",
    "tcp_endpoint",
    "tcp_endpoints",
]


class NoCarrierEndpoint(DTPError):
    """The host publishes no endpoint this client can reach over TCP, and the caller
    asked for the direct carrier (``carrier="tcp"``); the ledger carrier reaches it."""


OpenJournal = Callable[[str, "str | None"], None]
"""``on_open(cap_id, connection_id)`` of :func:`prepare_host_connection`: told of each
connection before its deposit can move (the ID None where not yet known), and again
with the ID once the open landed where it was not."""

CarrierChoice = Literal["auto", "tcp", "ledger"]
"""How to reach a host: ``"auto"`` (its TCP endpoint if it publishes one, else the
ledger carrier), ``"tcp"`` (direct only) or ``"ledger"`` (IP-hiding, through pipes)."""


@dataclass(frozen=True)
class ResolvedService:
    """A service found on the ledger, ready to be connected to."""

    host: Host
    service: Service
    endpoint: tuple[str, int] | None
    """The first TCP endpoint of the host; None when the ledger carrier is to be used."""
    alternates: tuple[tuple[str, int], ...] = ()
    """The host's other TCP endpoints, in published order: tried in turn when
    ``endpoint`` does not answer."""


def tcp_endpoints(host: Host) -> list[tuple[str, int]]:
    """The host's endpoints reachable over TCP, in published order.

    Accepted forms: ``tcp://host:port`` and a bare ``host:port`` (``[v6]:port`` for IPv6);
    other schemes and undecodable entries are skipped.
    """
    found: list[tuple[str, int]] = []
    for text in _endpoint_texts(host):
        endpoint = tcp_endpoint(text)
        if endpoint is not None:
            found.append(endpoint)
    return found


def _endpoint_texts(host: Host) -> list[str]:
    """The host's published endpoints as text, in order (undecodable ones left out)."""
    texts: list[str] = []
    for raw in host.endpoints:
        try:
            texts.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        except UnicodeDecodeError:
            continue
    return texts


# what a bare host[:port] looks like, whatever the port: a name or [v6], then : and no
# path (multiaddrs such as /ip4/1.2.3.4/udp/9000/quic, or relay.example.com/ledger, are
# not TCP endpoints however many dots they have)
_HOST_PORT_SHAPE = re.compile(r"(\[[^\]/\s]*\]|[A-Za-z0-9.-]+)(:[^/\s]*)?")


def _unusable_tcp_endpoints(host: Host) -> list[str]:
    """The host's published endpoints meant as TCP ones -- ``tcp://...``, or no scheme
    and an address first (an IP, a dotted name, ``localhost``, ``[v6]``) -- that do not
    parse as such (no port, a port past 65535). Others (``udp:...``, ``quic://``, a
    discovery record) are not meant for a stream carrier and are not judged."""
    broken: list[str] = []
    for text in _endpoint_texts(host):
        text = text.strip()
        lower = text.lower()
        if lower.startswith("tcp://"):
            meant = True
        elif "://" in text:
            meant = False
        elif not _HOST_PORT_SHAPE.fullmatch(text):
            meant = False  # a path, a multiaddr, prose: a record of some other kind
        else:
            head = text.split(":", 1)[0]
            meant = text.startswith("[") or "." in head or head.lower() == "localhost"
        if meant and tcp_endpoint(text) is None:
            broken.append(text)
    return broken


@functools.lru_cache(maxsize=256)  # (a client connects to the same hosts again and again)
def tcp_endpoint(text: str) -> tuple[str, int] | None:
    """One published endpoint as ``(host, port)`` when it is a TCP one a client can use
    (``tcp://host:port``, or a bare ``host:port``; ``[v6]:port`` for IPv6); None for
    another scheme, or what does not parse (no port, a port beyond 65535)."""
    text = text.strip()
    if "://" not in text:
        text = "tcp://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() != "tcp" or not parts.hostname or port is None:
        return None
    return parts.hostname, port


def resolve_service(
    ledger: Ledger,
    host_id: str,
    port: int,
    client: str,
    deposit: int,
    carrier: CarrierChoice = "auto",
    *,
    min_deposit: int | None = None,
    host: Host | None = None,
) -> ResolvedService:
    """Read the Host and check, in the ledger's order and without writing, what
    ``open_connection`` would refuse (ObjectNotFound, ServiceNotFound, FirewallDenied,
    InsufficientFunds), a Noise key no handshake can use (HandshakeError), and with
    ``carrier="tcp"`` a host with no TCP endpoint (:class:`NoCarrierEndpoint`). The
    result's ``endpoint`` is None for the ledger carrier. ``min_deposit`` overrides the
    SLA's (0 for a subscription); ``host``: the Host, when just read."""
    if carrier not in ("auto", "tcp", "ledger"):
        raise ValueError(f"carrier must be 'auto', 'tcp' or 'ledger', not {carrier!r}")
    if host is None:
        host = ledger.get_host(host_id)
    service = host.services.get(port)
    if service is None:
        raise move_error("host", "EServiceNotFound", f"port {port} of host {host.id}")
    if not ledger.permits(host, client):
        raise move_error("host", "EFirewallDenied", f"host {host.id} refuses {client}")
    # (the connection limits are the host's admission's, at the handshake: the ledger
    # counts no connections, docs/escrow.md §2)
    minimum = service.sla.min_deposit if min_deposit is None else min_deposit
    if deposit < minimum:
        raise move_error(
            "transport_control",
            "EInsufficientDeposit",
            f"deposit {deposit} < minimum {minimum} of port {port}",
        )
    if len(host.noise_static_key) != 32 or is_low_order_noise_key(host.noise_static_key):
        # published before the ledger refused such keys: the handshake would fail at its
        # first message, after the deposit (over the ledger carrier) went into escrow
        raise HandshakeError(
            f"host {host.id} publishes a Noise key no handshake can use "
            f"({host.noise_static_key.hex()}): it cannot be reached until it publishes "
            "another"
        )
    endpoints = [] if carrier == "ledger" else tcp_endpoints(host)
    if not endpoints and carrier == "auto":
        broken = _unusable_tcp_endpoints(host)
        if broken:
            # the host means to be reached over TCP: the ledger carrier, which it may
            # not serve, would only time out, the deposit in escrow until the timeout
            raise NoCarrierEndpoint(
                f"host {host.id} publishes {', '.join(map(repr, broken))}, not a "
                "usable tcp://host:port endpoint (a port up to 65535); to reach it "
                "over the ledger carrier anyway, pass carrier='ledger'"
            )
    if not endpoints and carrier == "tcp":
        raise NoCarrierEndpoint(
            f"host {host.id} publishes no TCP endpoint; reaching it needs the ledger "
            "carrier (carrier='auto' or 'ledger')"
        )
    balance = ledger.balance(client)
    if balance < deposit:
        raise InsufficientFunds(
            f"{client} holds {balance} MIST, less than the deposit {deposit}",
            name="InsufficientBalance",
            module="sui",
        )
    return ResolvedService(host, service, endpoints[0] if endpoints else None, tuple(endpoints[1:]))


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedConnection:
    """A connection opened on the ledger, ready for the carrier connect and handshake."""

    endpoint: tuple[str, int] | None
    """The host's TCP endpoint; None: connect over the ledger carrier."""
    config: ConnectionConfig
    """Client config: the host's Noise key (IK), the connection ID and the port (and,
    for the ledger carrier, acknowledgements and retransmission on)."""
    connection_id: str
    escrow_id: str
    server_address: str = ""
    """The host authority's Sui address (whose pipe the ledger carrier reads)."""
    opened: OpenedConnection | None = None
    """What the ledger reported of the opening (SLA and deposit, when it does)."""
    cap_id: str | None = None
    """The SpendingCap the connection was opened with."""
    pending_open: PendingOpen | None = None
    """With ``defer_open``: the signed open, to execute while the server works on the
    first handshake message (``connection_id`` and ``escrow_id`` are its)."""
    alternates: tuple[tuple[str, int], ...] = ()
    """The host's other TCP endpoints, tried in turn when ``endpoint`` does not answer
    (:func:`~dtp.transport.carriers._tcp.connect_any`)."""
    journaled: bool = False
    """Whether an ``on_open`` journal was told of it: its refund is the journal's
    keeper's (the daemon's book, a collector's), not the process collector's to take
    unasked (:func:`abandon_host_connection`)."""

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Every TCP endpoint to try, in order (empty: the ledger carrier)."""
        return () if self.endpoint is None else (self.endpoint, *self.alternates)

    @property
    def carrier(self) -> Literal["tcp", "ledger"]:
        """The carrier chosen: ``"tcp"`` or ``"ledger"``."""
        return "ledger" if self.endpoint is None else "tcp"


def pinned_host_key(server_key: bytes | None, expected_server_key: bytes | None) -> bytes | None:
    """The Noise key a connect by host ID was told the host has (``server_key`` or the
    pin ``expected_server_key``; ValueError when they differ), compared with the Host's
    before any money moves: ignored, a host whose key changed was paid unnoticed."""
    key = checked_noise_key("server_key", server_key)
    pin = checked_noise_key("expected_server_key", expected_server_key)
    if key is not None and pin is not None and key != pin:
        raise ValueError("server_key and expected_server_key differ")
    return key if key is not None else pin


def websocket_url(address: object) -> str | None:
    """``address`` when it is a WebSocket URL (``ws://…``, ``wss://…``, any case), which a
    connect reaches over the WebSocket carrier; else None. As both faces' connects
    (``dtp.socket.create_connection``, ``dtp.aio.open_connection``) tell one."""
    if isinstance(address, str) and address[:6].lower().startswith(("ws://", "wss://")):
        return address
    return None


@dataclass(frozen=True)
class LedgerTerms:
    """A connect's ledger options, as both faces' connects take them
    (``dtp.socket.create_connection``, ``dtp.aio.open_connection``): how a DTP address is
    paid for and carried; any of them given for another address is refused."""

    ledger: Ledger | None = None
    deposit: int | None = None
    cap_id: str | None = None
    carrier: CarrierChoice = "auto"
    ledger_options: LedgerCarrierOptions | None = None
    metering: MeteringConfig | None = None
    subscription: str | None = None
    sponsor_pool: str | None = None
    on_open: OpenJournal | None = None

    def refuse(self, websocket: bool) -> None:
        """ValueError naming the options given to a connect to an address that is not a
        DTP address (only a host ID, dtp://…, is paid on the ledger; ``websocket``: a
        WebSocket URL, else a carrier address); an empty ``cap_id`` is none."""
        address = "a WebSocket URL" if websocket else "a carrier address"
        given = [
            name
            for name, value in (
                ("ledger", self.ledger),
                ("deposit", self.deposit),
                ("cap_id", self.cap_id or None),
                ("ledger_options", self.ledger_options),
                ("subscription", self.subscription),
                ("sponsor_pool", self.sponsor_pool),
                ("metering", self.metering),
                ("on_open", self.on_open),
            )
            if value is not None
        ]
        if self.carrier not in ("auto", "tcp"):
            given.append(f"carrier={self.carrier!r}")
        if given:
            raise ValueError(
                f"{', '.join(given)}: the ledger's options need a DTP address (dtp://…), "
                f"not {address}"
            )

    def check(self) -> None:
        """:func:`check_connect_options` of these."""
        check_connect_options(self.metering, self.ledger_options)

    def prepare_early(
        self,
        ledger: Ledger,
        address: HostAddress,
        identity: HostIdentity,
        server_key: bytes | None,
        config: ConnectionConfig | None,
    ) -> tuple[PreparedConnection, PendingTcp | None]:
        """:func:`prepare_connecting_early` on these terms (``ledger``: theirs, checked
        present by the caller)."""
        return prepare_connecting_early(
            ledger,
            address,
            identity,
            deposit=self.deposit,
            cap_id=self.cap_id,
            server_key=server_key,
            config=config,
            carrier=self.carrier,
            subscription=self.subscription,
            sponsor_pool=self.sponsor_pool,
            on_open=self.on_open,
        )


def check_connect_options(metering: object, ledger_options: object) -> None:
    """TypeError for ``metering`` or ``ledger_options`` of another type, before the
    ledger is written (found later, the deposit would be left locked)."""
    if metering is not None and not isinstance(metering, MeteringConfig):
        raise TypeError(f"metering must be a MeteringConfig or None, got {type(metering).__name__}")
    if ledger_options is not None and not isinstance(ledger_options, LedgerCarrierOptions):
        raise TypeError(
            "ledger_options must be a LedgerCarrierOptions or None, "
            f"got {type(ledger_options).__name__}"
        )


def check_ledger_object(ledger: object) -> None:
    """TypeError for a ledger file's path given where its ledger goes (``ledger=
    "localnet.sqlite"``, or its bytes): else an AttributeError ('get_host') from the
    first read."""
    if isinstance(ledger, str | bytes | os.PathLike):
        # (LocalLedger takes a str or PathLike: a bytes path is decoded first)
        opened = "os.fsdecode(path)" if isinstance(ledger, bytes) else "path"
        raise TypeError(
            f"ledger must be a ledger object, not the {type(ledger).__name__} {ledger!r}: "
            f"LocalLedger({opened}) opens a ledger file, dtp.open_ledger(spec) any ledger"
        )


def prepare_connecting_early(
    ledger: Ledger, address: HostAddress, identity: HostIdentity, **options: Any
) -> tuple[PreparedConnection, PendingTcp | None]:
    """:func:`prepare_host_connection` with ``defer_open``, the TCP connect started as
    soon as the service is resolved, to overlap the ledger work: (the prepared
    connection, that pending connect or None), closed here if preparing fails."""
    early: list[PendingTcp] = []

    def connect_early(resolved: ResolvedService) -> None:
        if resolved.endpoint is not None:
            early.append(PendingTcp(resolved.endpoint))

    try:
        prepared = prepare_host_connection(
            ledger, address, identity, on_resolved=connect_early, defer_open=True, **options
        )
    except BaseException:
        for pending in early:
            pending.close()
        raise
    return prepared, (early[0] if early else None)


def prepare_host_connection(
    ledger: Ledger,
    address: HostAddress,
    identity: HostIdentity,
    *,
    deposit: int | None = None,
    cap_id: str | None = None,
    server_key: bytes | None = None,
    config: ConnectionConfig | None = None,
    carrier: CarrierChoice = "auto",
    subscription: str | None = None,
    sponsor_pool: str | None = None,
    on_resolved: Callable[[ResolvedService], None] | None = None,
    defer_open: bool = False,
    on_open: OpenJournal | None = None,
) -> PreparedConnection:
    """The ledger half of connecting by host ID, shared by dtp.socket and dtp.aio.

    Paying another way (docs/escrow.md §13-14): ``subscription`` opens unmetered with an
    all-zero SLA (``deposit`` defaults to 0); ``sponsor_pool``: a lane pledges its share
    of the deposit, reimbursed to us after settlement.

    Checks what the ledger would refuse before any money moves (:func:`resolve_service`,
    which picks the carrier) and that the keys given are the Host's, creates a
    SpendingCap (``max_per_epoch = deposit``) unless ``cap_id`` is given, opens the
    connection (``deposit`` defaults to the SLA's minimum) and returns the client config.
    Blocking. If the connect then fails, call :func:`abandon_host_connection`.
    ``on_resolved(service)`` runs before the ledger writes (to overlap a carrier connect).

    ``defer_open``: where the ledger can tell the ID before the open lands, a paid TCP
    open is only signed here; the caller executes ``pending_open`` while the server works
    on the first handshake message (:attr:`LedgerAdmission.OPEN_GRACE`).

    ``on_open(cap_id, connection_id)``: told of every connection before its deposit can
    move (docs/daemon.md), the ID None where not known yet (then called again once it
    landed, an error logged); when it raises first, nothing is opened.
    """
    # before any ledger read, with the errors the ledger gives the same mistakes (a
    # str identity would otherwise surface as an AttributeError deep in the resolution)
    if not isinstance(identity, HostIdentity):
        raise TypeError(
            f"identity must be a HostIdentity (the paying client's keys), "
            f"got {type(identity).__name__}"
        )
    check_ledger_object(ledger)
    if config is not None and not isinstance(config, ConnectionConfig):
        # else the client config made below finds it, after the spending cap is created
        # and (paying by subscription or sponsor pool) the deposit moved, with nothing
        # half-closed
        raise TypeError(f"config must be a ConnectionConfig or None, got {type(config).__name__}")
    # the keys the caller was told the host has: each must be the one it publishes (the
    # handshake runs IK to the published key, so a key not compared here goes unchecked)
    pins = [
        (
            "the server key given (server_key / expected_server_key)",
            checked_noise_key("server_key", server_key),
        )
    ]
    if config is not None:
        for name in ("server_static", "expected_server_static"):
            pins.append((f"the config's {name}", checked_noise_key(name, getattr(config, name))))
    if deposit is not None and (
        not isinstance(deposit, int) or isinstance(deposit, bool) or not 0 <= deposit < 2**64
    ):
        raise InvalidArgument(
            f"deposit must be an integer from 0 to 2**64-1 (MIST), got {deposit!r}"
        )
    if subscription is not None and sponsor_pool is not None:
        raise ValueError("pass either subscription or sponsor_pool, not both")
    if subscription is not None:
        _check_subscription(ledger, subscription, address, identity.sui_address)
        deposit = 0 if deposit is None else deposit
    pool = None
    if sponsor_pool is not None:
        pool = ledger.get_sponsor_pool(sponsor_pool)
        if normalize_id(pool.host, "host ID") != address.host_id or pool.port != address.port:
            raise ValueError(f"sponsor pool {sponsor_pool} is not for {address}")
    host = None
    if deposit is None:
        host = ledger.get_host(address.host_id)
        service = host.services.get(address.port)
        deposit = service.sla.min_deposit if service is not None else 0
    if pool is not None:
        # sponsor::open_connection's refusals past the host: found there, they came
        # after the spending cap was made (on Sui: gas for two transactions, a cap left)
        host = host if host is not None else ledger.get_host(address.host_id)
        if host.authority != pool.provider:
            raise move_error(
                "sponsor",
                "EProviderChanged",
                f"pool {pool.id} is {pool.provider}'s, and host {address.host_id} is "
                f"{host.authority}'s now: it sponsors no new connections",
            )
        pledge = pool.pledge_for(deposit)
        lanes = lane_order(pool.lanes, cap_id)
        if not any(ledger.get_sponsor_lane(lane).available >= pledge for lane in lanes):
            raise move_error(
                "sponsor",
                "ESponsorUnfunded",
                f"pool {pool.id} must pledge {pledge} MIST of the deposit {deposit}, and "
                f"none of its {len(lanes)} lanes has that much unpledged",
            )
    resolved = resolve_service(
        ledger,
        address.host_id,
        address.port,
        identity.sui_address,
        deposit,
        carrier,
        min_deposit=0 if subscription is not None else None,
        host=host,
    )
    host_key = resolved.host.noise_static_key
    for given, pinned in pins:
        if pinned is not None and pinned != host_key:
            raise ValueError(f"{given} differs from the Noise key host {address.host_id} publishes")
    if resolved.endpoint is None:
        # the ledger carrier's config, made now: a config fit for TCP may not be for a
        # lossy carrier (a stream_window of 0, records too small to carry a byte), and
        # found out below it failed after the deposit moved
        ledger_config(config or ConnectionConfig(identity=identity, is_client=True))
    if on_resolved is not None:
        on_resolved(resolved)
    if cap_id is None:
        cap_id = ledger.create_spending_cap(identity, max(deposit, 1))
    pending = None
    opened: OpenedConnection | None
    if (
        defer_open
        and resolved.endpoint is not None
        and subscription is None
        and sponsor_pool is None
    ):
        pending = ledger.prepare_open_connection(
            identity, address.host_id, address.port, cap_id, deposit
        )
    if on_open is not None:
        on_open(cap_id, None if pending is None else pending.connection_id)
    if subscription is not None:
        opened = ledger.open_subscribed_connection(
            identity, subscription, cap_id, deposit, host_id=address.host_id
        )
    elif sponsor_pool is not None:
        opened = ledger.open_sponsored_connection(
            identity, sponsor_pool, cap_id, deposit, host_id=address.host_id
        )
    else:
        opened = (
            None
            if pending is not None
            else ledger.open_connection(identity, address.host_id, address.port, cap_id, deposit)
        )
    if pending is not None:
        connection_id, escrow_id = pending.connection_id, pending.escrow_id
    else:
        assert opened is not None
        connection_id, escrow_id = opened.connection_id, opened.escrow_id
        if on_open is not None:
            try:
                on_open(cap_id, connection_id)
            except Exception:
                logger.exception("recording connection %s failed", connection_id)
    cfg = _client_config(config, identity, host_key, connection_id, address.port, resolved)
    return PreparedConnection(
        resolved.endpoint,
        cfg,
        connection_id,
        escrow_id,
        resolved.host.authority,
        opened,
        cap_id,
        pending,
        resolved.alternates,
        journaled=on_open is not None,
    )


def prepare_reconnection(
    ledger: Ledger,
    address: HostAddress,
    identity: HostIdentity,
    connection_id: str,
    *,
    config: ConnectionConfig | None = None,
    carrier: CarrierChoice = "auto",
) -> PreparedConnection:
    """The ledger half of connecting again on ``connection_id``, an Open connection of
    ours kept after a failed connect (docs/daemon.md): nothing is written; the Host is
    checked as :func:`resolve_service` does. NotAuthorized for another client's,
    InvalidArgument for another service's, ConnectionStateError once not Open. Blocking."""
    tc = ledger.get_connection(connection_id)
    if tc.client != identity.sui_address:
        raise move_error(
            "transport_control", "ENotParticipant", f"connection {tc.id} is {tc.client}'s"
        )
    if tc.host != address.host_id or tc.port != address.port:
        raise InvalidArgument(f"connection {tc.id} is to dtp://{tc.host}:{tc.port}, not {address}")
    if tc.settled or tc.state != ConnectionState.OPEN:
        raise move_error(
            "transport_control",
            "EConnectionClosed",
            f"connection {tc.id} is {'settled' if tc.settled else tc.state.label}",
        )
    resolved = resolve_service(
        ledger, address.host_id, address.port, identity.sui_address, 0, carrier, min_deposit=0
    )
    key = resolved.host.noise_static_key
    cfg = _client_config(config, identity, key, tc.id, address.port, resolved)
    return PreparedConnection(
        resolved.endpoint,
        cfg,
        tc.id,
        tc.escrow,
        resolved.host.authority,
        cap_id=tc.spending_cap,
        alternates=resolved.alternates,
        journaled=True,
    )


def _client_config(
    base: ConnectionConfig | None,
    identity: HostIdentity,
    host_key: bytes,
    connection_id: str,
    port: int,
    resolved: ResolvedService,
) -> ConnectionConfig:
    """The client's handshake config for a ledger connection (``base``, else the
    defaults): IK to the key the Host publishes, the connection named, the ledger
    carrier's settings where the host is reached through it."""
    cfg = ledger_client_config(base, identity, host_key, bytes.fromhex(connection_id[2:]), port)
    return ledger_config(cfg) if resolved.endpoint is None else cfg


def _check_subscription(
    ledger: Ledger, subscription_id: str, address: HostAddress, client: str
) -> None:
    """Early, typed refusals for a subscription that cannot open this connection: those of
    ``subscription::open_connection``, in its order (holder, host, withdrawn offer, the
    host's sale, expiry) and, past the holder and host, with the ledger's own errors; then
    the port."""
    from dtp.errors import WrongSubscription

    sub = ledger.get_subscription(subscription_id)
    offer = ledger.get_subscription_offer(sub.offer)

    def another_service() -> WrongSubscription:
        return WrongSubscription(
            f"subscription {subscription_id} is for another service than {address}",
            name="EWrongHost",
            module="subscription",
        )

    if sub.holder != client:
        raise WrongSubscription(
            f"subscription {subscription_id} belongs to {sub.holder}, not {client}",
            name="ENotHolder",
            module="subscription",
        )
    if normalize_id(offer.host, "host ID") != address.host_id:
        raise another_service()
    if offer.withdrawn:
        raise move_error(
            "subscription",
            "EOfferWithdrawn",
            f"offer {sub.offer} of subscription {subscription_id} (since epoch "
            f"{offer.withdrawn_epoch})",
        )
    authority = ledger.get_host(address.host_id).authority
    if authority != offer.provider:
        raise move_error(
            "subscription",
            "EProviderChanged",
            f"offer {sub.offer} of subscription {subscription_id} is {offer.provider}'s, and "
            f"host {address.host_id} is {authority}'s now: it opens no connections",
        )
    epoch = ledger.epoch()
    if not sub.is_live(epoch):
        raise move_error(
            "subscription",
            "ESubscriptionExpired",
            f"subscription {subscription_id} covers epochs {sub.start_epoch}.."
            f"{sub.expires_epoch - 1}; it is epoch {epoch}",
        )
    # Move checks no port (it opens on the offer's), so the ledger would open another
    # service of this host than the one asked for: refused here, after every check the
    # ledger makes, so that a call the ledger refuses gets the ledger's error.
    if offer.port != address.port:
        raise another_service()


def abandon_host_connection(
    ledger: Ledger,
    identity: HostIdentity,
    address: HostAddress,
    prepared: PreparedConnection,
    cause: BaseException,
) -> None:
    """Half-close a prepared connection after the connect failed, so the refund
    collector (:func:`dtp.payments._refunds.connection_ended`) or its ``on_open``
    keeper refunds it after the close timeout (docs/escrow.md §7); failures logged, the
    caller re-raises ``cause``. One refused as its subscription is over is ended at once
    (``subscription::end_connection``)."""
    half_closed = False
    try:
        if prepared.pending_open is not None and prepared.pending_open.opened is None:
            return
        if isinstance(cause, SubscriptionRefused):
            try:
                ledger.end_subscribed_connection(identity, prepared.connection_id)
                return
            except Exception as end_exc:
                logger.warning(
                    "could not end connection %s of a subscription that is over: %s",
                    prepared.connection_id,
                    end_exc,
                )
        try:
            ledger.close_connection(identity, prepared.connection_id)
            half_closed = True
        except Exception as close_exc:
            logger.warning(
                "could not close connection %s on the ledger after %r: %s",
                prepared.connection_id,
                cause,
                close_exc,
            )
    finally:
        connection_ended(
            ledger,
            identity,
            prepared.connection_id,
            half_closed=half_closed and not prepared.journaled,
        )
