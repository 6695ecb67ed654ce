"""The exposing side: one DTP listener for every service of the host; each admitted
connection's extra streams are tunnels to the service's TCP backends.

Admission per connection: the DTP port the client named must be a configured service,
the service's own allow/deny lists must permit the client, then
:class:`dtp.hostid.admission.LedgerAdmission` (Open connection of this client to this host and
port, funded escrow, host firewall), and no other DTP connection may be served on that
ledger connection. Tunnels of a paid service are refused or cut when
the client's receipts fall more than ``unpaid_slack`` bytes behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dtp.aio
from dtp.daemon._tasks import cancel_and_wait, end_for_cleanup
from dtp.daemon.balancer import BackendPool
from dtp.daemon.config import ServiceConfig
from dtp.daemon.fees import RECEIPT_SIZE, ConnectionTerms, ServerFees, Settled
from dtp.daemon.gas import GasWatch
from dtp.daemon.state import ServiceStats, StatusBook
from dtp.daemon.tunnel import STATUS_OK, TcpLeg, refusal, splice_leg
from dtp.errors import ChainError, DTPError, InvalidReceipt, TunnelError
from dtp.hostid.admission import Admitted, ConnectionLimits, LedgerAdmission, PeerInfo
from dtp.hostid.served import ServedConnections
from dtp.hostid.udp import UdpStats
from dtp.hostid.udp.asyncio import relay_udp_async
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.ledger.objects import Firewall
from dtp.ledger.receipt import Receipt
from dtp.payments.gate import ended_on_ledger, ledger_checks_due
from dtp.payments.ratelimit import ClientBuckets, RateLimiter
from dtp.protocol.connection import ConnectionConfig

__all__ = ["ServiceHost"]

from dtp.daemon.logs import kv, log_failure
from dtp.transport.asyncio.server import DTPServer
from dtp.transport.asyncio.streams import DTPStreamReader, DTPStreamWriter

logger = logging.getLogger("dtp.daemon.services")

_UDP_ROW = {
    "bytes_in": "bytes_in",
    "bytes_out": "bytes_out",
    "dropped_unpaid": "denials",
    "dropped_rate_limited": "rate_limited",
}
"""A UDP relay's counters (:class:`dtp.hostid.udp.UdpStats`) and the service status columns
they add to."""

POLICY_REFRESH = 2.0
"""Seconds between reads of the Host's firewall (rate limits, denials) while serving."""

LEDGER_CHECK = 30.0
"""Seconds between reads of each open connection's state on the ledger (at the policy
refreshes): one its client half-closed there while still served is closed and settled
at once. Claims come when a connection ends; once ``HALF_CLOSE_TIMEOUT_MS`` (10 min)
had passed since that half-close, the client could settle first and take the whole
escrow back, the usage served meanwhile unpaid (dtp.hostid.paid's ``ledger_check_interval``)."""

SETTLE_TIMEOUT = 30.0
"""Seconds a stopping daemon gives its connections' claims and settlements on the
ledger, once their tunnels are closed."""

SETTLE_RETRY = 30.0
"""Seconds after a failed settlement (the ledger away, a refusal) before it is tried
again, doubled after each failure up to :data:`SETTLE_RETRY_MAX`
(:func:`next_settle_retry`); tried at once when the Host can be read again after an
outage, or the daemon's gas is funded again. Left for the next start, it could come
too late: ``HALF_CLOSE_TIMEOUT_MS`` (10 min) after a half-close the client may settle
alone and take its whole deposit back, the receipted fee lost."""

SETTLE_RETRY_MAX = 60.0
"""The longest wait between two tries of a settlement: whenever the client's
half-close timeout ends, the last try before it came at most this long before (with 4
minutes, the tries after a failure at a half-close came at 30, 90, 210, 450 and 690 s:
a ledger back at 460 s waited past the 600 s at which the client could settle alone,
tests/daemon/test_settlement_retry_deadline.py)."""


def next_settle_retry(delay: float) -> float:
    """Seconds before the next try of a settlement that failed again, ``delay`` the
    wait before this try: twice that, at most :data:`SETTLE_RETRY_MAX`."""
    return min(2 * delay, SETTLE_RETRY_MAX)


UDP_TALLY = 0.5
"""Seconds between copies of a UDP flow's counters into its service's status row (the
status file is written at most twice a second anyway)."""

UNPAID_WAIT = 0.005
"""Seconds a tunnel holds its reading before it looks again while its connection's
receipts are more than ``unpaid_slack`` bytes behind its usage."""

UNPAID_REQUESTS = 16
"""Tunnels (requests) of a connection that may be ahead of its receipts before new ones
are held like bytes past ``unpaid_slack`` (a forwarder signs for each as it opens it)."""

UNPAID_PAUSE = 10.0
"""Seconds a connection's tunnels wait, held, for its receipts to come back within
``unpaid_slack`` before they are cut (dtp.hostid.paid's ``pause_timeout``, the same
default)."""

MAX_TUNNELS_PER_CONNECTION = 1024
"""Streams a forwarder may have open on one connection (the DTP default is 128); a
forwarder needing more opens another connection."""


@dataclass(eq=False)
class _Conn:
    """One admitted DTP connection."""

    connection_id: str
    service: ServiceConfig
    terms: ConnectionTerms
    client: str
    writer: DTPStreamWriter
    bytes: int = 0
    paid_bytes: int = 0
    requests: int = 0
    """Tunnels opened (each one request)."""
    paid_requests: int = 0
    """The requests the latest receipt kept covers."""
    unpaid_since: float | None = None
    """When the usage last went more than ``unpaid_slack`` past the receipts (None:
    within it)."""
    tunnels: set[asyncio.Task[None]] = field(default_factory=set)
    buckets: ClientBuckets | None = None
    """The client's rate-limit buckets (shared by its connections)."""
    finish: asyncio.Event | None = None
    """A UDP flow's: set at drain, the relay reports its final usage and ends once a
    receipt covers it."""
    ledger_check_due: float = field(default_factory=lambda: time.monotonic() + LEDGER_CHECK)
    """When (monotonic) the connection's state on the ledger is read next."""
    earned: int = 0
    """The receipt total counted in its service's ``fees_earned``: its receipts as they
    are kept, or the one its settlement claimed before its write landed (see
    :meth:`ServiceHost._earn`)."""
    accepted: int = 0
    """The total of the newest receipt accepted (checked; stored, or on its way)."""


@dataclass
class _Retry:
    """A connection whose settlement failed, to be tried again."""

    escrow_id: str | None
    service: ServiceConfig | None
    """The service its outcome is counted under (None: found by its port)."""
    delay: float
    """Seconds between the last failure and the next try."""
    due: float
    """When (the loop's clock) it is tried next."""
    served: bool = False
    """Whether its receipts were earned in this run (see :meth:`ServiceHost._settle`)."""


def _permits(service: ServiceConfig, client: str) -> bool:
    """Whether the service's own ``allow``/``deny`` lists let ``client`` in."""
    return client not in service.deny and (not service.allow or client in service.allow)


class ServiceHost:
    """Serves a host's services through one DTP listener."""

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
        if gas is not None:
            gas.on_funded(self._retry_now)
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
        self.pools: dict[int, BackendPool] = {}
        self.server: DTPServer | None = None
        self.conns: dict[str, _Conn] = {}
        self._udp_turns: dict[int, int] = {}
        """Round robin over each UDP service's backends, per port: one counter shared
        by all services sent flows alternating between two of them to the same
        backend of each, every time."""
        self._handlers: set[asyncio.Future[Any]] = set()
        """Connection handlers and ledger settlements still running."""
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
        self.limiter = RateLimiter()
        self._firewall: Firewall | None = None  # the Host's, as last read
        self._ledger_away: str | None = None
        """Why the last read of the Host failed (the ledger away: a node down or rate
        limiting), until one succeeds again; said once, not at every refresh."""
        self._policy_task: asyncio.Task[None] | None = None
        self._held_names: set[str] = set()
        """Services whose status row counts receipts held (see :meth:`_count_held`)."""
        self._settling: dict[str, asyncio.Future[None]] = {}
        """Connections being settled (:meth:`_settle`), each until its settlement ended:
        one settlement of a connection at a time."""
        self._retries: dict[str, _Retry] = {}
        """Connections whose settlement failed, tried again by :meth:`_retry_loop`."""
        self._retry_task: asyncio.Task[None] | None = None
        self._retry_wake = asyncio.Event()

    @property
    def fees(self) -> ServerFees:
        assert self._fees is not None, "ServiceHost.fees is set before clients can connect"
        return self._fees

    @fees.setter
    def fees(self, fees: ServerFees) -> None:
        self._fees = fees

    # -- configuration -----------------------------------------------------------------

    def stats(self, service: ServiceConfig) -> ServiceStats:
        row = self.book.service(service.name)
        row.port = service.port
        return row

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
        self.services = wanted
        # (checked at admission only: a client a reload denied kept its open connections,
        # and opened tunnels on them, for good)
        for conn in list(self.conns.values()):
            self._close_if_denied(conn)

    def _close_if_denied(self, conn: _Conn) -> None:
        """Close ``conn`` when its service's ``allow``/``deny`` lists, as configured now,
        no longer permit its client (as a deny of the host's firewall closes it: its
        handler's end settles it)."""
        service = self.services.get(conn.service.port)
        if service is None or _permits(service, conn.client):
            return
        self.stats(service).denials += 1
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

    # -- admission ---------------------------------------------------------------------

    async def _admit(self, peer: PeerInfo) -> str | None:
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
                    self.ledger, self.host_id, peer.port, open_grace=self.open_grace
                )
                verdict = await asyncio.to_thread(admission, peer)
                # (not one still served, under the service as it was: a second DTP
                # connection on it settled the ledger connection under the first)
                if verdict is None and peer.connection_id not in self._served:
                    self._settle_refused(peer.connection_id)
            logger.info(
                "refused: no such service",
                extra=kv(client=peer.address, port=peer.port, reason=why),
            )
            return why
        admission = LedgerAdmission(
            self.ledger, self.host_id, service.port, remember=True, open_grace=self.open_grace
        )
        reason = await asyncio.to_thread(admission, peer)
        if reason is None and peer.connection_id in self._settling:
            # (a retry of its failed settlement, in flight: served, it would be closed
            # on the ledger under its tunnels)
            reason = "the connection is being settled"
        if reason is None:
            assert peer.connection_id is not None
            # first: a second DTP connection on a ledger connection served is refused as
            # dtp.aio refuses it (not settled: that is its first connection's end); then
            # the Host's connection limits, which the ledger does not count: ours,
            # against the connections we serve now (docs/escrow.md §2)
            served = peer.connection_id in self._served
            reason = self._reserve(peer.connection_id, peer.address, admission.limits)
            if reason is not None and not served:
                # a valid, funded connection beyond a limit: settled now, as one the
                # service's firewall refuses below
                self._settle_refused(peer.connection_id, service)
            admitted = admission.take_admitted(peer.connection_id)
            if reason is None and admitted is not None:
                self._views[peer.connection_id] = admitted
        if reason is None and not _permits(service, peer.address):
            reason = f"the firewall of service {service.name} denies {peer.address}"
            assert peer.connection_id is not None
            self._release_unclaimed(peer.connection_id)
            # a valid, funded connection we refuse: close and settle it now, so the
            # client's deposit comes back at once instead of after the close timeout
            self._settle_refused(peer.connection_id, service)
        if reason is not None:
            self.stats(service).denials += 1
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

    def _settle_refused(self, connection_id: str, service: ServiceConfig | None = None) -> None:
        """Close and settle (refund) a ledger connection refused at admission (a receipt
        an earlier run left of it is claimed, and counted, on the way)."""
        task = asyncio.ensure_future(self._settle(connection_id, service=service))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # -- settlements ---------------------------------------------------------------------

    async def _settle(
        self,
        connection_id: str,
        escrow_id: str | None = None,
        service: ServiceConfig | None = None,
        *,
        retry: bool = False,
        served: bool = False,
    ) -> Settled:
        """Every settlement of the daemon goes through here: it waits for one of the
        same connection under way, settles (:meth:`ServerFees.settle`), counts what it
        claimed and refunded in the status once -- under ``service``, or the service
        of the connection's port -- and has one that failed tried again later
        (:meth:`_retry_loop`). Counted by each caller, the refused connections', the
        cut ones' and the restart's claims went uncounted. ``served``: the connection
        was served in this run, its receipts counted as earned as they were kept (its
        claim does not raise ``fees_earned``: see :meth:`_count_settled`).

        A ``retry`` finds the connection served again (an admission that took its ID
        after the retry was scheduled, before this first step: it found nothing being
        settled) and leaves it to that connection's own settlement: not settled, not
        counted, tried again later (:meth:`_retry_loop` pushed it back). Settled, the
        ledger connection was closed under the client being served."""
        while (running := self._settling.get(connection_id)) is not None:
            await asyncio.wait({running})
        if retry and connection_id in self._served:
            return Settled(0, 0)
        ended = asyncio.get_running_loop().create_future()
        self._settling[connection_id] = ended
        try:
            settled = await self.fees.settle(connection_id, escrow_id, quiet=retry)
        finally:
            del self._settling[connection_id]
            ended.set_result(None)
        self._count_settled(connection_id, settled, service, served)
        self._follow_up(connection_id, settled, escrow_id, service, served)
        return settled

    def _count_settled(
        self,
        connection_id: str,
        settled: Settled,
        service: ServiceConfig | None,
        served: bool = False,
    ) -> None:
        """Add a settlement's claim and refund to its service's status row (and, for a
        connection not ``served`` in this run, raise its ``fees_earned`` to its
        ``fees_claimed``)."""
        if not (settled.claimed or settled.refunded):
            return
        row = self._settled_row(service, settled.port)
        if row is None:  # (a claim or a refund read the connection: not expected)
            logger.warning(
                "settlement not counted: its service is unknown",
                extra=kv(
                    connection=connection_id, claimed=settled.claimed, refunded=settled.refunded
                ),
            )
            return
        row.fees_claimed += settled.claimed
        row.refunded += settled.refunded
        if not served:
            # a receipt of an earlier run, stored just before it ended, may not have
            # reached the saved status: what was claimed was earned. Not for one served
            # here: its receipts count as they are kept, and one claimed while still on
            # its way to the disk (the store slow) would be counted twice, raised to here
            # by the claim and added again by its "kept" callback (_earn)
            row.fees_earned = max(row.fees_earned, row.fees_claimed)
        self.book.touch()

    async def _settle_served(
        self, conn: _Conn, service: ServiceConfig, stats: ServiceStats
    ) -> Settled:
        """:meth:`_settle` for a connection served in this run (TCP or UDP), once it
        ended. Its newest accepted receipt, when claimed, is earned even should its
        write not land: a served connection's claim does not raise ``fees_earned``
        (:meth:`_count_settled`), and its "kept" callback never runs for a write
        dropped."""
        settled = await self._settle(conn.connection_id, conn.terms.escrow_id, service, served=True)
        if settled.claimed:
            self._earn(stats, conn, conn.accepted)
        return settled

    def _earn(self, stats: ServiceStats, conn: _Conn, total: int) -> None:
        """Count in ``stats.fees_earned`` what ``conn``'s receipt of ``total`` adds to
        what it counted: at each receipt kept, and at its settlement's claim of a receipt
        not kept yet (whose "kept" then adds nothing)."""
        if total > conn.earned:
            stats.fees_earned += total - conn.earned
            conn.earned = total

    def _settled_row(self, service: ServiceConfig | None, port: int | None) -> ServiceStats | None:
        """The status row a settlement counts under: ``service``'s, else that of the
        service configured on ``port``, else the row a removed service on ``port`` left
        in the status, else a new row for that port."""
        if service is not None:
            return self.stats(service)
        if port is None:
            return None
        configured = self.services.get(port)
        if configured is not None:
            return self.stats(configured)
        for _, row in sorted(self.book.services.items()):
            if row.port == port:
                return row
        row = self.book.service(f"port {port} (removed)")
        row.port = port
        return row

    def _follow_up(
        self,
        connection_id: str,
        settled: Settled,
        escrow_id: str | None,
        service: ServiceConfig | None,
        served: bool = False,
    ) -> None:
        """After a settlement: drop the connection from the retries when it is done;
        otherwise schedule its next try (the first failure logged as a warning, the
        repeats at debug level)."""
        entry = self._retries.get(connection_id)
        if settled.done:
            if entry is not None:
                del self._retries[connection_id]
                logger.info(
                    "settled after a failure",
                    extra=kv(
                        connection=connection_id,
                        claimed=settled.claimed,
                        refunded=settled.refunded,
                    ),
                )
            return
        now = asyncio.get_running_loop().time()
        if entry is None:
            entry = _Retry(escrow_id, service, SETTLE_RETRY, now + SETTLE_RETRY, served)
            self._retries[connection_id] = entry
            out_of_gas = self.gas is not None and self.gas.out  # (said once, by the watch)
            logger.log(
                logging.DEBUG if out_of_gas else logging.WARNING,
                "settlement failed",
                extra=kv(
                    connection=connection_id,
                    retry="at the next start" if self._draining else f"in {SETTLE_RETRY:g} s",
                ),
            )
        else:
            entry.escrow_id = entry.escrow_id or escrow_id
            entry.service = entry.service or service
            entry.served = entry.served or served
            entry.delay = next_settle_retry(entry.delay)
            entry.due = now + entry.delay
            logger.debug(
                "settlement failed again",
                extra=kv(connection=connection_id, retry=f"in {entry.delay:g} s"),
            )
        if not self._draining:
            if self._retry_task is None:
                self._retry_task = asyncio.ensure_future(self._retry_loop())
            self._retry_wake.set()  # (its next try may come before the one waited for)

    async def _retry_loop(self) -> None:
        """Try the failed settlements again as they fall due, one at a time, until the
        drain cancels this: each try is a handler (the drain waits for one under way,
        as for the connections' own settlements, so its claim is counted), and a
        connection served again, or being settled, is left to that settlement."""
        loop = asyncio.get_running_loop()
        while True:
            self._retry_wake.clear()
            now = loop.time()
            due = [cid for cid, entry in self._retries.items() if entry.due <= now]
            if not due:
                nearest = min((entry.due for entry in self._retries.values()), default=None)
                # (asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                # wake's result when the drain's cancel comes as the wake is set, the
                # cancel swallowed, and the drain would wait for this loop for good)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if nearest is None else nearest - now):
                        await self._retry_wake.wait()
                continue
            for cid in due:
                entry = self._retries.get(cid)
                if entry is None:  # (settled meanwhile)
                    continue
                # (pushed back first: a try that ends without its follow-up must not be
                # made again at once, over and over)
                entry.due = loop.time() + entry.delay
                if cid in self._served or cid in self._settling:
                    continue
                attempt = asyncio.ensure_future(
                    self._settle(
                        cid, entry.escrow_id, entry.service, retry=True, served=entry.served
                    )
                )
                self._handlers.add(attempt)
                attempt.add_done_callback(self._handlers.discard)
                await asyncio.wait({attempt})  # (a cancel here leaves the try running)
                if not attempt.cancelled() and (error := attempt.exception()) is not None:
                    log_failure(logger, "settlement retry failed", error, connection=cid)

    def _retry_now(self) -> None:
        """The ledger is back after an outage, or the daemon's gas funded again: the
        settlements that failed meanwhile are tried again now rather than at their
        backoff's end (up to :data:`SETTLE_RETRY_MAX` later: a client's half-close
        timeout may end meanwhile)."""
        if not self._retries or self._draining:
            return
        now = asyncio.get_running_loop().time()
        for entry in self._retries.values():
            entry.due = min(entry.due, now)
        self._retry_wake.set()

    async def _stop_retries(self) -> None:
        """Stop trying failed settlements again (a try under way goes on: it is one of
        the handlers the drain waits for)."""
        task, self._retry_task = self._retry_task, None
        # (cancel_and_wait, not "await task" in a suppress(CancelledError), which takes
        # the drain's own cancellation for the loop's, and the drain would go on)
        if task is not None and (error := await cancel_and_wait(task)) is not None:
            # logged, not raised: raised, it cut the drain short, its settlements unmade
            log_failure(logger, "settlement retries failed", error)

    async def claim_leftovers(self, stopped: Callable[[], bool]) -> list[tuple[str, Settled]]:
        """Claim and settle what an earlier run left in the receipt store (as every
        settlement: counted, tried again when it fails); see
        :meth:`ServerFees.claim_leftovers`."""
        return await self.fees.claim_leftovers(stopped, self._settle)

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
            await self._settle(connection_id)
            return
        client: str = writer.get_extra_info("peer_address")
        try:
            terms = await self.fees.terms(connection_id, admitted)
        except DTPError as exc:
            writer.abort(f"cannot read the connection: {exc}")
            self._served.ended(connection_id)
            # (settled all the same: else the ledger connection stays Open, the deposit
            # locked until the client's own timeout)
            await self._settle(connection_id, service=service)
            return
        conn = _Conn(connection_id, service, terms, client, writer)
        await self._watch_policy()
        conn.buckets = self.limiter.acquire(client, time.monotonic())
        self.conns[connection_id] = conn
        if self._draining:
            # it read its terms while the drain closed the connections: closed now (it
            # was served on through the stop, its handler waited on for SETTLE_TIMEOUT
            # and the receipt store closed under it, the ledger connection left Open)
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
            await self._udp_flow(conn, reader)
            return
        writer.set_datagram_sink(self._stray_datagrams(conn))
        acceptor = asyncio.ensure_future(self._accept_tunnels(conn))
        try:
            if terms.sla.price_per_kib or terms.sla.price_per_request:
                await self._read_receipts(conn, reader)
            else:
                # nothing to read on stream 0 of a free service; a reader would wake on
                # every event of the connection
                with contextlib.suppress(DTPError):
                    await writer.wait_closed()
        finally:
            # (a cancel of this handler while it waits is the handler's own: raised once
            # the cleanup below is done)
            errors, cancelled = await end_for_cleanup(acceptor)
            for error in errors:
                # logged, not raised: raised, the connection went unsettled. Dropped, as
                # it was, a fault that stopped the connection's tunnels said nothing
                log_failure(
                    logger,
                    "tunnel acceptor failed",
                    error,
                    service=service.name,
                    connection=connection_id,
                )
            if conn.tunnels:
                await asyncio.gather(*conn.tunnels, return_exceptions=True)
            self.conns.pop(connection_id, None)
            self.limiter.release(client)
            writer.close()
            # ended: its limit slot is free for the client's next connection while the
            # settlement runs (docs/escrow.md §2: live connections are counted)
            self._served.ended(connection_id)
            settled = await self._settle_served(conn, service, stats)
            self._count_held()
            logger.info(
                "connection closed",
                extra=kv(
                    service=service.name,
                    connection=connection_id,
                    bytes=conn.bytes,
                    claimed=settled.claimed,
                    refunded=settled.refunded,
                ),
            )
            if cancelled is not None:
                raise cancelled

    async def _udp_flow(self, conn: _Conn, reader: DTPStreamReader) -> None:
        """A UDP service: this connection is one client flow, relayed to a backend (round
        robin over the service's backends) and billed per datagram (docs/udp.md)."""
        service, terms, writer = conn.service, conn.terms, conn.writer
        stats = self.stats(service)
        turn = self._udp_turns.get(service.port, 0)
        self._udp_turns[service.port] = turn + 1
        backend = service.backends[turn % len(service.backends)]
        billing = None
        if terms.sla.price_per_kib or terms.sla.price_per_request:

            def kept(receipt: Receipt) -> None:
                self._earn(stats, conn, receipt.total_amount)
                self._count_held()  # (this flow holds one now; it never showed)
                self.book.touch()

            billing = self.fees.udp_billing(
                terms, service.credit_datagrams, kept, service.loss_allowance
            )
            # a connection the daemon saw before a restart: its receipts so far were
            # counted then (as _read_receipts starts from them; a store that cannot be
            # read is the settlement's to report)
            with contextlib.suppress(DTPError):
                if (stored := self.fees.held(conn.connection_id)) is not None:
                    conn.earned = conn.accepted = stored.total_amount
        stats.tunnels += 1
        stats.active_tunnels += 1
        udp_stats = UdpStats()
        conn.finish = asyncio.Event()
        counted = dict.fromkeys(_UDP_ROW, 0)

        def tally() -> None:
            # the flow's counters into the row as they grow, as a TCP tunnel's bytes
            # are: added only when the flow ended, a flow of an hour showed nothing
            # for an hour (and nothing at all when the daemon was killed)
            snap = udp_stats.snapshot()
            for name, row_name in _UDP_ROW.items():
                grown = snap[name] - counted[name]
                if grown:
                    setattr(stats, row_name, getattr(stats, row_name) + grown)
                    counted[name] = snap[name]
                    self.book.touch()

        async def tally_often() -> None:
            while True:
                await asyncio.sleep(UDP_TALLY)
                tally()

        tallying = asyncio.ensure_future(tally_often())
        # a TCP forward pointed at this UDP service opens streams nobody would answer:
        # its local client would wait for the tunnel's status for good
        refuser = asyncio.ensure_future(
            self._refuse_tunnels(
                conn,
                f'service {service.name} is a UDP service: use a forward with protocol = "udp"',
            )
        )
        try:
            await relay_udp_async(
                reader,
                writer,
                (backend.host, backend.port),
                billing=billing,
                stats=udp_stats,
                idle_timeout=service.idle_timeout,
                limits=conn.buckets,
                finish=conn.finish,
            )
        except TunnelError as exc:
            stats.unavailable += 1
            logger.warning(
                "udp flow refused",
                extra=kv(service=service.name, client=conn.client, reason=str(exc)),
            )
        finally:
            # a cancel of this flow while they end is raised once the cleanup below is
            # done (raised at once, the flow went unsettled, its counts wrong)
            errors, cancelled = await end_for_cleanup(refuser, tallying)
            for error in errors:
                # logged, not raised: raised, the flow went unsettled
                log_failure(
                    logger,
                    "udp flow helper failed",
                    error,
                    service=service.name,
                    connection=conn.connection_id,
                )
            stats.active_tunnels -= 1
            tally()
            snap = udp_stats.snapshot()
            conn.bytes = snap["bytes_in"] + snap["bytes_out"]
            self.conns.pop(conn.connection_id, None)
            # (taken by _handle for this connection, as for a TCP one, which releases
            # them in its own end: else a flow's would never be given back, the client's
            # count of users only grow and its buckets never be let go)
            self.limiter.release(conn.client)
            writer.close()
            self._served.ended(conn.connection_id)  # (as a TCP connection's: see _handle)
            if billing is not None:
                # the newest receipt accepted (the billing's, checked and queued for the
                # disk), read before the settlement forgets it: as a TCP connection's
                # (_read_receipts), what its claim earns should its write not land
                with contextlib.suppress(DTPError):  # (the settlement reports the store's)
                    if (newest := self.fees.held(conn.connection_id)) is not None:
                        conn.accepted = max(conn.accepted, newest.total_amount)
            settled = await self._settle_served(conn, service, stats)
            self._count_held()
            self.book.touch()
            logger.info(
                "udp flow closed",
                extra=kv(
                    service=service.name,
                    connection=conn.connection_id,
                    datagrams=snap["datagrams_in"],
                    claimed=settled.claimed,
                    refunded=settled.refunded,
                ),
            )
            if cancelled is not None:
                raise cancelled

    def _count_held(self) -> None:
        held = dict.fromkeys((s.name for s in self.services.values()), 0)
        # and the services a reload removed that still had some: their count went to
        # 0 never, and the status showed receipts held after all were claimed
        held.update(dict.fromkeys(self._held_names - held.keys(), 0))
        for conn in self.conns.values():
            if conn.paid_bytes or self.fees.held(conn.connection_id) is not None:
                held[conn.service.name] = held.get(conn.service.name, 0) + 1
        for name, count in held.items():
            self.book.service(name).receipts_held = count
        self._held_names = {name for name, count in held.items() if count}

    async def _read_receipts(self, conn: _Conn, reader: DTPStreamReader) -> None:
        """Stream 0 carries receipts until the client closes the connection."""
        stats = self.stats(conn.service)

        def kept(receipt: Receipt) -> None:
            # on disk now: it counts (receipts of one connection are kept in order; one
            # its settlement claimed first was counted then)
            self._earn(stats, conn, receipt.total_amount)
            conn.paid_bytes = receipt.total_bytes
            conn.paid_requests = receipt.total_requests
            self._count_held()

        stored = self.fees.held(conn.connection_id)
        if stored is not None:  # a connection the daemon saw before a restart
            conn.earned = conn.accepted = stored.total_amount
        while True:
            try:
                data = await reader.readexactly(RECEIPT_SIZE)
            except (asyncio.IncompleteReadError, DTPError):
                return
            try:
                receipt = self.fees.accept(conn.terms, data, kept)
            except InvalidReceipt as exc:
                logger.warning(
                    "bad receipt",
                    extra=kv(connection=conn.connection_id, error=str(exc)),
                )
                conn.writer.abort(f"bad receipt: {exc}")
                return
            conn.accepted = max(conn.accepted, receipt.total_amount)

    def _stray_datagrams(self, conn: _Conn) -> Callable[[bytes], None]:
        """A sink for datagrams on a TCP service's connection (a UDP forward pointed at
        it): they are dropped, and the first one says why in the log, where nothing
        said anything before."""
        warned = False

        def sink(_: bytes) -> None:
            nonlocal warned
            if not warned:
                warned = True
                logger.warning(
                    "datagrams dropped",
                    extra=kv(
                        service=conn.service.name,
                        client=conn.client,
                        reason=f"service {conn.service.name} is a TCP service: use a "
                        'forward with protocol = "tcp"',
                    ),
                )

        return sink

    async def _refuse_tunnels(self, conn: _Conn, reason: str) -> None:
        """Answer every stream the client opens with a refusal (``reason``)."""
        while True:
            try:
                _, s_writer = await conn.writer.accept_stream()
            except DTPError:
                return
            logger.warning(
                "tunnel refused",
                extra=kv(service=conn.service.name, client=conn.client, reason=reason),
            )
            with contextlib.suppress(DTPError):
                s_writer.write(refusal(reason))
                s_writer.close()

    async def _accept_tunnels(self, conn: _Conn) -> None:
        while True:
            try:
                s_reader, s_writer = await conn.writer.accept_stream()
            except DTPError:
                return
            task = asyncio.ensure_future(self._tunnel(conn, s_reader, s_writer))
            conn.tunnels.add(task)
            task.add_done_callback(conn.tunnels.discard)

    async def _tunnel(
        self,
        conn: _Conn,
        reader: DTPStreamReader,
        writer: DTPStreamWriter,
    ) -> None:
        # Look the service up again: a reload may have changed its backends.
        service = self.services.get(conn.service.port, conn.service)
        stats = self.stats(service)
        pool = self.pools.get(service.port)

        buckets = conn.buckets

        def charge(n: int) -> float | None:
            """Count ``n`` bytes either way: how long the tunnel holds its reading (the
            receipts lagging, the client's byte rate), None for not at all. At most
            POLICY_REFRESH at a time: the tunnel asks again (``n`` 0) when a hold ends,
            and the client's debt is then looked at under the limits in force (a
            limit the Host lifts or raises while a tunnel waits out a long hold at the
            old rate reaches it without waiting for that hold to end)."""
            unpaid = self._count(conn, service, n)
            rate = 0.0
            if buckets:
                now = time.monotonic()
                rate = buckets.bytes.charge(n, now) if n else buckets.bytes.delay(now)
            return min(max(unpaid, rate), POLICY_REFRESH) or None

        def count_in(n: int) -> float | None:
            stats.bytes_in += n
            return charge(n)

        def count_out(n: int) -> float | None:
            stats.bytes_out += n
            return charge(n)

        if buckets is not None:
            # one request per tunnel: over the client's rate, the tunnel waits its turn;
            # and it moves nothing while the client's bytes are over their rate: a chunk
            # is charged after it is read, so every new tunnel got one through for free
            # (many tunnels carried many times max_bytes_per_sec). Each wait looked at
            # again every POLICY_REFRESH, under the limits in force then.
            buckets.requests.charge(1, time.monotonic())
            while True:
                now = time.monotonic()
                wait = max(buckets.requests.delay(now), buckets.bytes.delay(now))
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, POLICY_REFRESH))
        conn.requests += 1
        try:
            if pool is None:
                raise TunnelError(f"service {service.name} was removed")
            while wait := self._unpaid_hold(conn, service):
                await asyncio.sleep(wait)
            leg, backend = await pool.connect(lambda: TcpLeg(count_out))
        except TunnelError as exc:
            stats.unavailable += 1
            logger.warning(
                "tunnel refused",
                extra=kv(service=service.name, client=conn.client, reason=str(exc)),
            )
            with contextlib.suppress(DTPError):
                writer.write(refusal(str(exc)))
                writer.close()
            return
        try:
            writer.write(STATUS_OK)
        except DTPError as exc:
            # the client's connection ended (or it dropped the stream) while the backend
            # was connecting or the tunnel waited out the rate limits: the backend's
            # connection, never attached, would otherwise stay open for good
            leg.close()
            logger.info(
                "tunnel abandoned by the client",
                extra=kv(service=service.name, client=conn.client, reason=str(exc)),
            )
            return
        stats.tunnels += 1
        stats.active_tunnels += 1
        stats.healthy_backends = pool.healthy_count
        try:
            error = await splice_leg(leg, reader, writer, count_in)
        finally:
            stats.active_tunnels -= 1
            self.book.touch()
        if error is not None:
            logger.info(
                "tunnel ended with an error",
                extra=kv(service=service.name, backend=str(backend), error=str(error)),
            )

    def _count(self, conn: _Conn, service: ServiceConfig, n: int) -> float:
        """Count ``n`` bytes of a tunnel of ``conn``; returns how long the tunnel holds
        its reading first (:meth:`_unpaid_hold`)."""
        conn.bytes += n
        self.book.touch()
        return self._unpaid_hold(conn, service)

    def _unpaid_hold(self, conn: _Conn, service: ServiceConfig) -> float:
        """0 while the connection's receipts are within ``unpaid_slack`` bytes of its
        usage; past that, how long its tunnels hold their reading before they look
        again -- back-pressure: a receipt on its way (or on its way to the disk, where
        it starts to count) catches up, and the tunnels go on. Raises TunnelError once
        the receipts stay behind for :data:`UNPAID_PAUSE`. (Not cut at once: eight
        tunnels at full speed run 16 MiB past the receipts while the last one is being
        written, and a paying client's tunnels would be reset.)"""
        sla = conn.terms.sla
        bytes_behind = sla.price_per_kib > 0 and conn.bytes - conn.paid_bytes > service.unpaid_slack
        # (each tunnel is a request, and its receipt comes right behind it: a few may be
        # on their way; a service priced by the request served every tunnel free, and a
        # mixed one took receipts for the bytes alone)
        requests_behind = (
            sla.price_per_request > 0 and conn.requests - conn.paid_requests > UNPAID_REQUESTS
        )
        if not (bytes_behind or requests_behind):
            conn.unpaid_since = None
            return 0.0
        now = time.monotonic()
        if conn.unpaid_since is None:
            conn.unpaid_since = now
        elif now - conn.unpaid_since >= UNPAID_PAUSE:
            self.stats(service).denials += 1
            if bytes_behind:
                raise TunnelError(
                    f"{conn.bytes - conn.paid_bytes} bytes not covered by receipts "
                    f"(slack {service.unpaid_slack}) for {UNPAID_PAUSE:g} s"
                )
            raise TunnelError(
                f"{conn.requests - conn.paid_requests} tunnels not covered by receipts "
                f"(slack {UNPAID_REQUESTS}) for {UNPAID_PAUSE:g} s"
            )
        return UNPAID_WAIT

    # -- the host's firewall at runtime ---------------------------------------------------

    async def _watch_policy(self) -> None:
        """Read the Host's firewall once (before the first connection is served), then
        keep re-reading it every :data:`POLICY_REFRESH` seconds."""
        if self._policy_task is None and self.host_id:
            await self.refresh_policy()
            self._policy_task = asyncio.ensure_future(self._policy_loop())

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(POLICY_REFRESH)
            await self.refresh_policy()

    async def refresh_policy(self) -> None:
        """Apply the Host's firewall as on the ledger now: the per-client rate limits
        to every client's buckets, and a deny to the open connections it names."""
        try:
            host = await asyncio.to_thread(self.ledger.get_host, self.host_id)
        except ChainError as exc:
            # the last firewall read stays in force; open connections go on, their
            # receipts off the ledger, and new ones are refused (their admission
            # cannot read the ledger either)
            logger.log(
                logging.DEBUG if self._ledger_away else logging.WARNING,
                "cannot read the host: its last known firewall stays in force",
                extra=kv(error=str(exc)),
            )
            self._ledger_away = str(exc)
            return
        if self._ledger_away is not None:
            self._ledger_away = None
            logger.info("the ledger can be read again")
            self._retry_now()
        fw, old = host.firewall, self._firewall
        self._firewall = fw
        if old is None or (old.max_bytes_per_sec, old.max_requests_per_sec) != (
            fw.max_bytes_per_sec,
            fw.max_requests_per_sec,
        ):
            self.limiter.set_limits(fw.max_bytes_per_sec, fw.max_requests_per_sec, time.monotonic())
        for conn in list(self.conns.values()):
            if not fw.permits(conn.client):
                self.stats(conn.service).denials += 1
                logger.warning(
                    "the host's firewall now denies a client",
                    extra=kv(client=conn.client, connection=conn.connection_id),
                )
                conn.writer.abort("the host's firewall now denies this client")
        await self._check_on_ledger()

    async def _check_on_ledger(self) -> None:
        """Close the open connections no longer Open on the ledger (each read every
        :data:`LEDGER_CHECK`, in a thread)."""
        due = ledger_checks_due(self.conns.values(), time.monotonic(), LEDGER_CHECK)
        if not due:
            return
        try:
            ended = await asyncio.to_thread(ended_on_ledger, self.ledger, due)
        except ChainError as exc:
            logger.log(
                logging.DEBUG if self._ledger_away else logging.WARNING,
                "cannot read the state of open connections",
                extra=kv(error=str(exc)),
            )
            return
        for conn in ended:
            logger.warning(
                "a client closed its connection on the ledger while served",
                extra=kv(client=conn.client, connection=conn.connection_id),
            )
            conn.writer.abort("the connection was closed on the ledger")

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
        await self._stop_retries()
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
        while self._handlers and loop.time() < deadline:
            await asyncio.wait(set(self._handlers), timeout=deadline - loop.time())
        for cid in self._retries:
            logger.warning(
                "connection left unsettled",
                extra=kv(
                    connection=cid,
                    reason="its settlement failed: a receipt held is claimed at the next "
                    "start; without one, its client settles it after its timeout",
                ),
            )
        self._retries.clear()  # (said once)
        for pool in list(self.pools.values()):
            await pool.stop()
        self.pools.clear()
        if self._policy_task is not None:
            # (kept set while it ends: a late handler's _watch_policy would start another)
            if (error := await cancel_and_wait(self._policy_task)) is not None:
                log_failure(logger, "firewall refresh failed", error)
            self._policy_task = None
