"""The UDP side of a served connection: each connection to a UDP service is one client
flow, relayed to a backend (round robin over the service's backends) and billed per
datagram (docs/udp.md), its counters copied into the service's status row as they grow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from dtp.daemon._logs import kv, log_failure
from dtp.daemon._served import ServedConnection, service_row
from dtp.daemon._served_tunnels import refuse_tunnels
from dtp.daemon._settlements import ServedSide
from dtp.daemon._tasks import end_for_cleanup
from dtp.errors import DTPError, TunnelError
from dtp.hostid.udp import UdpStats
from dtp.hostid.udp._asyncio import relay_udp_async
from dtp.ledger.receipt import Receipt
from dtp.transport.asyncio._streams import DTPStreamReader

__all__ = ["DROPPED", "UDP_TALLY", "UdpFlows"]

logger = logging.getLogger("dtp.daemon._services")  # (the exposing side logs under one name)

_UDP_ROW = {
    "bytes_in": "bytes_in",
    "bytes_out": "bytes_out",
    "datagrams_in": "datagrams_in",
    "datagrams_out": "datagrams_out",
    "dropped_rate_limited": "rate_limited",
}
"""A UDP relay's counters (:class:`dtp.hostid.udp.UdpStats`) and the service status columns
they add to; its ``dropped_*`` counters add to ``datagrams_dropped`` by reason (and
``dropped_unpaid`` to the denials, as ``unpaid``)."""

DROPPED = (
    "unpaid",
    "rate_limited",
    "oversized",
    "backlog",
    "send_failed",
    "finishing",
    "no_session",
)
"""The reasons the daemon's UDP relays and forwarders drop a datagram
(``UdpStats.dropped_<reason>``). They are the asyncio ones, which take each datagram as it
arrives: the blocking ones' ``dropped_unread`` never happens here."""

UDP_TALLY = 0.5
"""Seconds between copies of a UDP flow's counters into its service's status row (the
status file is written at most twice a second anyway)."""


@dataclass(eq=False)
class UdpFlows(ServedSide):
    """The flows of the UDP services' connections."""

    _turns: dict[int, int] = field(default_factory=dict, init=False)
    """Round robin over each UDP service's backends, per port: one counter shared
    by all services sent flows alternating between two of them to the same
    backend of each, every time."""

    async def serve(self, conn: ServedConnection, reader: DTPStreamReader) -> None:
        """Relay ``conn``'s flow until it idles out (or the drain finishes it), then end
        the connection."""
        service, terms, writer = conn.service, conn.terms, conn.writer
        stats = service_row(self.book, service)
        turn = self._turns.get(service.port, 0)
        self._turns[service.port] = turn + 1
        backend = service.backends[turn % len(service.backends)]
        settlements = self.settlements
        billing = None
        if terms.sla.paid:

            def kept(receipt: Receipt) -> None:
                settlements.kept(stats, conn, receipt)
                settlements.count_held()  # (this flow holds one now; it never showed)

            billing = self.fees().udp_billing(
                terms, service.credit_datagrams, kept, service.loss_allowance
            )
            # a connection the daemon saw before a restart: its receipts so far were
            # counted then (as the TCP side's receipt reader starts from them; a store
            # that cannot be read is the settlement's to report)
            with contextlib.suppress(DTPError):
                if (stored := self.fees().held(conn.connection_id)) is not None:
                    conn.earned = conn.accepted = stored.total_amount
        stats.tunnels += 1
        stats.active_tunnels += 1
        udp_stats = UdpStats()
        conn.finish = asyncio.Event()
        counted = dict.fromkeys([*_UDP_ROW, *(f"dropped_{r}" for r in DROPPED)], 0)

        def tally() -> None:
            # the flow's counters into the row as they grow, as a TCP tunnel's bytes
            # are, so that a long flow shows in the status while it runs (and a killed
            # daemon's row holds what passed)
            snap = udp_stats.snapshot()
            for name, row_name in _UDP_ROW.items():
                grown = snap[name] - counted[name]
                if grown:
                    setattr(stats, row_name, getattr(stats, row_name) + grown)
                    counted[name] = snap[name]
                    self.book.touch()
            for reason in DROPPED:
                name = f"dropped_{reason}"
                grown = snap[name] - counted[name]
                if grown:
                    dropped = stats.datagrams_dropped
                    dropped[reason] = dropped.get(reason, 0) + grown
                    counted[name] = snap[name]
                    if reason == "unpaid":
                        stats.deny("unpaid", grown)
                    self.book.touch()

        async def tally_often() -> None:
            while True:
                await asyncio.sleep(UDP_TALLY)
                tally()

        tallying = asyncio.ensure_future(tally_often())
        # a TCP forward pointed at this UDP service opens streams nobody would answer:
        # its local client would wait for the tunnel's status for good
        refuser = asyncio.ensure_future(
            refuse_tunnels(
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
            # done, so that the flow is settled and its counts are whole
            errors, cancelled = await end_for_cleanup(refuser, tallying)
            for error in errors:
                # logged, not raised: the flow is still settled after it
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
            if billing is not None:
                # the newest receipt accepted (the billing's, checked and queued for the
                # disk), read before the settlement forgets it: as a TCP connection's,
                # what its claim earns should its write not land
                with contextlib.suppress(DTPError):  # (the settlement reports the store's)
                    if (newest := self.fees().held(conn.connection_id)) is not None:
                        conn.accepted = max(conn.accepted, newest.total_amount)
            settled = await self.end(conn)
            self.book.touch()
            logger.info(
                "udp flow closed",
                extra=kv(
                    service=service.name,
                    connection=conn.connection_id,
                    datagrams=snap["datagrams_in"],
                    **settled.moved,
                ),
            )
            if cancelled is not None:
                raise cancelled
