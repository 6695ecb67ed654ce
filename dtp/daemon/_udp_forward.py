"""UDP forwarders of the daemon (``[[forward]] protocol = "udp"``): a local UDP port
whose flows reach a remote ``<host id>:<port>`` UDP service through DTP, one connection
per source address (opened on the ledger with the forward's deposit), billed per
datagram (docs/udp.md). Same interface as :class:`dtp.daemon._forwarder.Forwarder`, and
the same way to a new connection: the target probed first, one probe at a time, a
backoff during an outage, a connection whose connect failed held and connected on again
(:mod:`dtp.daemon._outage`), each connection in the daemon's book until settled
(:mod:`dtp.daemon._refunds`). Flows open their connections one at a time until the
target has served one (since the start, or the last failure), at once after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dtp.daemon._forwarder import close_on_ledger
from dtp.daemon._forwarding import Forward
from dtp.daemon._logs import kv
from dtp.daemon._outage import (
    BackingOff,
    DepositTry,
    TargetUnreachable,
    connect_forward,
    probe_target,
)
from dtp.daemon._refunds import OpenAttempt
from dtp.daemon._tasks import within
from dtp.daemon._udp_flows import DROPPED
from dtp.errors import ConnectionRefused, DTPError
from dtp.hostid.udp._asyncio import AsyncUdpForwarder
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import ReceiptScope
from dtp.payments.receipts import Meter
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

__all__ = ["UdpForward"]


logger = logging.getLogger("dtp.daemon._udp_forward")


class UdpForward(Forward):
    """Listens on ``config.listen`` (UDP) and forwards to ``config.target``."""

    _log = logger
    _LEDGER_DENIALS = False  # (the flow's error only)

    def _own_fields(self) -> None:
        self._proven = False
        """The target served a connection since the start or the last failure: flows
        open theirs at once (until then one at a time, so that a target that refuses
        them locks one deposit, not one per flow)."""
        self._probing = asyncio.Lock()
        """Held by the look at the target before an open (and, until the target is
        proven, by the open): one at a time."""
        self._forwarder: AsyncUdpForwarder | None = None
        self._slas: dict[str, Sla] = {}
        self._deposits: dict[str, int] = {}
        self._escrows: dict[str, str] = {}
        # what refresh() has put in the row so far, by counter: the
        # row is shared by name with the forwarders a reload put in our place, or we
        # in theirs, so each adds its own changes, never the whole row (a forwarder
        # started on trial and closed again must not put its zeros over the TCP
        # forwarder it was to replace, whose open tunnels it would then count as -1)
        self._counted: dict[str, int] = {}
        #: the tasks half-closing ended flows' connections on the ledger (and opens
        #: given up, unwinding: see :meth:`_connect`)
        self._watchers: set[asyncio.Task[None]] = set()

    async def _connect(self) -> tuple[DTPStreamReader, DTPStreamWriter]:
        """A new flow's DTP connection, all of it within the forward's ``open_timeout``
        (as :meth:`dtp.daemon._forwarder.Forwarder._open_link_within`: the probe and the
        ledger work too, which ``open_connection``'s ``timeout`` leaves out), once the
        target answered the probe; refused at once during a backoff."""
        timeout = self.config.open_timeout
        tried: list[DepositTry] = []
        self.opens_in_flight += 1
        try:
            opened = await within(
                timeout,
                self._probe_and_open(tried),
                self._watchers,
                f"cannot connect to {self.config.target}: no connection within the "
                f"forward's open_timeout ({timeout:g} s)",
            )
        except ConnectionRefused:
            self._failed(tried, None)
            raise  # (counted as a denial)
        except DTPError as exc:
            # (any other failure, a give-up included: the open failing, or the read of
            # the escrow it made)
            self._failed(tried, exc)
            self.stats.errors += 1
            self.book.touch()
            raise
        finally:
            self.opens_in_flight -= 1
        self.backoff.tunnel_opened()
        self._proven = True
        return opened

    async def _probe_and_open(
        self, tried: list[DepositTry]
    ) -> tuple[DTPStreamReader, DTPStreamWriter]:
        """The backoff's verdict, the probe and the deposit's choice, one flow at a
        time, then the open (one at a time too until the target is proven)."""
        await self._probing.acquire()
        held = True
        try:
            refused = self.backoff.refusal(self._now())
            if refused is not None:
                raise refused
            await self._probe()
            deposit = await self.deposits.next(self.config.target)
            tried.append(deposit)
            if self._proven:
                self._probing.release()
                held = False
            return await self._open(deposit)
        finally:
            if held:
                self._probing.release()

    def _failed(self, tried: list[DepositTry], exc: DTPError | None) -> None:
        """An open failed (``exc``; None: refused by the host, whose refusal its log
        line says): its connection is held for the next try, or the book's to settle,
        and the next waits."""
        spent = self.deposits.failed(tried[0] if tried else None)
        self._proven = False
        if isinstance(exc, TargetUnreachable | BackingOff):
            return  # (the probe backed off already, or the backoff refused it)
        error = exc if exc is not None else DTPError("refused by the host")
        self._backed_off(error, spent=spent, said=exc is not None)

    async def _probe(self) -> None:
        # (the probe by this module's name, which a test may stand another in for)
        await self._probe_by(probe_target)

    async def _open(self, deposit: DepositTry) -> tuple[DTPStreamReader, DTPStreamWriter]:
        stats = self.stats
        try:
            reader, writer = await connect_forward(self.config, self.ledger, self.identity, deposit)
        except ConnectionRefused as exc:
            stats.deny("refused")
            self.book.touch()
            logger.warning("refused", extra=kv(forward=self.config.name, reason=str(exc)))
            raise
        except DTPError as exc:
            if self.gas is not None:
                await self.gas.explains(exc)
            raise
        assert writer.connection_id is not None and writer.escrow_id is not None
        # once the flow's connection ends, it is half-closed on the ledger, as the TCP
        # forwarder's are: its billing is the flow's own (OWN_BILLING), so the writer's
        # close did none, and where the daemon did not settle (killed, its claim
        # refused) the client could never settle: EConnectionOpen, the deposit held.
        # Watched from here, before the escrow read, so that the read's failure path
        # (the close below) half-closes it too (tests/daemon/test_udp_forward.py)
        watcher = asyncio.ensure_future(self._close_when_ended(writer, deposit.attempt))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        try:
            # served: never to be connected on again (its receipts are the server's)
            await self.deposits.served(deposit)
            escrow = await asyncio.to_thread(self.ledger.get_escrow, writer.escrow_id)
        except BaseException:
            # (failed or cancelled) the forwarder never sees this connection: closed
            # here, or it would stay open for good, kept alive by its keepalives
            writer.close()
            raise
        self._slas[writer.connection_id] = escrow.sla
        self._deposits[writer.connection_id] = escrow.deposited
        self._escrows[writer.connection_id] = escrow.id
        stats.connections += 1
        stats.tunnels += 1
        self.book.touch()
        return reader, writer

    async def _close_when_ended(
        self, writer: DTPStreamWriter, attempt: OpenAttempt | None = None
    ) -> None:
        with contextlib.suppress(DTPError):
            await writer.wait_closed()
        assert writer.connection_id is not None
        try:
            weigh = self.refunds is not None and self.refunds.weigh_gas
            await close_on_ledger(self.ledger, self.identity, writer.connection_id, weigh_gas=weigh)
        finally:
            if attempt is not None:
                attempt.release()  # the book's look at it: settled, or to be

    def _meter_for(self, writer: DTPStreamWriter) -> Meter | None:
        connection_id = writer.connection_id
        assert connection_id is not None
        sla = self._slas.pop(connection_id)
        deposit = self._deposits.pop(connection_id)
        escrow_id = self._escrows.pop(connection_id)
        if not sla.paid:
            return None
        scope = ReceiptScope(self.ledger.package_id, escrow_id, connection_id)
        return Meter(self.identity, scope, sla, deposit, every_bytes=0)

    async def start(self) -> tuple[str, int]:
        """Bind the local UDP port; returns the bound address."""
        listen = (self.config.listen.host, self.config.listen.port)
        self._forwarder = await AsyncUdpForwarder.start(
            listen,
            self._connect,
            meter_for=self._meter_for,
            idle_timeout=self.config.idle_timeout,
        )
        self.show_listen()
        return self._forwarder.address

    def show_listen(self) -> None:
        """Put the bound address and our target in the status (the row is shared by
        name: a forwarder started in our place, then closed again, had put its own
        there)."""
        if self._forwarder is not None:
            host, port = self._forwarder.address
            self.stats.listen = f"udp://{host}:{port}"
            self.stats.target = f"udp {self.config.target}"
            self.book.touch()

    def refresh(self) -> None:
        """Copy the forwarder's datagram counters into the status book: bytes, open
        flows, receipts sent and MIST paid, and datagrams dropped as unpaid, beyond the
        deposit, as denials (the column a UDP service counts its unpaid drops in, so a
        forward whose deposit pays for nothing shows it)."""
        if self._forwarder is None:
            return
        snap = self._forwarder.stats.snapshot()
        snap["sessions"] = self._forwarder.sessions
        was, self._counted = self._counted, snap

        def grown(name: str) -> int:
            return snap[name] - was.get(name, 0)

        row = self.stats
        # (the forwarder's "out" is local clients → the tunnel: the row's "in")
        row.bytes_in += grown("bytes_out")
        row.bytes_out += grown("bytes_in")
        row.datagrams_in += grown("datagrams_out")
        row.datagrams_out += grown("datagrams_in")
        row.active_tunnels += grown("sessions")
        row.receipts_sent += grown("receipts_sent")
        row.fees_paid += grown("fees_paid")
        row.deny("unpaid", grown("dropped_unpaid"))
        for reason in DROPPED:
            if count := grown(f"dropped_{reason}"):
                row.datagrams_dropped[reason] = row.datagrams_dropped.get(reason, 0) + count
        self.book.touch()

    def stop_listening(self) -> None:
        """Nothing to stop before drain: a UDP port has no backlog of connections."""

    def retire(self) -> None:
        """Replaced by a reload: close at once (UDP flows simply start over)."""
        if self._forwarder is not None:
            asyncio.get_running_loop().create_task(self._forwarder.close())

    async def release(self) -> None:
        """Retire and wait until the port is closed."""
        if self._forwarder is not None:
            await self._forwarder.close()  # closing twice (at drain) does nothing
            self.refresh()

    @property
    def active_tunnels(self) -> int:
        return 0 if self._forwarder is None else self._forwarder.sessions

    @property
    def open_connections(self) -> int:
        """DTP connections open now (one per flow)."""
        return self.active_tunnels

    async def drain(self, timeout: float) -> None:
        """End every flow (each settles its final receipt) and close the port; then give
        the flows' half-closes on the ledger a moment (the process may end next)."""
        if self._forwarder is not None:
            try:
                # (asyncio.timeout, not wait_for: see dtp.daemon._runner's wait)
                async with asyncio.timeout(max(timeout, 1.0)):
                    await self._forwarder.close()
            except TimeoutError:
                # (the close, cancelled, still closed the port) caught: the daemon's
                # shut-down goes on to the services' drain, their settlements, the
                # status save, the ledger's close and the state lock's release
                logger.warning(
                    "UDP forward did not close within the drain timeout",
                    extra=kv(forward=self.config.name, timeout=max(timeout, 1.0)),
                )
            self.refresh()
        if self._watchers:
            await asyncio.wait(set(self._watchers), timeout=max(timeout, 1.0))
