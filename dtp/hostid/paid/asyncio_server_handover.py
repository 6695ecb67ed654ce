"""The asyncio paid server's admission and handing over
(:class:`~dtp.hostid.paid.asyncio_server.PaidAioServer` is made of this part and others):
the ledger admission's verdicts given on the event loop and counted as work the release
waits for, and the settlement, nothing claimed, of an admitted connection the server
will not serve (closed while admitting, refused at a connection limit, aborted before it
was served). The rules are the core's
(:class:`~dtp.hostid.paid.server_core.PaidServerCore`); the twin of
:mod:`dtp.hostid.paid.blocking_server_handover`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtp.hostid.paid.asyncio_server_state import PaidAioServerState
from dtp.hostid.paid.policy import CLOSED_REFUSAL
from dtp.hostid.paid.server_core import AdmitStep

if TYPE_CHECKING:
    from dtp.hostid.admission import Admitted, PeerInfo


class AioServerHandover(PaidAioServerState):
    """Admitting a client and handing its connection over to be served, or settling it
    when nobody will serve it (a part of
    :class:`~dtp.hostid.paid.asyncio_server.PaidAioServer`)."""

    async def _admit(self, peer: PeerInfo, check: Callable[[PeerInfo], str | None]) -> str | None:
        """The admission of ``peer`` on the loop (``check``, the ledger's verdict, in a
        thread), counted as work the release waits for. Admitted as the server closes,
        nobody will serve it: it is settled at once (nothing claimed, the whole deposit
        refunded) and refused, rather than left Open until the half-close timeout."""
        if not self.core.admission_starts():
            return CLOSED_REFUSAL
        try:
            verdict = await asyncio.to_thread(check, peer)
            step = self.core.admitted(verdict, peer.connection_id)
            if step is not AdmitStep.SETTLE_AND_REFUSE or peer.connection_id is None:
                # (the callback, _handle, counts it next without yielding to the loop)
                return verdict
            await self._settle_unserved(peer.connection_id, self._take_admitted(peer.connection_id))
            return CLOSED_REFUSAL
        finally:
            self._done()

    def _take_admitted(self, cid: str) -> Admitted | None:
        """What admission read of ledger connection ``cid``, taken (None: read again)."""
        return None if self.admission is None else self.admission.take_view(cid)

    async def _settle_unserved(self, cid: str, admitted: Admitted | None) -> None:
        """Close and settle the ledger connection of an admitted DTP connection the
        server will not serve (``admitted``: what admission read of it, taken; no
        receipt came on it: nothing is claimed), unless another DTP connection on it is
        being served or settled (its settlement closes it)."""
        key = self.core.reserve_unserved(cid)
        if key is None:
            return
        try:
            await self._settle(key, None, admitted)
        finally:
            self._serving.release(key)

    def _refused_at_limit(self, cid: str) -> None:
        """The DTPServer refused ``cid`` at one of the Host's connection limits (on the
        loop, in the step that ran the admission): a valid, funded connection nobody
        will serve, settled now, nothing claimed, so that the client's deposit comes
        back whole at once rather than after the half-close timeout (docs/escrow.md §2,
        as the daemon does). Counted until settled: the release waits for it."""
        self.core.work_starts()
        # taken now, before the DTPServer's refusal drops what admission read of it
        task = asyncio.ensure_future(self._settle_refused(cid, self._take_admitted(cid)))
        self._refunds.add(task)
        task.add_done_callback(self._refunds.discard)

    async def _settle_refused(self, cid: str, admitted: Admitted | None) -> None:
        try:
            await self._settle_unserved(cid, admitted)
        finally:
            self._done()

    def _done(self) -> None:
        """One _handle call, admission or settlement ended: the last one after close()
        releases the server."""
        if self.core.work_ends():
            self._release()
