"""One DTP connection the services daemon serves, as its parts share it: the host's
admission and handler (:mod:`dtp.daemon._services`), its tunnels
(:mod:`dtp.daemon._served_tunnels`) or UDP flow (:mod:`dtp.daemon._udp_flows`), its
settlement (:mod:`dtp.daemon._settlements`) and the Host's firewall read while it is
served (:mod:`dtp.daemon._host_policy`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from dtp.daemon._config import ServiceConfig
from dtp.daemon._fees import ConnectionTerms
from dtp.daemon._state import ServiceStats, StatusBook
from dtp.payments._ratelimit import ClientBuckets
from dtp.transport.asyncio._streams import DTPStreamWriter

__all__ = ["LEDGER_CHECK", "ServedConnection", "service_row"]

LEDGER_CHECK = 30.0
"""Seconds between reads of each open connection's state on the ledger (at the policy
refreshes): one its client half-closed there while still served is closed and settled
at once: once its half-close timeout (10 min) had passed since that half-close, the
client could settle first and take back what no claim had taken, the usage served
meanwhile unpaid (dtp.hostid.paid's ``ledger_check_interval``). One opened with a
subscription now over (expired, its offer withdrawn or sold with the host) is closed
and ended then too (docs/escrow.md §13)."""


@dataclass(eq=False)
class ServedConnection:
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
    :meth:`dtp.daemon._settlements.Settlements.earn`)."""
    accepted: int = 0
    """The total of the newest receipt accepted (checked; stored, or on its way)."""

    @property
    def subscription(self) -> str | None:
        """The Subscription the connection was opened with (None: a metered one)."""
        return self.terms.subscription


def service_row(book: StatusBook, service: ServiceConfig) -> ServiceStats:
    """``service``'s row in the status (made on first use), with its port."""
    row = book.service(service.name)
    row.port = service.port
    return row
