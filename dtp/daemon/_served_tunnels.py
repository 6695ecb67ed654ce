"""The TCP side of a served connection: the tunnels a forwarder opens on it, each
spliced to a backend of the service, counted, rate limited and held while the client's
receipts lag; and stream 0, which carries those receipts (docs/daemon.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dtp.daemon._balancer import BackendPool
from dtp.daemon._config import ServiceConfig
from dtp.daemon._fees import RECEIPT_SIZE
from dtp.daemon._host_policy import POLICY_REFRESH
from dtp.daemon._logs import kv, log_failure
from dtp.daemon._served import ServedConnection, service_row
from dtp.daemon._settlements import ServedSide
from dtp.daemon._tasks import end_for_cleanup
from dtp.daemon._tunnel import STATUS_OK, TcpLeg, refusal, splice_leg
from dtp.errors import DTPError, InvalidReceipt, TunnelError
from dtp.ledger.receipt import RECEIPT_ENCODING_VERSION, Receipt
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

__all__ = ["UNPAID_PAUSE", "UNPAID_REQUESTS", "UNPAID_WAIT", "ServedTunnels"]

logger = logging.getLogger("dtp.daemon._services")  # (the exposing side logs under one name)

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


@dataclass(eq=False)
class ServedTunnels(ServedSide):
    """The tunnels of the TCP services' connections.

    ``services`` and ``pools`` are the host's service table and backend pools as
    configured now (a tunnel looks its service up again: a reload may have changed its
    backends)."""

    services: Mapping[int, ServiceConfig]
    pools: Mapping[int, BackendPool]

    async def serve(self, conn: ServedConnection, reader: DTPStreamReader) -> None:
        """Serve ``conn``'s tunnels until the connection ends, then end it (its tunnels
        done first)."""
        service, writer = conn.service, conn.writer
        writer.set_datagram_sink(self._stray_datagrams(conn))
        acceptor = asyncio.ensure_future(self._accept(conn))
        try:
            if conn.terms.sla.paid:
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
                # logged, not raised: the connection is still settled after it, and a
                # fault that stopped the connection's tunnels is still told
                log_failure(
                    logger,
                    "tunnel acceptor failed",
                    error,
                    service=service.name,
                    connection=conn.connection_id,
                )
            if conn.tunnels:
                await asyncio.gather(*conn.tunnels, return_exceptions=True)
            settled = await self.end(conn)
            logger.info(
                "connection closed",
                extra=kv(
                    service=service.name,
                    connection=conn.connection_id,
                    bytes=conn.bytes,
                    **settled.moved,
                ),
            )
            if cancelled is not None:
                raise cancelled

    async def _read_receipts(self, conn: ServedConnection, reader: DTPStreamReader) -> None:
        """Stream 0 carries receipts until the client closes the connection."""
        stats = service_row(self.book, conn.service)
        settlements = self.settlements

        def kept(receipt: Receipt) -> None:
            # on disk now: it counts (receipts of one connection are kept in order; one
            # its settlement claimed first was counted then)
            settlements.kept(stats, conn, receipt)
            conn.paid_bytes = receipt.total_bytes
            conn.paid_requests = receipt.total_requests
            settlements.count_held()

        fees = self.fees()
        stored = fees.held(conn.connection_id)
        if stored is not None:  # a connection the daemon saw before a restart
            conn.earned = conn.accepted = stored.total_amount
        while True:
            try:
                # the version byte first: a forwarder of another release signs receipts
                # of another size, and waiting for this one's would hold its first one
                # unanswered (Receipt.decode refuses it: UnsupportedReceiptVersion)
                data = await reader.readexactly(1)
                if data[0] == RECEIPT_ENCODING_VERSION:
                    data += await reader.readexactly(RECEIPT_SIZE - 1)
            except (asyncio.IncompleteReadError, DTPError):
                return
            try:
                receipt = fees.accept(conn.terms, data, kept)
            except InvalidReceipt as exc:
                logger.warning(
                    "bad receipt",
                    extra=kv(connection=conn.connection_id, error=str(exc)),
                )
                conn.writer.abort(f"bad receipt: {exc}")
                return
            conn.accepted = max(conn.accepted, receipt.total_amount)

    def _stray_datagrams(self, conn: ServedConnection) -> Callable[[bytes], None]:
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

    async def _accept(self, conn: ServedConnection) -> None:
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
        conn: ServedConnection,
        reader: DTPStreamReader,
        writer: DTPStreamWriter,
    ) -> None:
        # Look the service up again: a reload may have changed its backends.
        service = self.services.get(conn.service.port, conn.service)
        stats = service_row(self.book, service)
        pool = self.pools.get(service.port)

        buckets = conn.buckets
        charge = self.charger(conn, service)

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
            while wait := self.unpaid_hold(conn, service):
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

    def charger(
        self, conn: ServedConnection, service: ServiceConfig
    ) -> Callable[[int], float | None]:
        """What a tunnel of ``conn`` calls with each chunk it moves either way (what it
        needs bound once here: this runs at every chunk)."""
        buckets = conn.buckets
        book = self.book
        unpaid_hold = self.unpaid_hold

        def charge(n: int) -> float | None:
            """Count ``n`` bytes either way: how long the tunnel holds its reading (the
            receipts lagging, the client's byte rate), None for not at all. At most
            POLICY_REFRESH at a time: the tunnel asks again (``n`` 0) when a hold ends,
            and the client's debt is then looked at under the limits in force (a
            limit the Host lifts or raises while a tunnel waits out a long hold at the
            old rate reaches it without waiting for that hold to end)."""
            conn.bytes += n
            book.touch()
            if conn.terms.sla.paid:
                unpaid = unpaid_hold(conn, service)
            else:
                # (nothing to pay: never behind, as unpaid_hold says, without the call)
                conn.unpaid_since = None
                unpaid = 0.0
            rate = 0.0
            # (a bucket of rate 0 has no limit: its charge and delay are 0 at once, so
            # neither they nor the clock are asked at every chunk)
            if buckets and buckets.bytes.rate:
                now = time.monotonic()
                rate = buckets.bytes.charge(n, now) if n else buckets.bytes.delay(now)
            if not (unpaid or rate):
                return None
            return min(max(unpaid, rate), POLICY_REFRESH) or None

        return charge

    def unpaid_hold(self, conn: ServedConnection, service: ServiceConfig) -> float:
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
        # on their way; a service priced by the request, or mixed, counts the unpaid
        # requests too, not the bytes alone)
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
            service_row(self.book, service).deny("unpaid")
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


async def refuse_tunnels(conn: ServedConnection, reason: str) -> None:
    """Answer every stream the client opens on ``conn`` with a refusal (``reason``)."""
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
