"""What a graph gives its sync sessions (:mod:`dtp.graph.sync`, protocol.md 6): change
listeners registered atomically with the summary they follow, the summaries, and the
table's updates as batches, whole or under summary nodes, made as they are asked for."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from dtp.graph._batch import entries
from dtp.graph.arguments import check_int, check_listener
from dtp.graph.store_base import ChangeListener, GraphBase
from dtp.graph.summaries import FANOUT_BITS, LEAF_BITS, LEAF_LEVEL, check_node
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

_BATCH_UPDATES = 4096  # updates per batch built in Python (pushes of summary nodes)
_BATCH_BYTES = 1 << 20  # about the bytes of one such batch (as the export's)


class SyncSource(GraphBase):
    """Listeners, summaries and batches for sync sessions; :meth:`export` and
    :meth:`snapshot` for tools."""

    def add_listener(self, listener: ChangeListener, owner: object) -> None:
        """Call ``listener(changed_batch, origin)`` after every merge that changes the
        table, except those whose origin is ``owner``."""
        check_listener(listener)
        with self._lock:
            self._check_open()
            self._listeners.append((listener, owner))

    def listen(
        self,
        listener: ChangeListener,
        owner: object,
        then: Callable[[tuple[int, int]], None] | None = None,
    ) -> tuple[int, int]:
        """Register a listener (as :meth:`add_listener`) and return the root summary,
        atomically: every change after the summary reaches the listener. ``then(root)``
        runs inside that, before any change can reach the listener (a sync session
        queues its HELLO there: queued after, a change committed in between went out
        first, and the peer refused it as a message before HELLO)."""
        check_listener(listener)
        with self._lock:
            self._check_open()
            root = self._ensure_view().root()
            self._listeners.append((listener, owner))
            if then is not None:
                then(root)
            return root

    def remove_listener(self, owner: object) -> None:
        """Remove the listeners registered for ``owner``."""
        with self._lock:
            self._listeners = [(fn, o) for fn, o in self._listeners if o is not owner]

    def root_summary(self) -> tuple[int, int]:
        """(digest, field count) of the whole table."""
        with self._lock:
            self._check_open()
            return self._ensure_view().root()

    def child_summaries(self, level: int, prefix: int) -> dict[int, tuple[int, int]]:
        """Non-empty children of summary node (level, prefix): prefix -> (digest, count).

        ``level`` is 0..LEAF_LEVEL - 1 (leaves have no children) and ``prefix`` one of
        that level's nodes (0 at the root); TypeError / ValueError otherwise."""
        check_node("child_summaries()", (level, prefix), LEAF_LEVEL - 1)
        with self._lock:
            self._check_open()
            return self._ensure_view().children(level, prefix)

    def node_batches(self, nodes: list[tuple[int, int]]) -> Iterator[bytes]:
        """The table's updates under summary nodes ``(level, prefix)`` (level
        0..LEAF_LEVEL), as batches of at most 4096 updates and about 1 MiB (one update
        larger than that goes alone), made one at a time as they are asked for.

        The nodes are checked at the call (TypeError / ValueError), not at the first
        batch. Each batch reads its slice of the table under the lock, so that at most
        one is held and other writers wait for one batch, not for a whole push. Values
        may change between batches (each carries the value current when it is made); a
        field added after the walk passed its soul is not in them (a sync session
        forwards it live). LocalProtocolError once the graph is closed."""
        try:
            pairs = iter(nodes)
        except TypeError:  # (only this: one raised while iterating is the caller's own)
            raise TypeError(
                f"node_batches() takes (level, prefix) pairs, not {type(nodes).__name__}"
            ) from None
        checked = [check_node("node_batches()", node, LEAF_LEVEL) for node in pairs]
        return self._node_batches(checked)

    def _node_batches(self, nodes: list[tuple[int, int]]) -> Iterator[bytes]:
        leaves = (
            leaf
            for level, prefix in nodes
            for leaf in range(
                prefix << (LEAF_BITS - FANOUT_BITS * level),
                (prefix + 1) << (LEAF_BITS - FANOUT_BITS * level),
            )
        )
        # Where the walk is: the current leaf's souls and the current soul's fields not
        # yet read. Only names are copied (references, at C speed); values are read a
        # batch at a time, and the copies make the walk immune to the view changing or
        # being rebuilt between batches.
        souls: list[bytes] = []
        next_soul = 0
        soul = b""
        fields: list[bytes] = []
        next_field = 0
        done = False
        while not done:
            updates: list[HamUpdate] = []
            size = 0
            with self._lock:
                self._check_open()
                view = self._ensure_view()
                get = self._table.get
                while len(updates) < _BATCH_UPDATES and size < _BATCH_BYTES:
                    if next_field < len(fields):
                        field = fields[next_field]
                        next_field += 1
                        entry = get(soul, field)
                        if entry is not None:
                            updates.append(HamUpdate(soul, field, entry[0], entry[1]))
                            # (the encoded size, but for a few bytes of lengths)
                            size += len(soul) + len(field) + len(entry[1]) + 16
                    elif next_soul < len(souls):
                        soul = souls[next_soul]
                        next_soul += 1
                        fields = list(view.fields.get(soul, ()))
                        next_field = 0
                    else:
                        leaf = next(leaves, None)
                        if leaf is None:
                            done = True
                            break
                        souls = list(view.leaves.get(leaf, ()))
                        next_soul = 0
            if updates:
                yield encode_ham_batch(updates)

    def export(self, max_batch_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole table as canonical batches, straight from the HAM table, read at
        the first batch.

        ``max_batch_bytes``: an int >= 1 (a batch is never smaller than one maximal
        entry needs, nor larger than 64 MiB however large this is), checked at the call
        (TypeError / ValueError): 0, a negative size or ``True`` were taken as the
        smallest batches."""
        check_int("export(max_batch_bytes=...)", max_batch_bytes, 1)
        return self._export(max_batch_bytes)

    def _export(self, max_batch_bytes: int) -> Iterator[bytes]:
        with self._lock:
            self._check_open()
            batches = list(self._table.export(max_batch_bytes))
        yield from batches

    def export_stream(self, max_batch_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole table as canonical batches, made one at a time as they are asked
        for (each under the lock), so that at most one is held; for the push of a sync
        session, which must not hold a copy of the table while its peer reads.

        ``max_batch_bytes`` as for :meth:`export` (checked at the call). Values may
        change between batches (each carries the value current when it is made). A
        field added between two of them makes the next one raise RuntimeError: adding
        may move the table's entries, so the rest of the walk would skip some.
        LocalProtocolError once the graph is closed."""
        check_int("export_stream(max_batch_bytes=...)", max_batch_bytes, 1)
        return self._export_stream(max_batch_bytes)

    def _export_stream(self, max_batch_bytes: int) -> Iterator[bytes]:
        with self._lock:
            self._check_open()
            batches = self._table.export(max_batch_bytes)
        while True:
            with self._lock:
                self._check_open()
                batch = next(batches, None)
            if batch is None:
                return
            yield batch

    def snapshot(self) -> dict[tuple[bytes, bytes], tuple[float, bytes]]:
        """Every field as (soul, field) -> (state, stored value) -- for tests and tools."""
        out: dict[tuple[bytes, bytes], tuple[float, bytes]] = {}
        for batch in self.export():
            for soul, field, state, value, _ in entries(batch):
                out[soul, field] = (state, value)
        return out
