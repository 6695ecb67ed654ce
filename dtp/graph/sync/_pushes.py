"""The pushes of a sync session (:class:`~dtp.graph.sync.SyncSession`): the batches its
comparison decided on and the leaves the peer asked for again, made a batch at a time as
the peer reads, and the check that a catch-up's END can still come."""

from __future__ import annotations

from dtp.graph._batch import batch_count
from dtp.graph._summaries import LEAF_LEVEL
from dtp.graph.sync._session_state import SessionState


class SessionPushes(SessionState):
    """The pushes of a sync session, made in the writer's thread (data_to_send)."""

    def _push_step(self) -> None:
        """Make the next batch of what is to be pushed (the writer's thread): one batch
        at most, read from the table now, so that what is queued stays about one batch
        however large the push."""
        with self._lock:
            if self._closed:
                self._pushes.clear()
                self._node_push = None
                self._export = None
                self._peer_wants.clear()
                self._want_push = None
                return
            if self._export is not None:
                try:
                    batch = next(self._export, None)
                except RuntimeError:
                    # the table gained a field since the last batch: the export's walk
                    # would skip entries. Go on by summary nodes, which new fields do
                    # not disturb (those were forwarded live): every level-1 node,
                    # again from the start -- at most one more pass over the table.
                    self._export = None
                    nodes = sorted(self.graph.child_summaries(0, 0))
                    self._pushes.extend((1, prefix) for prefix in nodes)
                    self._maybe_end()
                    return
                if batch is None:
                    self._export = None
                    self._maybe_end()
                elif batch_count(batch):
                    self._send_batch(batch)
                return
            if self._pushes or self._node_push is not None:
                if self._next_node_batch():
                    return
                self._maybe_end()
            if self._peer_wants or self._want_push is not None:
                self._next_want_batch()

    def _next_node_batch(self) -> bool:
        """Send the next batch of the summary nodes to push (lock held); False when
        none is left. The nodes queued when a walk starts are walked together (their
        batches are full however small each node), those queued meanwhile next."""
        while True:
            if self._node_push is None:
                if not self._pushes:
                    return False
                nodes = list(self._pushes)
                self._pushes.clear()
                self._node_push = self.graph.node_batches(nodes)
            batch = next(self._node_push, None)
            if batch is not None:
                self._send_batch(batch)
                return True
            self._node_push = None

    def _next_want_batch(self) -> None:
        """Send the next batch of the leaves the peer asked for again (lock held)."""
        while True:
            if self._want_push is None:
                if not self._peer_wants:
                    return
                leaves = [(LEAF_LEVEL, leaf) for leaf in self._peer_wants]
                self._peer_wants.clear()
                self._want_push = self.graph.node_batches(leaves)
            batch = next(self._want_push, None)
            if batch is not None:
                self._send_batch(batch)
                return
            self._want_push = None

    def _end_stalled(self) -> bool:
        """The peer's END is in and ours is not out, yet nothing of ours is left to
        make that would send it: only more from the peer could (a state the peer's END
        is refused in). The runners, which stop reading at the peer's END, check it
        rather than wait for our END without a deadline."""
        with self._lock:
            return (
                self.end_received
                and not self.end_sent
                and not self._closed
                and not self._pushes
                and self._node_push is None
                and self._export is None
            )
