"""The exposing side: one DTP listener for every service of the host; each admitted
connection's extra streams are tunnels to the service's TCP backends.

Admission per connection, in order: docs/daemon.md, "How it works", "Exposing" (the
ledger's part is :class:`dtp.hostid._admission.LedgerAdmission`).

:class:`ServiceHost` keeps the listener, the admission and the handler that hands each
connection to its part: its tunnels (:mod:`dtp.daemon._served_tunnels`) or UDP flow
(:mod:`dtp.daemon._udp_flows`), its settlement (:mod:`dtp.daemon._settlements`), the Host's
firewall read while it is served (:mod:`dtp.daemon._host_policy`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dtp.aio
from dtp.daemon._balancer import BackendPool
from dtp.daemon._config import ServiceConfig
from dtp.daemon._fees import ServerFees, Settled
from dtp.daemon._gas import GasWatch
from dtp.daemon._host_policy import HostPolicy
from dtp.daemon._logs import kv
from dtp.daemon._served import ServedConnection, service_row
from dtp.daemon._served_tunnels import ServedTunnels
from dtp.daemon._settlements import Settlements
from dtp.daemon._state import ServiceStats, StatusBook
from dtp.daemon._udp_flows import UdpFlows
from dtp.errors import DTPError
from dtp.hostid._admission import Admitted, ConnectionLimits, LedgerAdmission, PeerInfo
from dtp.hostid._served import ServedConnections
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.payments._ratelimit import RateLimiter
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio._server import DTPServer
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

if TYPE_CHECKING:
    import ssl as _ssl

__all__ = ["ServiceHost"]

logger = logging.getLogger("dtp.daemon._services")

SETTLE_TIMEOUT = 30.0
"""Seconds a stopping daemon gives its connections' claims and settlements on the
ledger, once their tunnels are closed."""

MAX_TUNNELS_PER_CONNECTION = 1024
"""Streams a forwarder may have open on one connection (the DTP default is 128); a
forwarder needing more opens another connection."""


def _permits(service: ServiceConfig, client: str) -> bool:
    """Whether the service's own ``allow``/``deny`` lists let ``client`` in."""
    return client not in service.deny and (not service.allow or client in service.allow)


class ServiceHost:
    """Serves a host's services through one DTP listener: admits each connection,
    then hands it to :attr:`tunnels` (a TCP service) or :attr:`udp_flows` (a UDP one),
    which end it through :attr:`settlements`; :attr:`policy` keeps the Host's firewall
    applied meanwhile."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        book: StatusBook,
        *,
        open_grace: float | None = None,
        gas: GasWatch | None = None,
    ) -> None:
        self.ledger = ledger
        self.gas = gas
        """The daemon's gas watch: a settlement failing for want of gas is its to report
        (once), not each connection's; funded again, it has the waiting ones tried at
        once (the Host reads that end an outage never failed meanwhile)."""
        self.identity = identity
        self.book = book
        self.open_grace = open_grace
        """Seconds the admission looks for a connection a client names before refusing
        it (``[daemon] open_grace``; None: :attr:`LedgerAdmission.OPEN_GRACE`)."""
        self._views: dict[str, Admitted] = {}
        """What the admission read of each connection admitted, until its handler takes
        it: its terms come from there, not from a second read (on Sui, round trips)."""
        self.host_id = ""
        """Set once the host is on the ledger (the endpoint it publishes is ours)."""
        self._fees: ServerFees | None = None
        self.services: dict[int, ServiceConfig] = {}
        """The services as configured now (:meth:`configure` updates it in place: the
        parts look services up in it)."""
        self.pools: dict[int, BackendPool] = {}
        self.server: DTPServer | None = None
        self.conns: dict[str, ServedConnection] = {}
        self._handlers: set[asyncio.Future[Any]] = set()
        """Connection handlers still running (settlements running on their own are
        :attr:`Settlements.running`)."""
        self._served = ServedConnections()
        """The ledger connections admitted: each counted against the Host's connection
        limits until its DTP connection ends (:meth:`ServedConnections.ended`, before its
        settlement: three transactions on Sui, seconds, minutes against a stalled node),
        its ID reserved until its handler ended, settlement included -- one DTP
        connection per ledger connection. dtp.aio keeps this for a
        LedgerAdmission hook only, and ours is not one: every DTP connection a client
        opened on one ledger connection was served (past the service's
        ``max_connections``), each under the same key of :attr:`conns`, and the first to
        end settled the ledger connection under the others."""
        self._unclaimed: set[str] = set()
        """Of those, the ones admitted whose handler has not started (yet)."""
        self._draining = False
        """Set by :meth:`drain`: a connection registered from then on is closed (and
        settled) at once."""
        self.admitting = 0
        """Admissions under way now (each a handshake waiting on the ledger's word)."""
        self.no_service = 0
        """Connections refused because they named no configured service (they count
        under no service's row)."""
        self.limiter = RateLimiter()
        fees = self._server_fees
        self.settlements = Settlements(book, self.services, self.conns, self._served, fees, gas)
        """Every settlement, counted and retried."""
        self.policy = HostPolicy(ledger, self.limiter, self.conns, book, self.settlements.retry_now)
        """The Host's firewall, re-read while serving."""
        self.tunnels = ServedTunnels(
            book, fees, self.settlements, self._end, self.services, self.pools
        )
        """The TCP services' connections: their tunnels and receipts."""
        self.udp_flows = UdpFlows(book, fees, self.settlements, self._end)
        """The UDP services' connections: one flow each."""

    def _server_fees(self) -> ServerFees:
        """:attr:`fees`, for the parts (set after they are made)."""
        return self.fees

    @property
    def fees(self) -> ServerFees:
        assert self._fees is not None, "ServiceHost.fees is set before clients can connect"
        return self._fees

    @fees.setter
    def fees(self, fees: ServerFees) -> None:
        self._fees = fees

    @property
    def fees_ready(self) -> bool:
        """Whether :attr:`fees` is set (the host is on the ledger)."""
        return self._fees is not None

    # -- configuration -----------------------------------------------------------------

    def stats(self, service: ServiceConfig) -> ServiceStats:
        """``service``'s row in the status."""
        return service_row(self.book, service)

    async def configure(self, services: tuple[ServiceConfig, ...]) -> None:
        """Adopt a (new) service list: pools are rebuilt only for changed backends (or a new name);
        open connections keep the terms they were admitted with, and those of a client
        its service's ``allow``/``deny`` lists no longer permit are closed."""
        wanted = {s.port: s for s in services}
        for port in list(self.pools):
            old = self.services[port]
            new = wanted.get(port)
            # (the protocol too: a service turned UDP would keep its TCP health checks,
            # connecting to its UDP backends every health_interval, for good; and the
            # name: a service renamed would keep a pool that logs under the old name and
            # counts its backend errors into the old name's status row)
            if new is None or (
                new.name,
                new.protocol,
                new.backends,
                new.health_interval,
                new.connect_timeout,
            ) != (old.name, old.protocol, old.backends, old.health_interval, old.connect_timeout):
                await self.pools.pop(port).stop()
                if new is None or new.protocol == "udp" or new.name != old.name:
                    # a removed service keeps its counters in the status, not its health:
                    # "healthy 1" for a service no longer served (or no longer checked)
                    self.book.service(old.name).healthy_backends = 0
        for port, service in wanted.items():
            if service.protocol == "udp":
                self.stats(service)  # a row in the status from the start
                continue  # no health checks: UDP backends do not answer connects
            if port not in self.pools:
                stats = self.stats(service)

                def failed(_: object, stats: ServiceStats = stats) -> None:
                    stats.backend_errors += 1
                    self.book.touch()

                pool = BackendPool(
                    service.name,
                    service.backends,
                    service.health_interval,
                    service.connect_timeout,
                    failed,
                )
                self.pools[port] = pool
                pool.start()
        # (in place: the parts hold this table)
        self.services.clear()
        self.services.update(wanted)
        # (checked at admission only: a client a reload denied kept its open connections,
        # and opened tunnels on them, for good)
        for conn in list(self.conns.values()):
            self._close_if_denied(conn)

    def _close_if_denied(self, conn: ServedConnection) -> None:
        """Close ``conn`` when its service's ``allow``/``deny`` lists, as configured now,
        no longer permit its client (as a deny of the host's firewall closes it: its
        handler's end settles it)."""
        service = self.services.get(conn.service.port)
        if service is None or _permits(service, conn.client):
            return
        self.stats(service).deny("firewall")
        logger.warning(
            "the firewall of a service now denies a client",
            extra=kv(service=service.name, client=conn.client, connection=conn.connection_id),
        )
        conn.writer.abort(f"the firewall of service {service.name} now denies this client")

    async def start(self, host: str, port: int, *, idle_timeout: float = 60.0) -> tuple[str, int]:
        """Listen for DTP connections; returns the bound address. ``idle_timeout``: a
        connection from which nothing arrives for this long (keepalives included) is
        given up (``[daemon] connection_idle_timeout``)."""
        config = ConnectionConfig(
            identity=self.identity,
            is_client=False,
            max_streams=MAX_TUNNELS_PER_CONNECTION,
            idle_timeout=idle_timeout,
        )
        self.server = await dtp.aio.start_server(
            self._handle,
            host,
            port,
            identity=self.identity,
            admit=self._admit,
            config=config,
            backlog=512,
        )
        return self.server.address

    async def listen_websocket(
        self,
        host: str,
        port: int,
        origins: tuple[str, ...] = (),
        *,
        ssl: _ssl.SSLContext | None = None,
    ) -> tuple[str, int]:
        """Also serve over the WebSocket carrier on ``host:port`` (``[daemon]
        websocket_listen``), the pages of ``origins`` admitted (``websocket_origins``);
        the same admission, limits and services as the TCP listener's; ``wss://`` with
        ``ssl`` (``websocket_cert``). Returns the bound address."""
        assert self.server is not None, "start() first"
        return await self.server.listen_websocket(
            host, port, origins=origins or None, backlog=512, ssl=ssl
        )

    # -- admission ---------------------------------------------------------------------

    async def _admit(self, peer: PeerInfo) -> str | None:
        # (counted while under way: the handshakes that wait on the ledger, shown by
        # the metrics as dtp_admissions_in_progress)
        self.admitting += 1
        try:
            return await self._admission(peer)
        finally:
            self.admitting -= 1

    async def _admission(self, peer: PeerInfo) -> str | None:
        if not self.host_id:
            return "the daemon is still starting"
        service = self.services.get(peer.port) if peer.port is not None else None
        if service is None:
            why = f"no service on port {peer.port}"
            if peer.port is not None and peer.connection_id is not None:
                # a client may have opened a ledger connection to a service a reload
                # removed (before the removal landed, or published by another tool):
                # refused here, its deposit would stay in escrow for good. One the ledger
                # admits (this client's, Open, to this host and port) is settled now
                admission = LedgerAdmission(
                    self.ledger,
                    self.host_id,
                    peer.port,
                    open_grace=self.open_grace,
                    withdraw_as=self.identity,
                )
                verdict = await asyncio.to_thread(admission, peer)
                # (not one still served, under the service as it was: a second DTP
                # connection on it settled the ledger connection under the first)
                if verdict is None and peer.connection_id not in self._served:
                    self.settlements.settle_refused(peer.connection_id)
            self.no_service += 1
            logger.info(
                "refused: no such service",
                extra=kv(client=peer.address, port=peer.port, reason=why),
            )
            return why
        admission = LedgerAdmission(
            self.ledger,
            self.host_id,
            service.port,
            remember=True,
            open_grace=self.open_grace,
            withdraw_as=self.identity,
        )
        reason = await asyncio.to_thread(admission, peer)
        kind = "ledger"  # (what the denial counts under: state.DENIAL_REASONS)
        if reason is None and peer.connection_id in self.settlements.settling:
            # (a retry of its failed settlement, in flight: served, it would be closed
            # on the ledger under its tunnels)
            reason, kind = "the connection is being settled", "settling"
        if reason is None:
            assert peer.connection_id is not None
            # first: a second DTP connection on a ledger connection served is refused as
            # dtp.aio refuses it (not settled: that is its first connection's end); then
            # the Host's connection limits, which the ledger does not count: ours,
            # against the connections we serve now (docs/escrow.md §2)
            served = peer.connection_id in self._served
            reason = self._reserve(peer.connection_id, peer.address, admission.limits)
            kind = "duplicate" if served else "limit"
            if reason is not None and not served:
                # a valid, funded connection beyond a limit: settled now, as one the
                # service's firewall refuses below
                self.settlements.settle_refused(peer.connection_id, service)
            admitted = admission.take_admitted(peer.connection_id)
            if reason is None and admitted is not None:
                self._views[peer.connection_id] = admitted
        if reason is None and not _permits(service, peer.address):
            reason = f"the firewall of service {service.name} denies {peer.address}"
            kind = "firewall"
            assert peer.connection_id is not None
            self._release_unclaimed(peer.connection_id)
            # a valid, funded connection we refuse: close and settle it now, so the
            # client's deposit comes back at once instead of after the close timeout
            self.settlements.settle_refused(peer.connection_id, service)
        if reason is not None:
            self.stats(service).deny(kind)
            logger.warning(
                "denied",
                extra=kv(service=service.name, client=peer.address, reason=reason),
            )
        return reason

    def _reserve(
        self, connection_id: str, client: str, limits: ConnectionLimits | None
    ) -> str | None:
        """Take ``connection_id`` for the DTP connection being admitted (None), or the
        refusal when a DTP connection on it is served already, or when the Host's
        ``limits`` leave ``client`` no room. Called after the last await of the
        admission: dtp.aio runs the connection's handler, which claims the ID
        (:meth:`_handle`), in the same step as the verdict; an ID still unclaimed at the
        loop's next turn is one whose handshake failed after its admission (the client
        gave up meanwhile), and is given back then."""
        refusal = self._served.reserve(connection_id, client, limits)
        if refusal is None:
            self._unclaimed.add(connection_id)
            asyncio.get_running_loop().call_soon(self._release_unclaimed, connection_id)
        return refusal

    def _release_unclaimed(self, connection_id: str) -> None:
        if connection_id in self._unclaimed:
            self._unclaimed.discard(connection_id)
            self._views.pop(connection_id, None)
            self._served.release(connection_id)

    # -- connections ---------------------------------------------------------------------

    async def _handle(self, reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
        connection_id = writer.peer_connection_id
        port = writer.peer_port
        service = self.services.get(port) if port is not None else None
        if connection_id is None:  # (the ledger admits none without one)
            writer.abort("no ledger connection")
            return
        task = asyncio.current_task()
        assert task is not None
        # the admission's reservation of the ledger connection: this handler's until it
        # ended, its settlement included
        self._unclaimed.discard(connection_id)
        admitted = self._views.pop(connection_id, None)
        task.add_done_callback(lambda _: self._served.release(connection_id))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        if service is None:
            # removed by a reload since its admission: refunded now, as one refused at
            # admission is (else its deposit stays in escrow until the close timeout)
            writer.abort("service removed")
            self._served.ended(connection_id)
            await self.settlements.settle(connection_id)
            return
        client: str = writer.get_extra_info("peer_address")
        try:
            terms = await self.fees.terms(connection_id, admitted, served=True)
        except DTPError as exc:
            writer.abort(f"cannot read the connection: {exc}")
            self._served.ended(connection_id)
            # (settled all the same: else the ledger connection stays Open, the deposit
            # locked until the client's own timeout)
            await self.settlements.settle(connection_id, service=service)
            return
        conn = ServedConnection(connection_id, service, terms, client, writer)
        await self.policy.watch(self.host_id)
        conn.buckets = self.limiter.acquire(client, time.monotonic())
        self.conns[connection_id] = conn
        if self._draining:
            # it read its terms while the drain closed the connections: closed now, as
            # they were, so that no connection is served through the stop (its handler
            # waited on for SETTLE_TIMEOUT, the receipt store closed under it)
            writer.close()
        else:
            self._close_if_denied(conn)  # (a reload meanwhile)
        stats = self.stats(service)
        stats.connections += 1
        logger.info(
            "connection open",
            extra=kv(service=service.name, client=client, connection=connection_id),
        )
        if service.protocol == "udp":
            await self.udp_flows.serve(conn, reader)
        else:
            await self.tunnels.serve(conn, reader)

    async def _end(self, conn: ServedConnection) -> Settled:
        """End a served connection whose tunnels (or flow) are done: forget it, give
        back its client's rate-limit buckets, close it, and settle it."""
        self.conns.pop(conn.connection_id, None)
        self.limiter.release(conn.client)
        conn.writer.close()
        # ended: its limit slot is free for the client's next connection while the
        # settlement runs (docs/escrow.md §2: live connections are counted)
        self._served.ended(conn.connection_id)
        service = conn.service
        settled = await self.settlements.settle_served(conn, service, self.stats(service))
        self.settlements.count_held()
        return settled

    # -- shutdown ------------------------------------------------------------------------

    def stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()

    @property
    def active_tunnels(self) -> int:
        """Open TCP tunnels and UDP flows (a UDP flow is its connection)."""
        return sum(len(c.tunnels) + (c.finish is not None) for c in self.conns.values())

    async def drain(self, timeout: float) -> None:
        """Stop listening, wait up to ``timeout`` for tunnels to end, then close every
        connection (claiming and settling each). UDP flows, which never end by
        themselves but by idling, are asked to finish: each reports its final usage
        and ends once the client's receipt covers it (within the same ``timeout``);
        closed at once, as they were, the usage since their last report went unbilled."""
        self.stop_listening()
        self._draining = True
        await self.settlements.stop()
        for conn in list(self.conns.values()):
            if conn.finish is not None:
                conn.finish.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.active_tunnels and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.conns.values()):
            conn.writer.close()
            # the grace period is over: a tunnel still open (a backend that stopped
            # reading, a client that never ends) is cut, or its connection's handler
            # would wait on it and never reach the settlement below
            for task in list(conn.tunnels):
                task.cancel()
        # the ledger's claims and settlements take what they take: the process ending
        # under them would leave the client's deposit in escrow. Those that start
        # meanwhile too (a connection that read its terms as the drain began, settling
        # at once; a refused one's refund)
        deadline = loop.time() + SETTLE_TIMEOUT
        while (running := self._handlers | self.settlements.running) and loop.time() < deadline:
            await asyncio.wait(running, timeout=deadline - loop.time())
        # every connection has ended: the ends waiting to be settled together are, if
        # their batch pays for itself, else left to their clients
        await self.settlements.flush_batch(final=True)
        self.settlements.left_unsettled()
        for pool in list(self.pools.values()):
            await pool.stop()
        self.pools.clear()
        await self.policy.stop()

    async def refresh_policy(self) -> None:
        """Apply the Host's firewall as on the ledger now (:meth:`HostPolicy.refresh`)."""
        await self.policy.refresh(self.host_id)

    async def claim_leftovers(self, stopped: Callable[[], bool]) -> list[tuple[str, Settled]]:
        """Claim and settle what an earlier run left in the receipt store (as every
        settlement: counted, tried again when it fails); see
        :meth:`ServerFees.claim_leftovers`."""
        return await self.fees.claim_leftovers(stopped, self.settlements.settle)
