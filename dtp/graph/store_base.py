"""What a :class:`~dtp.graph.store.Graph` knows of itself, declared once for every part
of it (writes, merges, reads, subscriptions, what sync sessions read), and the members
they all use: the open check, a stored value's decoding, and the lazily built summaries."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.graph import namespace
from dtp.graph._batch import entries
from dtp.graph.clock import HybridClock
from dtp.graph.summaries import SummaryView
from dtp.graph.values import JSON, decode_value
from dtp.identity.keys import HostIdentity

if TYPE_CHECKING:
    from dtp.graph.formats import Migration
    from dtp.graph.history import History
    from dtp.graph.rules import RuleSet
    from dtp.graph.writeback import WriteBack

MAX_STATE = sys.float_info.max
"""The machine state to merge our own writes and log at: nothing is ahead of it."""

ChangeListener = Callable[[bytes, object], None]
"""``listener(changed_batch, origin)``: a sync session forwarding changes to its peer."""


class GraphBase:
    """The state of one graph, declared once for every part of
    :class:`~dtp.graph.store.Graph` (which sets it all in its constructor)."""

    _table: Any
    """The HAM table (``dtp.native.core.HamGraph``, C or the pure-Python twin): every
    field's (state, stored value bytes), and the deferred queue."""
    ham_backend: str
    """``"c"`` or ``"python"``: which HAM table the graph runs on."""
    identity: HostIdentity | None
    """The host key that signs writes to its own user space ``~<address>/...``."""
    replica_id: bytes
    """This replica's 16 random bytes (kept in the SQLite file), sent in a sync HELLO."""
    migration: Migration | None
    """What opening the file migrated, when it was of format 1 (docs/graph.md, "Format
    versions"); None otherwise."""
    clock: HybridClock
    """Issues the states of local writes; says how far ahead a peer's state may be."""
    stats: dict[str, Any]
    """Counters of merges and what they did, and of rebuilds of the summaries."""
    rules: RuleSet
    """The graph's validation rules, run before every local write and every peer's
    update merges (docs/graph.md, "Rules")."""
    history: History
    """The edit history of the nodes tracked: ``graph.history(soul)`` reads one
    (docs/graph.md, "History")."""
    _lock: threading.RLock
    """Guards the table and everything below: sync sessions merge in their threads."""
    _view: SummaryView | None
    """The soul index and summaries, None while a large merge left them to rebuild."""
    _listeners: list[tuple[ChangeListener, object]]
    """Sync sessions' change listeners, each with its owner (not sent its own changes)."""
    # when the deferred queue may hold something due (Graph.__init__ says how)
    _due: list[float]
    _due_untracked: bool
    _due_retry: float
    _due_backoff: float
    _writeback: WriteBack | None
    """The write-back to the SQLite file; None for an in-memory graph."""
    _closed: bool

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("the graph is closed", ErrorCode.ARG)

    @staticmethod
    def _value_of(soul: bytes, stored: bytes) -> JSON:
        if namespace.is_user_space(soul):
            stored = namespace.open_envelope(stored)
        return decode_value(stored)

    def _ensure_view(self) -> SummaryView:
        view = self._view
        if view is None:
            view = SummaryView()
            for batch in self._table.export():
                view.add(entries(batch))
            self._view = view
            self.stats["view_rebuilds"] += 1
        return view
