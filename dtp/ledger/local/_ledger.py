"""LocalLedger: the embedded ledger's class. Its calls are :mod:`dtp.ledger._calls`' and the Ledger
mixins', run on its rows by ``LocalStore._move``; its reads are mixins."""

from __future__ import annotations

from dtp.identity.keys import HostIdentity
from dtp.ledger._calls import LedgerCalls
from dtp.ledger._move_call import MoveCall
from dtp.ledger._objects import OpenedConnection
from dtp.ledger.interface import PendingOpen
from dtp.ledger.local._calls_versions import VersionCalls
from dtp.ledger.local._reads import LedgerReads
from dtp.ledger.local._reads_apps import AppReads
from dtp.ledger.local._store import LocalStore
from dtp.ledger.local._tx import derive_object_id, tx_digest


class LocalLedger(
    LedgerCalls,
    AppReads,
    VersionCalls,
    LedgerReads,
    LocalStore,
):
    """The embedded ledger (see :mod:`dtp.ledger.local`). ``path`` is a file (created if missing)
    or ``":memory:"``: a ``str`` or ``os.PathLike`` (TypeError otherwise);
    ``clock_ms`` freezes the clock at that time when given. Bad arguments are refused
    before anything is created.

    A handle may be used from many threads. It also survives ``fork()``: in the child, a
    file ledger opens a connection of its own at its first use (SQLite connections must
    not cross a fork, so the inherited one is left untouched) and draws fresh nonces,
    so parent and child keep sharing the file as any two processes do. A ``:memory:``
    ledger's child goes on with its own copy, which diverges from the parent's from
    then on. After :meth:`close` every call raises :class:`~dtp.errors.LedgerUnavailable`.

    A file that is not a ledger (not SQLite, or another program's SQLite database, left
    untouched), that a newer schema wrote, or that fails under the handle (damaged, a
    writer holding it past the busy timeout) raises
    :class:`~dtp.errors.LedgerUnavailable` naming it, never a bare sqlite3 error."""

    #: A transaction runs in one SQLite transaction, its checks with its writes, and
    #: charges no gas: one refused costs nothing (Ledger.free_refusals)
    free_refusals = True

    def _prepared(self, signer: HostIdentity, call: MoveCall) -> PendingOpen:
        """The open signed now; its IDs derived from the transaction's digest, as Sui
        derives them."""
        signed = self._signed(signer, call.module, call.function, *self._move_args(call))

        def run() -> OpenedConnection:
            return self._opened(self._execute(*signed))

        # transport_control::open creates the connection first, then its escrow
        digest = tx_digest(signed[1])
        return PendingOpen(derive_object_id(digest, 0), derive_object_id(digest, 1), run)
