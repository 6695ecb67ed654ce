"""What follows every change of a graph's table, from a write, a peer's batch or a
deferred update come due: the log, the summaries, the sync sessions and the subscribers
hear of it, in that order (docs/graph.md); and when deferred updates may be due."""

from __future__ import annotations

import bisect
import logging

from dtp.errors import DTPError
from dtp.graph._batch import Entry, batch_count, entries
from dtp.graph.arguments import name_text
from dtp.graph.changes import Change, Subscription
from dtp.graph.queries import QueryEngine
from dtp.graph.store_base import GraphBase

_VIEW_DROP = 2048  # a changed batch larger than this and a quarter of the table drops the view
_DUE_TRACKED = 4096  # deferred states tracked one by one (the smallest ones)
_BLIND_RETRY_MIN = 1.0  # ms: shortest wait between blind advances (states not tracked)
_BLIND_RETRY_MAX = 1000.0  # ms: longest one (while they find nothing)

# (every part of a Graph logs as dtp.graph.store, the module users know it by)
logger = logging.getLogger("dtp.graph.store")


class GraphCommits(GraphBase):
    """The steps after a merge that changed the table (lock held), and the deferred
    updates' schedule that every write and merge asks first."""

    # (set by Graph.__init__; declared by the parts that own them)
    _subs: dict[str, list[Subscription]]
    _query: QueryEngine

    def _track_deferred(self, states: list[float]) -> None:
        """Note the states of updates the table just deferred (lock held)."""
        due = self._due
        due.extend(states)
        due.sort()
        if len(due) > _DUE_TRACKED:
            # the largest: the queue holds them, untracked, none due before the smallest
            dropped = due[_DUE_TRACKED]
            del due[_DUE_TRACKED:]
            if not self._due_untracked or dropped < self._due_retry:
                self._due_retry = dropped
            self._due_untracked = True

    def _advance_due(self, changes: list[Change]) -> int:
        """Apply the deferred updates now due, asking the table only when one may be
        (lock held)."""
        if not self._table.deferred_count:
            self._due.clear()
            self._due_untracked = False
            return 0
        machine = self.clock.machine_state()
        due = self._due
        tracked_due = bool(due) and due[0] <= machine
        untracked_due = self._due_untracked and self._due_retry <= machine
        if not tracked_due and not untracked_due:
            return 0
        changed = self._table.advance(machine)
        del due[: bisect.bisect_right(due, machine)]  # applied (or beaten by newer values)
        n = batch_count(changed)
        if not self._table.deferred_count:
            due.clear()
            self._due_untracked = False
        elif self._due_untracked and self._due_retry <= machine:
            # the untracked ones left are all above ``machine``: ask again a little
            # later, backing off while asking for them alone finds nothing (a queue of
            # far-future junk)
            self._due_backoff = (
                min(self._due_backoff * 2, _BLIND_RETRY_MAX)
                if not tracked_due and not n
                else _BLIND_RETRY_MIN
            )
            self._due_retry = machine + self._due_backoff
        self._changed(changed, None, changes)
        return n

    def _changed(self, changed: bytes, origin: object, changes: list[Change]) -> None:
        """Everything that follows a merge that applied updates (lock held)."""
        n = batch_count(changed)
        if not n:
            return
        self.stats["applied"] += n
        index = self._query.index
        if index is not None:
            # (queued before the log's buffer: a flush that it sets off writes the query
            # tables and the log's rows together)
            index.changed(changed, n, len(self._table))
        writeback = self._writeback
        if writeback is not None:
            writeback.append(changed)
        decoded: list[Entry] | None = None
        view = self._view
        if view is not None:
            if n > _VIEW_DROP and n * 4 > view.size:
                self._view = None
            else:
                decoded = entries(changed)
                view.add(decoded)
        # live queries that read a field of the batch are due
        decoded = self._query.touch(changed, decoded)
        for listener, owner in self._listeners:
            if owner is not origin:
                # the change is committed: a failing sync session must not make the
                # write raise, nor keep it from the other sessions and the subscribers
                try:
                    listener(changed, origin)
                except Exception:
                    logger.exception("graph: change listener %r raised", listener)
        if self._subs:
            if decoded is None:
                decoded = entries(changed)
            self._collect_changes(decoded, changes)

    def _collect_changes(self, decoded: list[Entry], changes: list[Change]) -> None:
        subs = self._subs
        for soul_b, field_b, state, value, _ in decoded:
            soul = name_text(soul_b)
            if soul is None or soul not in subs:
                continue
            field = name_text(field_b)
            if field is None:
                continue
            try:
                decoded_value = self._value_of(soul_b, value)
            except DTPError:
                continue
            changes.append(Change(soul, field, decoded_value, state))

    def _deliver(self, changes: list[Change]) -> None:
        if self._query.due:
            # (after the subscribers: a slow live query does not hold them back)
            try:
                self._deliver_changes(changes)
            finally:
                self._query.deliver()
        else:
            self._deliver_changes(changes)

    def _deliver_changes(self, changes: list[Change]) -> None:
        if not changes:
            return
        with self._lock:
            targets = [(c, list(self._subs.get(c.soul, ()))) for c in changes]
        for change, subs in targets:
            for sub in subs:
                if sub.active and (sub.field is None or sub.field == change.field):
                    # the change is already committed: a failing callback must not make
                    # put()/merge() raise (nor end a sync session), nor starve the others
                    try:
                        sub.callback(change)
                    except Exception:
                        logger.exception(
                            "graph: subscriber %r of %r raised", sub.callback, change.soul
                        )
