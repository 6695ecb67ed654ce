"""The blocking paid server's admission and handing over
(:class:`~dtp.hostid.paid.blocking_server.PaidServer` is made of this part and others):
the ledger admission's verdicts counted as work the release waits for, the reservation
of an admitted connection's ID, and the settlement, nothing claimed, of an admitted
connection the server will not serve (closed while admitting, refused at a connection
limit, aborted before it was served). The rules are the core's
(:class:`~dtp.hostid.paid.server_core.PaidServerCore`); the twin of
:mod:`dtp.hostid.paid.asyncio_server_handover`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.hostid.paid.blocking_server_state import PaidServerState
from dtp.hostid.paid.policy import CLOSED_REFUSAL
from dtp.hostid.paid.server_core import AdmitStep

if TYPE_CHECKING:
    from dtp.hostid.admission import Admitted, PeerInfo


class ServerHandover(PaidServerState):
    """Admitting a client and handing its connection over to be served, or settling it
    when nobody will serve it (a part of
    :class:`~dtp.hostid.paid.blocking_server.PaidServer`)."""

    def _admit(self, peer: PeerInfo, check: Callable[[PeerInfo], str | None]) -> str | None:
        """The admission of ``peer`` (``check``: the ledger's verdict). Counted until
        the DTP connection it admits ends (:meth:`_unreserved`), so that the release
        cannot stop the receipt writer before that connection is served or settled."""
        with self._live_lock:
            if not self.core.admission_starts():
                return CLOSED_REFUSAL
        carried = False
        try:
            verdict = check(peer)
            with self._live_lock:
                step = self.core.admitted(verdict, peer.connection_id)
            if step is AdmitStep.VERDICT or peer.connection_id is None:
                return verdict
            if step is AdmitStep.SERVE:
                # the DTPServer reserves the connection ID next, in this thread, and the
                # count goes on with that reservation (_reserved)
                carried = True
                return None
            # Settled before the refusal goes out, so the client finds its deposit refunded.
            self._settle_unserved(peer.connection_id, self._take_admitted(peer.connection_id))
            return CLOSED_REFUSAL
        finally:
            if not carried:
                self._done()

    def _reserved(self, cid: str, reserved: bool) -> None:
        """The DTPServer reserved ``cid`` for the DTP connection just admitted, or
        refused it -- one is served on it already, or the Host's connection limits
        leave no room for it (:meth:`_refused_at_limit` has its settlement under way
        then) -- and the admission's count ends here."""
        with self._live_lock:
            last = self.core.reserved(cid, reserved)
        if last:
            self._release()

    def _unreserved(self, cid: str) -> None:
        """The engine of an admitted DTP connection is released (under its lock, in
        whichever thread ended it). Never served -- its handshake finished as the server
        closed, and it was aborted -- it is settled now, in a thread of its own (a
        ledger transaction); the admission's count ends once it is."""
        with self._live_lock:
            unserved = self.core.unreserved(cid)
        if not unserved:
            self._done()
            return
        self._settle_aside(cid, self._take_admitted(cid))

    def _refused_at_limit(self, cid: str) -> None:
        """The DTPServer refused ``cid`` at one of the Host's connection limits (in the
        handshake's thread, the admission still counted): a valid, funded connection
        nobody will serve, settled now, nothing claimed, in a thread of its own, so that
        the client's deposit comes back whole at once rather than after the half-close
        timeout (docs/escrow.md §2, as the daemon does)."""
        with self._live_lock:
            self.core.work_starts()  # (the release waits for the settlement)
        # taken now, before the DTPServer's refusal drops what admission read of it
        self._settle_aside(cid, self._take_admitted(cid))

    def _take_admitted(self, cid: str) -> Admitted | None:
        """What admission read of ledger connection ``cid``, taken (None: read again)."""
        return self.admission.take_view(cid)

    def _settle_aside(self, cid: str, admitted: Admitted | None) -> None:
        """:meth:`_settle_dropped` in a thread of its own (a ledger transaction)."""
        try:
            threading.Thread(
                target=self._settle_dropped,
                args=(cid, admitted),
                name="dtp-paid-settle",
                daemon=True,
            ).start()
        except RuntimeError:  # the process is out of threads
            self._settle_dropped(cid, admitted)

    def _settle_dropped(self, cid: str, admitted: Admitted | None) -> None:
        try:
            self._settle_unserved(cid, admitted)
        finally:
            self._done()

    def _settle_unserved(self, cid: str, admitted: Admitted | None) -> None:
        """Close and settle the ledger connection of an admitted DTP connection the
        server will not serve (``admitted``: what admission read of it, taken): no
        receipt came on it, so nothing is claimed and the client is refunded its whole
        deposit at once. Left alone when another DTP connection on it is being served
        or settled (that one's settlement closes it)."""
        with self._live_lock:
            key = self.core.reserve_unserved(cid)
        if key is None:
            return
        try:
            self._settle(cid, admitted)
        finally:
            self._serving.release(key)

    def _done(self) -> None:
        """One _handle call, admission or settlement ended: the last one after close()
        releases the server."""
        with self._live_lock:
            last = self.core.work_ends()
        if last:
            self._release()
