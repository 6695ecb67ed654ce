"""A graph's local writes: nested mappings flattened into fields, stamped by the hybrid
clock, signed in the writer's own user space, merged as one batch (docs/graph.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.graph import namespace, private, sea
from dtp.graph.arguments import utf8_name
from dtp.graph.changes import Change
from dtp.graph.commits import GraphCommits
from dtp.graph.rules import RuleRefused
from dtp.graph.store_base import MAX_STATE
from dtp.graph.values import check_field_name, encode_value, link_soul
from dtp.native.core import encode_ham_batch
from dtp.native.types import HamUpdate

_Item = TypeVar("_Item")


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
        which must own it; a write to a Gun user space (``~<pub>``, whose values only
        SEA's owner signs: :mod:`dtp.graph.sea`) is refused (LocalProtocolError,
        ``ARG``), and so is one breaking another rule of gun's (an alias list, a
        content-addressed soul). Nested mappings that reach one node's field by two paths
        (``{"b": {"c": ...}}`` and ``{"b/c": ...}``) are refused whole, even with equal
        values (LocalProtocolError, ``ARG``).
        The graph's rules (:attr:`rules`) judge every field first: one refused raises
        :class:`~dtp.graph.rules.RuleRefused` and nothing is written. A node whose
        history is tracked (:attr:`history`) gets a version of this write, in the same
        batch.
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
        for s, _, _ in writes:
            if private.is_private(s):
                # encrypted to readers and signed by the author: only the tier's API
                # (dtp.graph.tiers) makes such values
                raise LocalProtocolError(
                    f"put() to the private soul {s.decode(errors='replace')[:80]!r}: write "
                    "with graph.private(...) (docs/graph.md, 'Privacy tiers')",
                    ErrorCode.ARG,
                )
        changes: list[Change] = []
        try:
            with self._lock:
                self._check_open()
                self._advance_due(changes)
                # a tracked node's version and heads (dtp.graph.history), written with it
                plan = self.history.plan(writes) if self.history.tracking else None
                touched = [(s, f) for s, f, _ in writes]
                if plan is not None:
                    touched.extend(plan.touched)
                after: float | None = None
                for s, f in touched:
                    current = self._table.get(s, f)
                    if current is not None and (after is None or current[0] > after):
                        after = current[0]
                state = self.clock.next(after)
                if plan is not None:
                    writes = writes + plan.writes(state)
                writeback = self._writeback
                if writeback is not None and state > writeback.clock_reserved:
                    writeback.reserve_clock(state)
                updates = []
                for s, f, value in writes:
                    refusal = sea.check_stored(s, f, state, value)
                    if refusal is not None:
                        # a Gun user space (~<pub>): only SEA's owner signs there, and
                        # the signature covers the state this write just took
                        raise LocalProtocolError(
                            f"put() to {s.decode(errors='replace')[:80]!r} breaks a rule "
                            f"of Gun's user spaces: {refusal.message} (docs/graph.md, "
                            "'Gun user spaces')",
                            ErrorCode.ARG,
                        )
                    if namespace.is_user_space(s):
                        if self.identity is None:
                            raise LocalProtocolError(
                                "writing to a user-space soul needs the owner's identity",
                                ErrorCode.ARG,
                            )
                        value = namespace.seal(self.identity, s, f, state, value)
                    updates.append(HamUpdate(s, f, state, value))
                if self.rules.active:
                    refused = self.rules.check_local(updates)
                    if refused is not None:
                        name = refused.rule or ""
                        by_rule = self.stats["refused_by_rule"]
                        by_rule[name] = by_rule.get(name, 0) + 1
                        raise RuleRefused(refused)
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

    def _write_sealed(
        self,
        writes: Sequence[tuple[bytes, bytes, _Item]],
        seal: Callable[[bytes, bytes, float, _Item], bytes],
    ) -> float:
        """Write fields whose stored values depend on the state they are written at --
        signed over it, or encrypted with it as associated data (the tiers of
        :mod:`dtp.graph.tiers`) -- as one batch at one state, taken as :meth:`put`
        takes it; returns the state. ``seal(soul, field, state, item)`` makes each
        stored value, under the graph's lock; what it raises leaves the graph as it
        was. The souls and field names are the UTF-8 bytes the table keys on; no rule
        of :meth:`put` is applied here (the caller's seal is the rule)."""
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
                updates = [HamUpdate(s, f, state, seal(s, f, state, item)) for s, f, item in writes]
                result = self._table.merge(encode_ham_batch(updates), max(state, MAX_STATE))
                self._changed(result.changed, None, changes)
        finally:
            self._deliver(changes)
        return state

    def _fields_of(self, soul: str, data: Mapping[str, Any]) -> list[tuple[bytes, bytes, bytes]]:
        """What :meth:`put` would write for ``data``: (soul, field, the value's Gun
        text) for the node and every nested node, checked as put() checks them."""
        writes: list[tuple[bytes, bytes, bytes]] = []
        self._flatten(soul, data, writes, 0)
        twice = _field_written_twice(writes)
        if twice is not None:
            raise LocalProtocolError(
                f"put() writes field {twice[1]!r} of node {twice[0]!r} twice "
                "(nested mappings naming the same child node)",
                ErrorCode.ARG,
            )
        return writes

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
