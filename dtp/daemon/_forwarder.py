"""The client side: a local TCP listener whose every accepted connection becomes a
tunnel (a DTP stream) to a remote ``<host id>:<port>`` service.

All tunnels of a forwarder share one DTP connection (opened on the ledger with its
escrow on first use, reopened if it ends or its deposit runs out). Usage of paid
services is metered by :class:`dtp.daemon._fees.ClientFees`; receipts go on stream 0.
Opens back off through an outage of the target and lock one deposit per target at most
(:mod:`dtp.daemon._outage`); each connection is in the daemon's book before its deposit
moves, settled there where the provider does not (:mod:`dtp.daemon._refunds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Literal

from dtp.daemon._config import join_host_port
from dtp.daemon._fees import RECEIPT_MS, ClientFees
from dtp.daemon._forwarding import Forward
from dtp.daemon._outage import (
    BackingOff,
    DepositTry,
    TargetUnreachable,
    connect_forward,
    probe_target,
)
from dtp.daemon._refunds import OpenAttempt
from dtp.daemon._state import ForwardStats
from dtp.daemon._tasks import within
from dtp.daemon._tunnel import PaidInPart, TcpLeg, read_status, splice_leg
from dtp.errors import (
    ChainError,
    ConnectionRefused,
    DTPError,
    InsufficientFunds,
    TunnelError,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState
from dtp.ledger.interface import Ledger
from dtp.ledger.receipt import Receipt, ReceiptScope
from dtp.payments._refund_engine import RefundAction, refund_cost

__all__ = ["Forwarder"]

from dtp.daemon._logs import kv
from dtp.transport.asyncio._listeners import close_listener
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

logger = logging.getLogger("dtp.daemon._forwarder")

CUT_CLOSE_GRACE = 1.0
"""Seconds a connection whose deposit ran out stays open once its last tunnel ended,
before it closes (:meth:`Forwarder._cut_grace`)."""


@dataclass(eq=False)
class _Link:
    """One DTP connection to the target service."""

    connection_id: str
    reader: DTPStreamReader
    writer: DTPStreamWriter
    fees: ClientFees
    attempt: OpenAttempt | None = None
    """Its entry in the daemon's book of connections, released once it ended."""
    tunnels: int = 0
    paid: int = 0
    """MIST covered by the latest receipt sent."""
    retired: bool = False
    cut_at: float | None = None
    """When (the loop's time) its deposit ran out, cutting a tunnel."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def usable(self) -> bool:
        return not self.retired and not self.closed.is_set() and not self.writer.is_closing()


async def close_on_ledger(
    ledger: Ledger, identity: HostIdentity, connection_id: str, *, weigh_gas: bool = False
) -> None:
    """Half-close a connection of ours that ended, on the ledger, unless it is closed
    already or we half-closed it (in a thread; refusals are logged): the daemon claims
    and settles, refunding the rest of the deposit -- and where it does not (killed, a
    claim refused), the half-close started the timeout after which we may settle.

    ``weigh_gas`` (``gas_aware_ends``): not when what the escrow holds is below the gas
    of the half-close and of the settlement after it, the refund rule of the book's
    looks (:func:`dtp.payments._refund_engine.worth_gas`): that half-close would buy
    nothing back. The connection is left Open (the provider may still settle it), and
    the book's look at it logs it with the ``dtp refund`` command that takes it back."""

    def close() -> None:
        tc = ledger.get_connection(connection_id)
        if tc.state == ConnectionState.CLOSED or tc.half_closed_by == identity.sui_address:
            return
        if weigh_gas:
            cost = refund_cost(RefundAction.HALF_CLOSE, ledger.end_gas())
            balance = ledger.get_escrow(tc.escrow).balance if cost else 0
            if cost and balance < cost:
                logger.debug(
                    "ledger close skipped: the deposit left does not cover its gas",
                    extra=kv(connection=connection_id, balance=balance, gas=cost),
                )
                return
        ledger.close_connection(identity, connection_id)

    try:
        await asyncio.to_thread(close)
    except ChainError as exc:
        logger.debug("ledger close skipped: %s", exc)
    except Exception as exc:
        # the ledger itself failing (an OSError, a sqlite3 error of a LocalLedger): this
        # close is a best effort that its callers neither expect to fail nor can act
        # on: logged, never raised, so that _open_link's TunnelError stays the error
        # and no watcher's task ends in an exception nobody retrieves
        logger.warning(
            "ledger close failed",
            extra=kv(connection=connection_id, error=f"{type(exc).__name__}: {exc}"),
        )


class Forwarder(Forward):
    """Listens on ``config.listen`` and tunnels to ``config.target``."""

    _log = logger
    _LEDGER_DENIALS = True

    def _own_fields(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self._stopping: asyncio.Future[None] | None = None
        """Done once the listener stop_listening() stopped is closed (close_listener)."""
        self._link: _Link | None = None
        self._links: set[_Link] = set()
        self._opening = asyncio.Lock()
        self._clients: set[asyncio.Task[None]] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._retired = False
        """Retired by a reload: every connection closes once its last tunnel ended,
        those opened since for clients accepted before the retirement too."""
        self._said_quietly: BaseException | None = None
        """The last open's failure when it was logged at debug level (a repeat): its
        local client's failure is too."""

    async def start(self) -> tuple[str, int]:
        """Start listening; returns the bound address."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._new_leg,
            self.config.listen.host,
            self.config.listen.port,
            backlog=512,
            reuse_address=True,
        )
        name = self.server.sockets[0].getsockname()
        self.show_listen()
        return name[0], name[1]

    def show_listen(self) -> None:
        """Put the bound address and our target in the status (the row is shared by
        name: a forwarder started in our place, then closed again, may have put its own
        there, and its target would stay after a failed port trade rolled it back)."""
        if self.server is not None and self.server.sockets:
            name = self.server.sockets[0].getsockname()
            self.stats.listen = join_host_port(name[0], name[1])
            self.stats.target = str(self.config.target)
            self.book.touch()

    def _new_leg(self) -> TcpLeg:
        """A local client connected: its tunnel is set up in a task while its
        reading stays paused."""
        holder: list[_Link] = []
        stats = self.stats

        def count_in(n: int) -> None:
            self._count(holder[0], n, stats, "bytes_in")

        leg = TcpLeg(count_in)
        task = asyncio.get_running_loop().create_task(self._tunnel(leg, holder))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)
        return leg

    # -- the shared connection -------------------------------------------------------------

    async def _get_link(self) -> _Link:
        async with self._opening:
            link = self._link
            if link is not None and link.usable:
                return link
            # the clients that queued behind a failed open, and those coming during its
            # backoff, share its failure: each tried its own in turn, every one waiting
            # for all those before it (open_timeout each against a silent host) and the
            # ledger asked once per client
            refused = self.backoff.refusal(self._now())
            if refused is not None:
                raise refused
            tried: list[DepositTry] = []
            try:
                link = await self._open_link_within(tried)
            except Exception as exc:
                # (its connection held for the next try, or the book's looks')
                spent = self.deposits.failed(tried[0] if tried else None)
                if not isinstance(exc, TargetUnreachable):  # (counted by the probe)
                    # out of gas: said once by the gas watch, not at every try
                    quiet = self.gas is not None and await self.gas.explains(exc)
                    self._failed_open(exc, quiet=quiet, spent=spent)
                raise
            # (the backoff is kept until a tunnel opened on it: reset here, a deposit too
            # small for one tunnel backed off by the first step after every open -- a
            # paid connection on the ledger each 0.5 s, never doubling)
            self.backoff.opened()
            self._link = link
            return link

    def _failed_open(self, exc: BaseException, *, quiet: bool = False, spent: bool = False) -> None:
        """:meth:`_backed_off`, remembering a failure said quietly (its local client's
        is then said quietly too)."""
        self._said_quietly = exc if self._backed_off(exc, spent=spent, quiet=quiet) else None

    async def _probe(self) -> None:
        # (the probe by this module's name, which a test may stand another in for)
        await self._probe_by(probe_target)

    async def _open_link_within(self, tried: list[DepositTry]) -> _Link:
        """:meth:`_open_link` within the forward's ``open_timeout``, all of it: the
        ledger work (the Host's and the balance's reads, the spending cap, the open)
        as well as the carrier connect and the handshake, which alone
        ``open_connection``'s ``timeout`` bounds. Given up, it is abandoned in the
        background (an open still landing half-closed once it landed, a connect under
        way left Open for the next try: :func:`~dtp.daemon._outage.connect_forward`),
        and the local clients waiting for it are refused at once (DTPTimeoutError).
        ``tried`` is given the try's deposit as soon as it is chosen."""
        timeout = self.config.open_timeout
        self.opens_in_flight += 1
        try:
            return await within(
                timeout,
                self._open_link(tried),
                self._watchers,
                f"cannot connect to {self.config.target}: no connection within the "
                f"forward's open_timeout ({timeout:g} s)",
            )
        finally:
            self.opens_in_flight -= 1

    async def _open_link(self, tried: list[DepositTry]) -> _Link:
        target = self.config.target
        await self._probe()
        deposit = await self.deposits.next(target)
        tried.append(deposit)
        try:
            reader, writer = await connect_forward(self.config, self.ledger, self.identity, deposit)
        except DTPError as exc:
            if isinstance(exc, ConnectionRefused):
                self.stats.deny("refused")
            elif isinstance(exc, ChainError):
                self.stats.deny("ledger")
            raise TunnelError(f"cannot connect to {target}: {exc}") from exc
        assert writer.connection_id is not None and writer.escrow_id is not None
        connection_id = writer.connection_id
        try:
            # served: never to be connected on again (its receipts are the server's)
            await self.deposits.served(deposit)
            # (the escrow alone holds the SLA and the deposit: one read, on Sui one round
            # trip to the node, which shows what our open created)
            escrow = await asyncio.to_thread(self.ledger.get_escrow, writer.escrow_id)
        except BaseException as exc:
            # open and paid, but no link holds it and no watcher settles it: left so,
            # the connection and its deposit would stay locked (a ledger read failing,
            # or a stopping daemon cancelling us)
            writer.close()
            closing = asyncio.ensure_future(
                close_on_ledger(self.ledger, self.identity, connection_id)
            )
            self._watchers.add(closing)
            closing.add_done_callback(self._watchers.discard)
            if not isinstance(exc, Exception):
                raise
            await closing
            raise TunnelError(f"cannot read connection {connection_id}: {exc}") from exc
        scope = ReceiptScope(self.ledger.package_id, escrow.id, connection_id)
        fees = ClientFees(
            self.identity, scope, escrow.sla, escrow.deposited, self.config.receipt_every
        )
        link = _Link(connection_id, reader, writer, fees, deposit.attempt)
        self._links.add(link)
        self.stats.connections += 1
        logger.info(
            "connection open",
            extra=kv(forward=self.config.name, connection=connection_id),
        )
        watcher = asyncio.ensure_future(self._watch(link))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return link

    async def _watch(self, link: _Link) -> None:
        """Wait until the connection ends, then half-close it on the ledger (the daemon
        claims and settles, refunding the rest of the deposit)."""
        # wait_closed, not a read of stream 0: a reader would wake on every event of
        # the connection, a task switch per tunnel chunk
        closed = asyncio.ensure_future(link.writer.wait_closed())
        try:
            while not (await asyncio.wait({closed}, timeout=RECEIPT_MS / 1000))[0]:
                # the time cadence while no bytes are counted: tunnels the daemon holds
                # back until a receipt covers what they moved count nothing more, and
                # the receipt they wait for came only with their next bytes -- never
                self._send_receipt(link, link.fees.poll())
        finally:
            closed.cancel()
        with contextlib.suppress(DTPError, asyncio.CancelledError):
            closed.result()
        link.closed.set()
        self._links.discard(link)
        if self._link is link:
            self._link = None
        try:
            await self._close_on_ledger(link)
        finally:
            if link.attempt is not None:
                link.attempt.release()  # the book's look at it: settled, or to be

    async def _close_on_ledger(self, link: _Link) -> None:
        weigh = self.refunds is not None and self.refunds.weigh_gas
        await close_on_ledger(self.ledger, self.identity, link.connection_id, weigh_gas=weigh)

    def _send_receipt(self, link: _Link, receipt: Receipt | None) -> None:
        if receipt is None or link.closed.is_set():
            return
        with contextlib.suppress(DTPError):
            link.writer.write(receipt.encode())
            self.stats.receipts_sent += 1
            self.stats.fees_paid += receipt.total_amount - link.paid
            link.paid = receipt.total_amount

    def _release(self, link: _Link) -> None:
        link.tunnels -= 1
        self._send_receipt(link, link.fees.flush())
        # (a retired forwarder's too: one opened after the retirement, for a client
        # accepted before it, would be left open and paid until the daemon stopped)
        if (link.retired or self._retired) and link.tunnels == 0:
            self._retire(link)

    # -- tunnels -------------------------------------------------------------------------

    def _count(
        self,
        link: _Link,
        n: int,
        stats: ForwardStats,
        stat: Literal["bytes_in", "bytes_out"],
    ) -> None:
        """A tunnel on ``link`` moved a chunk of ``n`` bytes (``bytes_in``: from its local
        client, ``bytes_out``: to it): metered (:meth:`_meter`) and added to ``stat`` of
        the forward's ``stats`` (the row the tunnel took as it began), all of it or, when
        the deposit covers it only in part, what goes on (:class:`PaidInPart`'s
        ``covered``, raised again to cut the tunnel)."""
        try:
            self._meter(link, n)
        except PaidInPart as exc:
            setattr(stats, stat, getattr(stats, stat) + exc.covered)
            raise
        setattr(stats, stat, getattr(stats, stat) + n)

    def _meter(self, link: _Link, n: int) -> None:
        self.book.touch()
        fees = link.fees
        if not fees.paid:
            return  # (a free connection: its fees count nothing, as record would say)
        try:
            receipt = fees.record(n)
        except InsufficientFunds:
            link.retired = True
            if link.cut_at is None:
                link.cut_at = asyncio.get_running_loop().time()
            # the part of this chunk the deposit still covers is counted and goes on
            # (PaidInPart), the rest does not: the final receipt, sent now, pays for
            # the deposit to the byte and for nothing the client does not get
            covered = min(n, fees.affordable_bytes())
            if covered:
                self._send_receipt(link, fees.record(covered))  # (when one is due)
            self._send_receipt(link, fees.flush())
            # (said with the remedy: the README's forward, at its service's minimum
            # deposit, is cut a few MiB into a download)
            raise PaidInPart(
                f"the deposit of this DTP connection ({fees.meter.deposit:,} MIST) is used "
                "up: a larger `deposit` in the [[forward]] pays for larger transfers",
                covered,
            ) from None
        if receipt is not None:  # (most chunks make none due)
            self._send_receipt(link, receipt)

    def _retire(self, link: _Link) -> None:
        """No new tunnels on ``link``; it closes once its open tunnels end."""
        link.retired = True
        if self._link is link:
            self._link = None
        if link.tunnels == 0 and not link.closed.is_set():
            wait = self._cut_grace(link)
            if wait > 0:
                asyncio.get_running_loop().call_later(wait, self._close_link, link)
            else:
                self._close_link(link)

    def _cut_grace(self, link: _Link) -> float:
        """Seconds ``link`` stays open yet after its deposit ran out: the provider goes
        on sending what the cut tunnel had credit for until our reset of it arrives,
        and a carrier closed under those bytes is reset, which destroys what the
        provider had not read yet -- our final receipts (RFC 1122 4.2.2.13)."""
        if link.cut_at is None:
            return 0.0
        return link.cut_at + CUT_CLOSE_GRACE - asyncio.get_running_loop().time()

    def _close_link(self, link: _Link) -> None:
        if link.tunnels == 0 and not link.closed.is_set():
            self._send_receipt(link, link.fees.flush())
            link.writer.close()

    async def _open_tunnel(
        self,
    ) -> tuple[_Link, DTPStreamReader, DTPStreamWriter]:
        """A new stream for one tunnel, on a connection that can pay for it and has a
        stream left (else on a fresh connection)."""
        for _ in range(3):
            link = await self._get_link()
            if not link.fees.affordable(requests=1):
                self._retire(link)
                meter = link.fees.meter
                if meter.total_requests == 0:
                    # a fresh connection: the next one, with the same deposit, could not
                    # pay either (each try was a connection opened on the ledger; so is
                    # each next client's, hence the backoff)
                    error = TunnelError(
                        f"a deposit of {meter.deposit} MIST cannot pay for one tunnel to "
                        f"{self.config.target} ({meter.sla.price_per_request} MIST per "
                        f"request): raise deposit in [[forward]] {self.config.name}"
                    )
                    self._failed_open(error)
                    raise error
                continue
            try:
                # at the daemon's limit of tunnels per connection open_stream() waits for
                # one of them to end (for good, behind long-lived ones): spill over to
                # another connection instead. With a slot free it returns without
                # suspending, before a timeout of 0 can fire.
                async with asyncio.timeout(0):
                    s_reader, s_writer = await link.writer.open_stream()
            except (TimeoutError, DTPError):
                # (a DTPError: the connection ended, or is closing)
                self._retire(link)
                continue
            link.tunnels += 1
            self.backoff.tunnel_opened()
            self._send_receipt(link, link.fees.record(requests=1))
            return link, s_reader, s_writer
        raise TunnelError(f"no usable connection to {self.config.target}")

    async def _tunnel(self, leg: TcpLeg, holder: list[_Link]) -> None:
        stats = self.stats
        try:
            link, s_reader, s_writer = await self._open_tunnel()
        except asyncio.CancelledError:
            leg.close()  # a stopping daemon: nor is the local client left open
            raise
        except Exception as exc:
            # whatever the failure (a DTPError, an OSError, or a fault below such as
            # select()'s ValueError past 1024 descriptors), the local client is closed:
            # the task ending with it would leave the client waiting and its socket open
            stats.errors += 1
            self.book.touch()
            why = str(exc) if isinstance(exc, DTPError | OSError) else repr(exc)
            # (refused during a backoff: the failure it repeats was logged once, not
            # once per local client of an outage; so was a failure said again quietly)
            quiet = isinstance(exc, BackingOff) or exc is self._said_quietly
            level = logging.DEBUG if quiet else logging.WARNING
            logger.log(level, "tunnel failed", extra=kv(forward=self.config.name, error=why))
            leg.close()
            return
        holder.append(link)
        stats.tunnels += 1
        stats.active_tunnels += 1
        try:
            try:
                await read_status(s_reader)
            except (DTPError, asyncio.IncompleteReadError) as exc:
                stats.errors += 1
                logger.warning(
                    "tunnel refused", extra=kv(forward=self.config.name, reason=str(exc))
                )
                leg.close()
                s_writer.close()
                return
            except asyncio.CancelledError:
                leg.close()  # a stopping daemon, before the daemon answered
                s_writer.close()
                raise

            def count_out(n: int) -> None:
                self._count(link, n, stats, "bytes_out")

            error = await splice_leg(leg, s_reader, s_writer, count_out)
            if error is not None:
                stats.errors += 1
                logger.info(
                    "tunnel ended with an error",
                    extra=kv(forward=self.config.name, error=str(error)),
                )
        finally:
            stats.active_tunnels -= 1
            self.book.touch()  # or the status file kept showing the tunnel open
            self._release(link)

    # -- shutdown ------------------------------------------------------------------------

    def stop_listening(self) -> None:
        """Stop accepting; the listener closes a pass later, once the clients accepted
        as this ran have their transports (:func:`close_listener`): each is served as
        those accepted before, never left half-made with its socket open."""
        if self.server is not None and self._stopping is None:
            self._stopping = close_listener(self.server)

    async def _listener_closed(self) -> None:
        """Wait until the listener :meth:`stop_listening` stopped is closed (its port
        free, the tunnels of the clients it accepted as it stopped begun)."""
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    def retire(self) -> None:
        """Stop accepting (after a reload replaced this forwarder); each connection
        closes once its last open tunnel ends."""
        self._retired = True
        self.stop_listening()
        for link in list(self._links):
            self._retire(link)

    async def release(self) -> None:
        """Retire; the port is free on return (closing the server closes its sockets)."""
        self.retire()
        await self._listener_closed()

    @property
    def active_tunnels(self) -> int:
        return len(self._clients)

    @property
    def open_connections(self) -> int:
        """DTP connections open now (a reload's retired ones until they close)."""
        return len(self._links)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait up to ``timeout`` for tunnels, then close connections."""
        self.stop_listening()
        await self._listener_closed()  # (the tunnels of clients accepted meanwhile counted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._clients and loop.time() < deadline:
            await asyncio.sleep(0.05)
        cut = list(self._clients)
        for task in cut:
            task.cancel()
        if cut:
            # the cut tunnels end (their streams reset, their usage counted) before the
            # final receipts: sent first, they missed the bytes a tunnel counted until
            # its cancel ran (a receipt's worth, never signed for)
            await asyncio.wait(cut, timeout=5.0)
        grace = max((self._cut_grace(link) for link in self._links), default=0.0)
        if grace > 0:
            await asyncio.sleep(grace)  # (see _cut_grace: the final receipts' way)
        for link in list(self._links):
            self._send_receipt(link, link.fees.flush())
            link.writer.close()
        if self._watchers:
            await asyncio.wait(set(self._watchers), timeout=5.0)
