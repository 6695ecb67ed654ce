"""Reading a graph: nodes, fields, their states, links followed (docs/graph.md)."""

from __future__ import annotations

from typing import Any

from dtp.errors import DTPError
from dtp.graph.arguments import name_text, utf8_name
from dtp.graph.store_base import GraphBase
from dtp.graph.values import JSON, link_soul


class GraphReads(GraphBase):
    """The graph's reads; each takes the lock once (for a node, its fields at once)."""

    def get(self, soul: str) -> dict[str, JSON] | None:
        """The node's fields as a dict (links as ``{"#": soul}``), or None if unknown.

        Fields whose stored bytes are not JSON, and fields whose name is not UTF-8
        (written by a misbehaving peer), are left out.
        """
        s = utf8_name(soul, "a soul")
        with self._lock:
            self._check_open()
            fields = self._ensure_view().fields.get(s)
            if not fields:
                return None
            stored = [(f, self._table.get(s, f)) for f in fields]
        node: dict[str, JSON] = {}
        for f, entry in stored:
            name = name_text(f)
            if entry is None or name is None:
                continue
            try:
                node[name] = self._value_of(s, entry[1])
            except DTPError:
                continue
        return node

    def get_field(self, soul: str, field: str, default: Any = None) -> JSON:
        """One field's value, or ``default`` when the field is unknown."""
        s = utf8_name(soul, "a soul")
        f = utf8_name(field, "a field name")
        with self._lock:
            self._check_open()
            entry = self._table.get(s, f)
        if entry is None:
            return default  # type: ignore[no-any-return]
        return self._value_of(s, entry[1])

    def state_of(self, soul: str, field: str) -> float | None:
        """The HAM state of a field, or None."""
        s, f = utf8_name(soul, "a soul"), utf8_name(field, "a field name")
        with self._lock:
            self._check_open()
            entry = self._table.get(s, f)
        return None if entry is None else entry[0]

    def stored_node(self, soul: str) -> list[tuple[bytes, float, bytes]]:
        """Every field of node ``soul`` as the table holds it: (field name, state,
        stored value bytes), in no order; empty for an unknown node. (What the Gun
        endpoint serves: a value's stored bytes are its Gun text.)"""
        s = utf8_name(soul, "a soul")
        with self._lock:
            self._check_open()
            fields = self._ensure_view().fields.get(s)
            if not fields:
                return []
            get = self._table.get
            out = []
            for f in fields:
                entry = get(s, f)
                if entry is not None:
                    out.append((f, entry[0], entry[1]))
            return out

    def walk(self, soul: str, *path: str) -> str:
        """Follow links from ``soul`` through the fields in ``path``; returns the soul
        reached. KeyError when a field is missing or not a link."""
        utf8_name(soul, "a soul")  # (with no path, nothing else would look at it)
        current = soul
        for field in path:
            target = link_soul(self.get_field(current, field))
            if target is None:
                raise KeyError(f"{current}.{field} is not a link")
            current = target
        return current

    def souls(self) -> list[str]:
        """Every node with at least one field (but those whose soul, written by a
        misbehaving peer, is not UTF-8: no str names them)."""
        with self._lock:
            self._check_open()
            names = [name_text(s) for s in self._ensure_view().fields]
        return sorted(name for name in names if name is not None)

    def __len__(self) -> int:
        """Number of fields in the table (all nodes)."""
        with self._lock:
            self._check_open()
            return len(self._table)

    def __contains__(self, soul: object) -> bool:
        """True when node ``soul`` has at least one field."""
        with self._lock:
            self._check_open()  # (before the type: a closed graph refuses every read)
            if not isinstance(soul, str):
                return False
            try:
                s = soul.encode()
            except UnicodeEncodeError:  # no soul can hold a lone surrogate
                return False
            return s in self._ensure_view().fields
