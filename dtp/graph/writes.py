"""A graph's local writes: nested mappings flattened into fields, stamped by the hybrid
clock, signed in the writer's own user space, merged as one batch (docs/graph.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.graph import namespace
from dtp.graph.arguments import utf8_name
from dtp.graph.changes import Change
from dtp.graph.commits import GraphCommits
from dtp.graph.store_base import MAX_STATE
from dtp.graph.values import check_field_name, encode_value, link_soul
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate


class GraphWrites(GraphCommits):
    """:meth:`put` and :meth:`set`."""

    def put(self, soul: str, data: Mapping[str, Any]) -> float:
        """Write fields of node ``soul``; returns the state they were written with.

        Values are what a Gun peer holds (docs/graph.md, "Values"): None, bools,
        numbers, strings; ``{"#": other}`` is a link; any other mapping becomes the node
        ``<soul>/<field>``, written too, with a link to it in the field. Anything else
        (a list, an int no binary64 holds, NaN, a field named ``_``) raises
        :class:`~dtp.graph.values.GraphValueError` and writes nothing.
        Writes to a user-space soul ``~<address>/...`` are signed with :attr:`identity`,
        which must own it. Nested mappings that reach one node's field by two paths
        (``{"b": {"c": ...}}`` and ``{"b/c": ...}``) are refused whole, even with equal
        values (LocalProtocolError, ``ARG``).
        """
        writes: list[tuple[bytes, bytes, bytes]] = []
        self._flatten(soul, data, writes, 0)
        twice = _field_written_twice(writes)
        if twice is not None:
            # two paths to one node's field ({"b": {"c": {...}}} and {"b/c": {...}} both
            # write node <soul>/b/c): written at one state, the merge would keep one of
            # them by its bytes, not the caller's order; refuse the write whole
            raise LocalProtocolError(
                f"put() writes field {twice[1]!r} of node {twice[0]!r} twice "
                "(nested mappings naming the same child node)",
                ErrorCode.ARG,
            )
        changes: list[Change] = []
        try:
            with self._lock:
                self._check_open()
                self._advance_due(changes)
                after: float | None = None
                for s, f, _ in writes:
                    current = self._table.get(s, f)
                    if current is not None and (after is None or current[0] > after):
                        after = current[0]
                state = self.clock.next(after)
                writeback = self._writeback
                if writeback is not None and state > writeback.clock_reserved:
                    writeback.reserve_clock(state)
                updates = []
                for s, f, value in writes:
                    if namespace.is_user_space(s):
                        if self.identity is None:
                            raise LocalProtocolError(
                                "writing to a user-space soul needs the owner's identity",
                                ErrorCode.ARG,
                            )
                        value = namespace.seal(self.identity, s, f, state, value)
                    updates.append(HamUpdate(s, f, state, value))
                result = self._table.merge(encode_ham_batch(updates), max(state, MAX_STATE))
                self._changed(result.changed, None, changes)
        finally:
            # deferred updates applied on the way in are committed (forwarded, logged):
            # their subscribers must hear of them even when this write fails (a value
            # too large, no identity for a user-space soul)
            self._deliver(changes)
        return state

    def set(self, soul: str, field: str, value: Any) -> float:
        """Write one field (see :meth:`put`)."""
        return self.put(soul, {field: value})

    def _flatten(
        self, soul: str, data: Mapping[str, Any], out: list[tuple[bytes, bytes, bytes]], depth: int
    ) -> None:
        if not isinstance(soul, str) or not soul:
            raise LocalProtocolError("a soul is a non-empty string", ErrorCode.ARG)
        if depth > 32:
            raise LocalProtocolError("nodes nested more than 32 deep", ErrorCode.ARG)
        s = utf8_name(soul, "a soul")
        if namespace.is_user_space(s) and namespace.owner_of(s) is None:
            raise LocalProtocolError(
                f"user-space souls read ~0x<64 hex>[/...]: {soul!r}", ErrorCode.ARG
            )
        if not isinstance(data, Mapping) or not data:
            raise LocalProtocolError("put() takes a non-empty mapping of fields", ErrorCode.ARG)
        for field, value in data.items():
            if not isinstance(field, str) or not field:
                raise LocalProtocolError("field names are non-empty strings", ErrorCode.ARG)
            check_field_name(field)
            if isinstance(value, Mapping) and link_soul(value) is None:
                child = f"{soul}/{field}"
                self._flatten(child, value, out, depth + 1)
                value = {"#": child}
            out.append((s, utf8_name(field, "a field name"), encode_value(value)))


def _field_written_twice(writes: list[tuple[bytes, bytes, bytes]]) -> tuple[str, str] | None:
    """The first (soul, field) that ``writes`` names twice, decoded for a message."""
    seen: set[tuple[bytes, bytes]] = set()
    for s, f, _ in writes:
        if (s, f) in seen:
            return s.decode("utf-8", "replace"), f.decode("utf-8", "replace")
        seen.add((s, f))
    return None
