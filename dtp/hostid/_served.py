"""The ledger connections a ledger-admitted DTP server is serving: one DTP connection
per ledger connection, within the Host's connection limits, counted here over the live
connections (the ledger counts none: a Host written at every open would serialize its
clients on Sui; docs/escrow.md §2). With ``settle_on_close`` each one is settled as it
ends or is refused at a limit, in a thread of its own (a ledger transaction), so the
client is refunded at once rather than after the half-close timeout.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dtp.errors import DTPError
from dtp.payments._gate import ConnectionIds
from dtp.payments._settlement import claim_and_settle
from dtp.transport._hooks import Reservations

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Settlement
    from dtp.ledger.interface import Ledger
    from dtp.transport._hooks import PeerInfo

__all__ = ["ServedConnections", "SettlingReservations", "reservations_of"]

logger = logging.getLogger(__name__)


class ServiceLimits(Protocol):
    """The connection limits of the service a connection is admitted to
    (:class:`dtp.hostid._admission.ConnectionLimits`)."""

    @property
    def port(self) -> int: ...

    def refusal(self, client: str, of_client: int, of_service: int) -> str | None: ...


class ServedConnections:
    """Ledger connection IDs in service: :meth:`reserve` as a DTP connection on one is
    admitted, :meth:`release` as it ends (with ``settle=True`` after settling it, the
    ID taken meanwhile but no longer counted against the limits)."""

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
        # the connections counted against the limits: ID -> (client, port)
        self._live: dict[str, tuple[str, int]] = {}
        self._live_lock = threading.Lock()
        self._ledger = ledger
        self._identity = identity
        self._settle = settle
        #: Nothing is left to do at a connection's end (Reservations.ends_carriers):
        #: unless it settles, a server that only admits does not keep its clients
        #: waiting for its end of the carrier
        self.ends_carriers = not settle
        #: Where :meth:`take` reads the Host's connection limits: the admission that
        #: admitted the client, as it last read them (``LedgerAdmission.reservations``
        #: sets it).
        self.limits_of: Callable[[], ServiceLimits | None] | None = None
        #: What :meth:`take` calls with the ID of a connection it refused: the admission
        #: drops what it remembered of it, which nobody would take now
        #: (``LedgerAdmission.reservations`` sets its ``take_admitted``).
        self.forget: Callable[[str], object] | None = None
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

    def take(self, peer: PeerInfo) -> tuple[str | None, Callable[[], None] | None]:
        """A server's reservation (:class:`dtp.transport._hooks.Reservations`) for
        ``peer``, whom the ledger admitted by its connection ID: :meth:`reserve`'s
        refusal, or None and the :meth:`release` to run as its connection ends."""
        cid = peer.connection_id
        assert cid is not None  # (the ledger admitted it by this ID)
        limits = None if self.limits_of is None else self.limits_of()
        refusal = self.reserve(cid, peer.address, limits)
        if refusal is not None:
            if self.forget is not None:
                # (after refused_at_limit: a paid server's takes what it settles with)
                self.forget(cid)
            return refusal, None
        return None, functools.partial(self.release, cid)

    def reserve(
        self,
        connection_id: str,
        client: str | None = None,
        limits: ServiceLimits | None = None,
    ) -> str | None:
        """Take ``connection_id`` for a DTP connection of ``client``: None, or the
        refusal when one is served on it already or ``limits`` leave no room."""
        with self._live_lock:
            refusal = None
            if limits is not None and client is not None and connection_id not in self._ids:
                of_client = of_service = 0
                for live_client, port in self._live.values():
                    of_client += live_client == client
                    of_service += port == limits.port
                refusal = limits.refusal(client, of_client, of_service)
            if refusal is None:
                if not self._ids.reserve(connection_id):
                    return (
                        f"connection {connection_id} is already served: "
                        "one DTP connection per ledger connection"
                    )
                if client is not None:
                    self._live[connection_id] = (client, -1 if limits is None else limits.port)
                return None
        self.refused_at_limit(connection_id)  # (outside the lock: it may start a thread)
        return refusal

    def refused_at_limit(self, connection_id: str) -> None:
        """:meth:`reserve` refused ``connection_id`` at a connection limit: with
        ``settle=True`` it is settled now, the deposit refunded at once (docs/escrow.md
        §2); else the client takes it back after the half-close timeout."""
        if self._settle and self._ids.reserve(connection_id):
            self._queue(connection_id)

    def ended(self, connection_id: str) -> None:
        """The DTP connection on ``connection_id`` ended: no longer counted against the
        limits, its ID taken until :meth:`release`, so a client reconnecting at once is
        not refused by the very connection it closed."""
        with self._live_lock:
            self._live.pop(connection_id, None)

    def release(self, connection_id: str) -> None:
        """The DTP connection on ``connection_id`` ended (:meth:`ended`), and its ID is
        given back. Never blocks: a settlement is queued for the settling thread, which
        gives the ID back when it is done."""
        self.ended(connection_id)
        if not self._settle:
            self._ids.release(connection_id)
            return
        self._queue(connection_id)

    def _queue(self, connection_id: str) -> None:
        """Settle ``connection_id`` (its ID taken) in the settling thread, which gives
        the ID back when it is done."""
        with self._lock:
            self._due.append(connection_id)
            if self._busy:
                return
            self._busy = True
        try:
            threading.Thread(target=self._run, name="dtp-settle", daemon=True).start()
        except RuntimeError:  # no thread to be had: settled here, late but done
            # (left busy with no thread, no settlement would run again, every ID released
            # would stay reserved, and the caller's close() raise the RuntimeError)
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


class SettlingReservations(Reservations, Protocol):
    """The transport's :class:`~dtp.transport._hooks.Reservations` as a host-ID server keeps
    them (:class:`ServedConnections`): what a connection ends leaves to do on the ledger
    (with ``settle_on_close``, its settlement) can be waited for."""

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait until what the ended connections left to do is done (True), or
        ``timeout`` seconds (False)."""
        ...


def reservations_of(
    admit: object, identity: HostIdentity, settle: bool
) -> SettlingReservations | None:
    """A host-ID server's reservations from its admission hook
    (:meth:`dtp.hostid._admission.LedgerAdmission.reservations`), or None for a hook
    without (ValueError with ``settle``: only what reserves can settle)."""
    make: Callable[[HostIdentity, bool], SettlingReservations] | None = getattr(
        admit, "reservations", None
    )
    if make is None:
        if settle:
            raise ValueError("settle_on_close needs ledger admission (ledger, host_id and port)")
        return None
    return make(identity, settle)
