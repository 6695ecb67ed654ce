"""The ledger connections a ledger-admitted DTP server is serving (blocking and asyncio
servers alike): one DTP connection per ledger connection at a time, and, when asked, each
ledger connection settled as its DTP connection ends.

An unpaid server that admits through the ledger (``create_server(ledger=...)``) claims
nothing. Left alone, its clients' ledger connections stay Open until the half-close
timeout (10 minutes): the deposits wait that long, and each connection counts against
the host's connection limits meanwhile (a client with a limit of one cannot reconnect).
With ``settle_on_close`` the server closes and settles each one as its DTP connection
ends -- the client is refunded its whole deposit at once -- in a thread of its own,
as a settlement is a ledger transaction (seconds on Sui) and the release comes from
whichever thread closed the connection, or from an event loop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING

from dtp.admission import LedgerAdmission
from dtp.errors import DTPError
from dtp.metering import ConnectionIds
from dtp.settlement import claim_and_settle

if TYPE_CHECKING:
    from dtp.chain.ledger import Ledger
    from dtp.chain.objects import Settlement
    from dtp.keys import HostIdentity

__all__ = ["ServedConnections", "served_connections"]

logger = logging.getLogger(__name__)


class ServedConnections:
    """Ledger connection IDs in service. :meth:`reserve` takes one as a DTP connection on
    it is admitted; :meth:`release` gives it back when that connection ends -- after
    settling it on the ledger, when built with ``settle=True`` (the ID stays taken until
    the settlement is done: a DTP connection arriving on it meanwhile is refused, as it
    would be by the ledger once the connection is settled)."""

    def __init__(
        self,
        ledger: Ledger | None = None,
        identity: HostIdentity | None = None,
        *,
        settle: bool = False,
    ) -> None:
        if settle and (ledger is None or identity is None):
            raise ValueError("settling on close needs the ledger and the host's identity")
        self._ids = ConnectionIds()
        self._ledger = ledger
        self._identity = identity
        self._settle = settle
        self._lock = threading.Lock()
        self._due: collections.deque[str] = collections.deque()
        self._busy = False  # a settling thread runs (it takes _due until it is empty)
        self._idle = threading.Condition(self._lock)
        #: Settlements made (connection ID, settlement), oldest first; at most
        #: ``KEEP_SETTLEMENTS`` are kept.
        self.settlements: collections.deque[tuple[str, Settlement]] = collections.deque(
            maxlen=self.KEEP_SETTLEMENTS
        )

    KEEP_SETTLEMENTS = 1024

    def reserve(self, connection_id: str) -> str | None:
        """Take ``connection_id`` for a DTP connection: None, or the refusal to give the
        client when a DTP connection is already served on it."""
        if self._ids.reserve(connection_id):
            return None
        return (
            f"connection {connection_id} is already served: "
            "one DTP connection per ledger connection"
        )

    def release(self, connection_id: str) -> None:
        """The DTP connection on ``connection_id`` ended. Never blocks: a settlement is
        queued for the settling thread, which frees the ID when it is done."""
        if not self._settle:
            self._ids.release(connection_id)
            return
        with self._lock:
            self._due.append(connection_id)
            if self._busy:
                return
            self._busy = True
        try:
            threading.Thread(target=self._run, name="dtp-settle", daemon=True).start()
        except RuntimeError:  # no thread to be had: settled here, late but done
            # (left busy with no thread, no settlement ran again, every ID released
            # stayed reserved, and the caller's close() raised the RuntimeError)
            logger.warning("no thread to settle %s in: settling it in this one", connection_id)
            self._run()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._due:
                    self._busy = False
                    self._idle.notify_all()
                    return
                cid = self._due.popleft()
            try:
                self._settle_one(cid)
            finally:
                self._ids.release(cid)

    def _settle_one(self, cid: str) -> None:
        assert self._ledger is not None and self._identity is not None
        try:
            settlement = claim_and_settle(self._ledger, self._identity, cid, None)
        except DTPError as exc:
            # the client's refund then waits for its half-close timeout, as without us
            logger.warning("could not settle connection %s on close: %s", cid, exc)
            return
        except Exception:
            logger.exception("settling connection %s on close failed", cid)
            return
        if settlement is not None:
            self.settlements.append((cid, settlement))

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait until every settlement queued so far is done (True), or ``timeout``
        seconds (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def __contains__(self, connection_id: object) -> bool:
        return connection_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def served_connections(admit: object, identity: HostIdentity, settle: bool) -> ServedConnections:
    """A server's :class:`ServedConnections` for its admission hook ``admit``: settling
    on close (``settle``) needs the ledger a :class:`~dtp.admission.LedgerAdmission`
    reads (ValueError with any other hook, or none). A hook that keeps its own (its
    ``served`` attribute: a paid server's, which must learn of every DTP connection it
    admitted ending, served or not, to settle those it did not serve) has it used."""
    own = getattr(admit, "served", None)
    if isinstance(own, ServedConnections):
        if settle:
            raise ValueError("settle_on_close with an admission hook that settles itself")
        return own
    if not settle:
        return ServedConnections()
    if not isinstance(admit, LedgerAdmission):
        raise ValueError("settle_on_close needs ledger admission (ledger, host_id and port)")
    return ServedConnections(admit.ledger, identity, settle=True)
