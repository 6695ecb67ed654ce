"""A Yjs document fed with update records, as the graph stores them: docs/graph.md,
"Collaborative values", says the records (an author's update, its seq, its clock and
its **deps**) and, in "Order, and the edges of pycrdt", why they are applied in causal
order.

:class:`YDocument` hands the records to a ``pycrdt`` document so that pycrdt never holds
anything pending and ends where Yjs ends, whatever order they come in
(bench/yjs_edges.py measures it): an author's records in their order, each once the
document has its deps; should pycrdt still leave structs pending (an author that lied
about its deps), once the document has every clock its records announced, what came
since is applied again as one merged update. The records stay as they came:
``Doc.get_update`` leaves out what pycrdt holds pending.
"""

from __future__ import annotations

from typing import Any

from dtp import _extras

try:
    import pycrdt
except ImportError as exc:  # pragma: no cover - depends on the install
    raise _extras.missing("collab", "Collaborative values", exc) from exc

__all__ = ["YDocument", "read_varuint", "read_vector"]


def read_varuint(data: bytes, at: int) -> tuple[int, int]:
    """One of lib0's variable-length unsigned integers (ULEB128) at ``at``: (it, where
    the next begins); ValueError for one that ends with the data, or beyond 64 bits."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("data that ends inside a number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def read_vector(encoded: bytes) -> dict[int, int]:
    """A Yjs state vector (``Y.encodeStateVector``): {client id: its next clock}."""
    count, at = read_varuint(encoded, 0)
    out: dict[int, int] = {}
    for _ in range(count):
        client, at = read_varuint(encoded, at)
        out[client], at = read_varuint(encoded, at)
    if at != len(encoded):
        raise ValueError("not a Yjs state vector")
    return out


class YDocument:
    """A ``pycrdt`` document and the records given to it (see the module's doc).

    ``client_id``: the document's own Yjs client id (its local edits); one the records
    never used. Not thread-safe: the graph's collaborative values call it under a lock
    of their own."""

    def __init__(self, client_id: int | None = None) -> None:
        self.doc: Any = pycrdt.Doc(client_id=client_id)
        """The ``pycrdt.Doc``: read it; edit it only through the graph's handles."""
        self._next: dict[int, int] = {}  # author -> the seq of its next record to apply
        # records given and not applied yet: author -> seq -> (clock, deps delta, update)
        self._waiting: dict[int, dict[int, tuple[int, dict[int, int], bytes]]] = {}
        self._deps: dict[int, dict[int, int]] = {}  # author -> its deps so far
        self._expected: dict[int, int] = {}  # author -> its clock after its records
        self._applied: list[bytes] = []  # updates since the document last had every clock
        self._seen: dict[int, int] = {}  # the others' clocks our last local record named

    def has(self, client: int, seq: int) -> bool:
        """Whether the record (client, seq) was given (applied or waiting)."""
        return seq < self._next.get(client, 0) or seq in self._waiting.get(client, {})

    def next_seq(self, client: int) -> int:
        """The seq of ``client``'s next record: how many of its records were applied."""
        return self._next.get(client, 0)

    def waiting(self) -> int:
        """Records given and not applied yet (a gap before them, deps missing)."""
        return sum(len(w) for w in self._waiting.values())

    def vector(self) -> dict[int, int]:
        """The document's state vector (what pycrdt integrated)."""
        return read_vector(self.doc.get_state())

    def add(self, client: int, seq: int, clock: int, deps: dict[int, int], update: bytes) -> int:
        """Give record ``seq`` of author ``client`` (its clock after it: ``clock``; its
        deps: ``deps``); returns how many records were applied (0: a record given
        already, or one that waits). A record pycrdt cannot apply raises
        ``ValueError`` and is dropped (its author's later records then wait for it)."""
        if self.has(client, seq):
            return 0
        self._waiting.setdefault(client, {})[seq] = (clock, deps, update)
        if seq != self._next.get(client, 0):
            return 0
        return self._pump(client)

    def _pump(self, client: int) -> int:
        """Apply every waiting record whose turn has come, starting with ``client``'s."""
        applied = 0
        have = self.vector()
        ready = [client]
        while ready:
            author = ready.pop()
            waiting = self._waiting.get(author)
            n = self._next.get(author, 0)
            while waiting and n in waiting:
                clock, delta, update = waiting[n]
                deps = {**self._deps.get(author, {}), **delta}
                if any(have.get(c, 0) < t for c, t in deps.items() if c != author):
                    break
                del waiting[n]
                self._deps[author] = deps
                n += 1
                self._next[author] = n
                try:
                    self._apply(author, clock, update)
                finally:
                    if not waiting:
                        del self._waiting[author]
                applied += 1
                have = self.vector()
                # whoever waited for this author's clock may go on
                ready.extend(a for a in self._waiting if a != author and a not in ready)
        return applied

    def record_local(self, client: int, clock: int, update: bytes) -> tuple[int, dict[int, int]]:
        """Count a local edit's update (already in :attr:`doc`) as ``client``'s next
        record; returns its seq and its deps (what changed of the others' clocks since
        the previous local record)."""
        seq = self._next.get(client, 0)
        self._next[client] = seq + 1
        self._expected[client] = max(self._expected.get(client, 0), clock)
        delta = {c: t for c, t in self.vector().items() if c != client and self._seen.get(c) != t}
        self._seen.update(delta)
        return seq, delta

    def _apply(self, client: int, clock: int, update: bytes) -> None:
        try:
            self.doc.apply_update(update)
        except BaseException as exc:  # pyo3 raises PanicException, a BaseException
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            raise ValueError(f"a Yjs update pycrdt cannot apply: {exc}") from None
        if clock > self._expected.get(client, 0):
            self._expected[client] = clock
        self._applied.append(update)
        self._settle()

    def _settle(self) -> None:
        """Once nothing is pending, apply again what came since the document last had
        every clock (the state-vector exchange a peer would do)."""
        have = self.vector()
        if any(have.get(c, 0) < t for c, t in self._expected.items()):
            return  # pycrdt holds something pending: keep what came
        if len(self._applied) > 1:
            self.doc.apply_update(pycrdt.merge_updates(*self._applied))
        self._applied.clear()
