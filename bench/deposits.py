"""Ending a benchmark's paid connections on a throwaway ledger without leftovers.

A connection whose fee does not cover the gas of its settlement is not settled by its
server: its client half-closes it, and the process's refund collector
(:func:`dtp.payments._refunds.refunds_for`) waits out the half-close timeout (10 minutes
of ledger time) before taking the deposit back. A collector that still waits when the
process exits logs each deposit with the ``dtp refund`` command that recovers it, which
is what a real client needs to know. A benchmark's ledger is thrown away with its row,
so the row takes its deposits back itself before closing that ledger.
"""

from __future__ import annotations

from dtp.errors import ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments._refunds import collect_refund, refunds_for

__all__ = ["take_back_deposits"]


def take_back_deposits(ledger: Ledger, identity: HostIdentity) -> int:
    """Settle every connection of ``identity``'s that waits in the process's refund
    collector of ``ledger``, then stop that collector; how many were settled here. On a
    :class:`LocalLedger` its clock is moved past the half-close timeout first (the
    timeout exists to leave a server time for its last receipt). Call it only once the
    row's servers are gone -- killed, or released (``wait_released``: a paid server's
    ``close()`` returns before the settlements of the connections it was serving): the
    moved clock lets the client settle first, and a server still settling then is paid
    nothing, its receipts written off. On another ledger, whose clock cannot be moved,
    the collector is stopped without its report: the ledger goes with the row."""
    collector = refunds_for(ledger, identity)
    waiting = list(collector.pending())
    collector.close(log_waiting=False)
    if not waiting or not isinstance(ledger, LocalLedger):
        return 0
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS + 1_000)
    taken = 0
    for connection_id in waiting:
        try:
            collect_refund(ledger, identity, connection_id)
        except ObjectNotFound:
            continue  # (settled and deleted by its server since the list was taken)
        taken += 1
    return taken
