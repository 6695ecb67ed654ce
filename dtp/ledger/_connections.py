"""A client's or a host's connections as the ledger holds them, with what each can
still claim or refund and when (``dtp connections``, ``dtp refund``; docs/cli.md).

Connections are found through their ``ConnectionOpened`` events (docs/escrow.md §11:
they carry the client, the host and the escrow), read with a filter the ledger applies
itself where it can (a Sui node filters on the sender and the event type, so a client's
own opens are found without reading every event of the package), and bounded: a scan
reads at most ``limit`` of them and says whether it reached the end. Each connection's
TransportControl and Escrow are then read as they are now.

The timing rule is the Move package's (``transport_control::settle``): the server may
settle at any time; the client only once the connection's half-close timeout has passed
since the first close, which leaves the server that long to claim its last receipt. The
timeout is each connection's own, fixed when it opened (its SLA's: 10 minutes unless its
provider chose longer, docs/escrow.md §7). Times are the ledger's clock.

Only the :class:`~dtp.ledger.interface.Ledger` interface is used: it works on either ledger.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtp.errors import InvalidArgument, ObjectNotFound
from dtp.ledger._objects import (
    ConnectionState,
    Escrow,
    EventFilter,
    TransportControl,
    normalize_id,
)

if TYPE_CHECKING:
    from dtp.ledger.interface import Ledger
    from dtp.ledger.receipt import Receipt

__all__ = [
    "ConnectionReport",
    "ConnectionScan",
    "claimable_with",
    "client_settles_at",
    "find_connections",
    "format_duration",
    "format_ms",
    "half_close_timeout_ms",
]

#: The event every open emits, whatever the payment model (subscribed and sponsored
#: opens emit theirs besides).
OPENED: Final = "dtp::transport_control::ConnectionOpened"
#: Events read per call while scanning.
_PAGE: Final = 1000


def format_duration(ms: int) -> str:
    """A half-close timeout in words: ``10 min``, ``1 h``, ``1 h 30 min``, ``7 d`` (a
    time that is not whole minutes in seconds: ``600.5 s``)."""
    if ms % 60_000:
        return f"{ms / 1000:g} s"
    if ms and ms % 86_400_000 == 0:
        return f"{ms // 86_400_000} d"
    hours, minutes = divmod(ms // 60_000, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def format_ms(ms: int) -> str:
    """A ledger time (ms since the Unix epoch) as ``YYYY-MM-DD HH:MM:SS UTC``."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def half_close_timeout_ms(connection: TransportControl) -> int:
    """How long (ms of ledger time) after the first close of ``connection`` its client
    may settle alone: the time its server has, from then on, to claim its last receipt
    (``transport_control::settle``). Everything off-chain that times itself against
    that timeout asks here, so that it follows the connection's own terms (its SLA's,
    fixed when it opened)."""
    return connection.half_close_timeout_ms


def client_settles_at(connection: TransportControl) -> int | None:
    """The ledger time from which the client may settle ``connection`` alone (its own
    half-close timeout after its first close); None while it is Open (the client must
    half-close first) and once it is settled."""
    if connection.settled:
        return None
    return connection.client_settles_at_ms


def claimable_with(receipt: Receipt | None, escrow: Escrow) -> int:
    """MIST the server would get by claiming ``receipt`` on ``escrow`` now: what it adds
    to the claims so far. Nothing for a receipt the escrow has seen (its nonce is not
    above the latest claimed), for one beyond the deposit (the ledger refuses it:
    ``EReceiptExceedsDeposit``, docs/escrow.md §6), for none, and once settled."""
    if (
        receipt is None
        or escrow.settled
        or receipt.nonce <= escrow.latest_nonce
        or receipt.total_amount > escrow.deposited
    ):
        return 0
    return max(0, receipt.total_amount - escrow.claimed)


@dataclass(frozen=True)
class ConnectionReport:
    """One connection as the ledger holds it now, from either end's point of view."""

    connection: TransportControl
    escrow: Escrow
    now_ms: int
    """The ledger clock when it was read."""
    claimable: int | None
    """MIST the server can still claim with the latest receipt it holds; None when
    unknown (no receipt store was looked at)."""

    @property
    def refundable(self) -> int:
        """MIST the settlement would return to the client: the escrow's balance less
        what is claimable (at most the balance when that is unknown)."""
        return max(0, self.escrow.balance - (self.claimable or 0))

    @property
    def settles_at_ms(self) -> int | None:
        """:func:`client_settles_at` of the connection."""
        return client_settles_at(self.connection)

    def state_text(self) -> str:
        """``Open``, ``HalfClosed by client 0x… since <time>``, ``Closed since <time>``
        (``, settled`` once settled)."""
        tc = self.connection
        if tc.state == ConnectionState.OPEN:
            text = "Open"
        elif tc.state == ConnectionState.HALF_CLOSED:
            by = tc.half_closed_by or ""
            role = "client" if by == tc.client else "server" if by == tc.server else "?"
            text = f"HalfClosed by {role} {by} since {format_ms(tc.half_closed_at_ms or 0)}"
        else:
            text = f"Closed since {format_ms(tc.closed_at_ms or tc.half_closed_at_ms or 0)}"
        return text + (", settled" if tc.settled else "")

    def when(self, as_server: bool) -> str:
        """When the settlement can happen, for the server (``as_server``) or the client:
        ``settle now``, ``refundable by the client after <time>``, ``half-close first``,
        or ``settled``."""
        if self.connection.settled:
            return "settled"
        if as_server:
            return "settle now"  # (the server may settle at any time, docs/escrow.md §7)
        at = self.settles_at_ms
        if at is None:
            return (
                "half-close first (dtp refund): then refundable by the client "
                f"{format_duration(self.connection.half_close_timeout_ms)} later"
            )
        if self.now_ms >= at:
            return "settle now"
        return f"refundable by the client after {format_ms(at)}"


@dataclass(frozen=True)
class ConnectionScan:
    """What :func:`find_connections` found."""

    reports: list[ConnectionReport]
    """Oldest first."""
    complete: bool
    """False when the scan stopped at its limit with events left unread."""
    events_read: int
    """The ``ConnectionOpened`` events of the client or host the scan read (at most
    its limit)."""


def find_connections(
    ledger: Ledger,
    *,
    client: str | None = None,
    host: str | None = None,
    settled: bool = False,
    limit: int = 10_000,
    receipt_of: Callable[[str], Receipt | None] | None = None,
) -> ConnectionScan:
    """The connections ``client`` opened, or those opened on ``host`` (exactly one of
    them), not yet settled unless ``settled``. At most ``limit`` of their
    ``ConnectionOpened`` events are read (a Sui node filtering on the client as the
    sender, on the event type for a host); the scan says whether it got to the end,
    which is the ledger's end when the scan began (``Ledger.read_events``): events that
    land meanwhile do not keep it going. ``receipt_of(connection_id)`` gives the latest
    receipt the server holds (a receipt store's), from which each report's claimable
    amount is computed; without it that amount is unknown."""
    if (client is None) == (host is None):
        raise InvalidArgument("find_connections takes a client or a host, not both or neither.")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidArgument(f"limit must be a positive integer of events, got {limit!r}.")
    if client is not None:
        who, key = normalize_id(client, "address"), "client"
        wanted = EventFilter(type=OPENED, sender=who)
    else:
        who, key = normalize_id(host or "", "host ID"), "host"
        wanted = EventFilter(type=OPENED, object_id=who)
    found: dict[str, str] = {}  # connection -> escrow, in the order opened
    cursor: str | None = None
    read = 0
    complete = False
    while True:
        room = limit - read
        # the limit reached, one more is asked for: whether any is left unread
        got = ledger.read_events(cursor, wanted, min(_PAGE, room) if room > 0 else 1)
        if room <= 0 and got.events:
            break
        read += len(got.events)
        for event in got.events:
            if event.fields.get(key) == who:
                found.setdefault(str(event["connection"]), str(event["escrow"]))
        if got.at_end:
            # the end as the ledger stood at this read: every open before the scan
            # began is read (a cursor alone never stops moving on a busy ledger)
            complete = True
            break
        if got.cursor == cursor and not got.events:
            break  # (a read that neither moves nor ends: nothing more to read now)
        cursor = got.cursor
    now = ledger.clock_ms()
    reports: list[ConnectionReport] = []
    for connection_id, escrow_id in found.items():
        try:
            tc, escrow = ledger.get_objects([connection_id, escrow_id])
        except ObjectNotFound:
            continue  # (not on this ledger any more: nothing to claim or refund)
        if not isinstance(tc, TransportControl) or not isinstance(escrow, Escrow):
            continue
        if tc.settled and not settled:
            continue
        claimable = None
        if receipt_of is not None:
            claimable = claimable_with(receipt_of(connection_id), escrow)
        reports.append(ConnectionReport(tc, escrow, now, claimable))
    return ConnectionScan(reports, complete, read)
