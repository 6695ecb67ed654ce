"""How a paid server hooks into its DTP server, once for both: its ledger admission
(:class:`PaidAdmission`) and its count of the connections served
(:class:`ReportedConnections`); these only carry the calls, the rules are
:class:`~dtp.hostid.paid._server_core.PaidServerCore`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from dtp.hostid._admission import LedgerAdmission
from dtp.hostid._served import ServedConnections, ServiceLimits
from dtp.hostid.paid._server_core import PaidServerCore
from dtp.ledger._objects import normalize_id

if TYPE_CHECKING:
    from dtp.hostid._admission import Admitted, PeerInfo
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger

__all__ = ["PaidAdmission", "ReportedConnections"]

#: What a paid server's admission step returns: the verdict (blocking server), or an
#: awaitable of it (asyncio server: the DTPServer awaits it, so that the verdict is
#: given on the event loop, where close() runs)
_V = TypeVar("_V")


class ReportedConnections(ServedConnections):
    """The ledger connections a paid server's DTP server serves (the DTPServer reserves
    and releases them), reported to the paid server: ``refused_at_limit`` for one
    refused at one of the Host's connection limits (the paid server settles it);
    ``reserved`` (with whether the reservation was made) and ``released``, when given,
    after each reservation and release."""

    def __init__(
        self,
        refused_at_limit: Callable[[str], None],
        reserved: Callable[[str, bool], None] | None = None,
        released: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.ends_carriers = False  # (the paid server settles before its end closes)
        self._refused_at_limit = refused_at_limit
        self._reserved = reserved
        self._released = released

    def reserve(
        self,
        connection_id: str,
        client: str | None = None,
        limits: ServiceLimits | None = None,
    ) -> str | None:
        refusal = super().reserve(connection_id, client, limits)
        if self._reserved is not None:
            self._reserved(connection_id, refusal is None)
        return refusal

    def release(self, connection_id: str) -> None:
        super().release(connection_id)
        if self._released is not None:
            self._released(connection_id)

    def refused_at_limit(self, connection_id: str) -> None:
        self._refused_at_limit(connection_id)


class PaidAdmission(LedgerAdmission, Generic[_V]):
    """A paid server's ledger admission: remembering what it read of each connection,
    giving each verdict through the server's ``admit(peer, check)``, and keeping the
    count of connections served (:attr:`served`). ``identity``: ``withdraw_as``."""

    def __init__(
        self,
        admit: Callable[[PeerInfo, Callable[[PeerInfo], str | None]], _V],
        served: ReportedConnections,
        ledger: Ledger,
        host_id: str,
        port: int,
        open_grace: float | None = None,
        identity: HostIdentity | None = None,
    ) -> None:
        super().__init__(
            ledger, host_id, port, remember=True, open_grace=open_grace, withdraw_as=identity
        )
        self._admit = admit
        #: The DTPServer's served connections: the paid server ends a connection's
        #: count there before settling it, and learns of those refused at a limit
        self.served = served

    def __call__(self, peer: PeerInfo) -> _V:  # type: ignore[override]
        return self._admit(peer, super().__call__)

    def take_view(self, cid: str) -> Admitted | None:
        """What this admission read of ledger connection ``cid``, taken, when it is
        current (:meth:`PaidServerCore.admission_view`); None: read it again."""
        key = normalize_id(cid, "connection ID")
        return PaidServerCore.admission_view(self.take_admitted(key), key)
