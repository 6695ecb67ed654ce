"""Merging what peers send into a graph (protocol.md 6.1): states brought to one form,
the ownership check, one C merge per batch and its report; and the deferred updates,
applied as their time comes."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.graph import namespace, private, sea
from dtp.graph._batch import entries
from dtp.graph.changes import Change
from dtp.graph.commits import GraphCommits
from dtp.graph.rules import EMPTY_BATCH, RULE, Refusal
from dtp.graph.summaries import soul_leaf
from dtp.native.core import zero_negative_states
from dtp.native.types import (
    HAM_APPLIED,
    HAM_DEFERRED,
    HAM_HISTORICAL,
    HAM_REJECTED,
    HAM_SAME,
    HamUpdate,
)

_NEGATIVE_ZERO = b"\x00\x00\x00\x00\x00\x00\x00\x80"  # -0.0 as f64le


def canonical_states(batch: bytes) -> bytes:
    """``batch`` with every state ``-0.0`` written as ``0.0`` (the input itself when it
    holds none; RemoteProtocolError if it must be decoded and is malformed).

    HAM compares states as numbers, so ``-0.0`` and ``0.0`` are one state: a field held
    at ``-0.0`` by one peer and at ``0.0`` by another with the same value merges as SAME
    both ways, and the two tables keep different bits -- and different summaries, so every
    sync would send it again. Updates are therefore brought to ``0.0`` before they reach
    the table (and before their signature is checked, so a signature over ``-0.0``
    fails on every peer alike). A batch in which the 8 bytes of ``-0.0`` appear nowhere
    holds no such state and passes without being decoded; in any other the C core
    rewrites those states in place (a peer that put the 8 bytes in a value made the
    whole batch be decoded and encoded again in Python, about a second of CPU per 8 MiB
    of small updates).
    """
    if _NEGATIVE_ZERO not in batch:
        return batch
    fixed, changed = zero_negative_states(batch)
    return fixed if changed else batch


@dataclass(frozen=True)
class MergeReport:
    """What a merge of a peer's batch did, update by update."""

    applied: int = 0
    """Updates that changed the table."""
    historical: int = 0
    """Updates older than (or losing the tie against) what the table holds."""
    same: int = 0
    """Updates equal to what the table holds."""
    deferred: int = 0
    """Updates ahead of the machine clock, held until their time comes."""
    dropped: int = 0
    """Updates ahead of the clock that found the deferred queue full."""
    refused: int = 0
    """Updates refused by the ownership rule (unsigned, badly signed, bad soul), by a
    rule of Gun's user spaces (:mod:`dtp.graph.sea`), by the private tier's
    (:mod:`dtp.graph.private`) or by one of the graph's own rules (:mod:`dtp.graph.rules`)."""
    dropped_leaves: Mapping[int, float] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )
    """The summary leaves (:func:`~dtp.graph.summaries.soul_leaf`) of the dropped
    updates, each with the smallest state dropped in it: a sync session asks its peer for
    those leaves again once the clock reaches that state (at most 65,536 entries,
    whatever the batch)."""
    refusals: tuple[Refusal, ...] = dataclasses.field(default=(), repr=False, compare=False)
    """The refused updates, each with its reason: every one a rule refused, and up to
    1024 of those the ownership, SEA and private-tier checks refused (:attr:`refused` counts them
    all)."""


class GraphMerges(GraphCommits):
    """:meth:`merge`, :meth:`advance` and what tells of the deferred updates."""

    def merge(
        self,
        batch: bytes | bytearray | memoryview,
        *,
        origin: object = None,
        atomic: bool = False,
    ) -> MergeReport:
        """Merge a peer's HAM batch (protocol.md 6.1) after the ownership check, the
        checks of Gun's user spaces (:func:`dtp.graph.sea.filter_batch`) and of the
        private tier (:func:`dtp.graph.private.filter_batch`), and the graph's rules
        (:attr:`rules`, docs/graph.md "Rules").

        Raises RemoteProtocolError (``HAM_*`` code) for a malformed batch, before any
        change. ``origin`` (a sync session) is not sent its own changes back.
        ``atomic``: merge nothing of the batch when any of its updates is refused (the
        Gun endpoint takes a put whole or not at all); otherwise the rest is merged.
        """
        return self._merge(batch, origin, atomic=atomic, final=True)

    def _merge(
        self,
        batch: bytes | bytearray | memoryview,
        origin: object,
        *,
        atomic: bool,
        final: bool,
    ) -> MergeReport:
        """:meth:`merge`; with ``final`` False the rules' refusals are reported but not
        counted in :attr:`stats` (a sync session tries them again once its peer's whole
        exchange is in, and counts those still refused then:
        :meth:`_count_rule_refusals`)."""
        if not isinstance(batch, bytes | bytearray | memoryview):
            # bytes(5) would be five zero bytes, bytes("x") a TypeError
            raise LocalProtocolError(
                f"merge() takes a HAM batch as bytes, not {type(batch).__name__}", ErrorCode.ARG
            )
        data = canonical_states(bytes(batch))
        details: list[tuple[HamUpdate, str, str]] = []
        filtered, refused = namespace.filter_batch(data, self._held, details)
        filtered, sea_refused = sea.filter_batch(filtered, self._held, details)
        for reason, n in sea_refused.items():
            refused[reason] = refused.get(reason, 0) + n
        # the private tier: only the author signs there (dtp.graph.private)
        filtered, private_refused = private.filter_batch(filtered, self._held, details)
        for reason, n in private_refused.items():
            refused[reason] = refused.get(reason, 0) + n
        refusals = [Refusal.of(u, reason, message) for u, reason, message in details]
        changes: list[Change] = []
        try:
            with self._lock:
                self._check_open()
                self._advance_due(changes)
                by_rules: list[Refusal] = []
                if self.rules.active:
                    # (under the lock: a rule sees the current value the merge compares)
                    filtered, by_rules = self.rules.filter_batch(filtered)
                    refusals.extend(by_rules)
                    if by_rules and final:
                        refused[RULE] = len(by_rules)
                        self._count_by_rule(by_rules)
                if atomic and (refused or by_rules):
                    filtered = EMPTY_BATCH  # taken whole or not at all
                result = self._table.merge(filtered, self.clock.machine_state())
                statuses = result.statuses
                dropped_leaves: dict[int, float] = {}
                if HAM_DEFERRED in statuses or HAM_REJECTED in statuses:
                    # (the merge validated the batch: the lean reader may walk it)
                    walked = list(zip(entries(filtered), statuses, strict=True))
                    self._track_deferred([e[2] for e, st in walked if st == HAM_DEFERRED])
                    for e, st in walked:
                        if st == HAM_REJECTED:
                            leaf = soul_leaf(e[0])
                            if e[2] < dropped_leaves.get(leaf, math.inf):
                                dropped_leaves[leaf] = e[2]
                report = MergeReport(
                    applied=statuses.count(HAM_APPLIED),
                    historical=statuses.count(HAM_HISTORICAL),
                    same=statuses.count(HAM_SAME),
                    deferred=statuses.count(HAM_DEFERRED),
                    dropped=statuses.count(HAM_REJECTED),
                    refused=sum(refused.values()) + (0 if final else len(by_rules)),
                    dropped_leaves=dropped_leaves,
                    refusals=tuple(refusals),
                )
                st = self.stats
                st["merged_batches"] += 1
                st["deferred"] += report.deferred
                st["dropped"] += report.dropped
                if refused:
                    st["refused"] += sum(refused.values())
                    by_reason = st["refused_by_reason"]
                    for reason, n in refused.items():
                        by_reason[reason] = by_reason.get(reason, 0) + n
                self._changed(result.changed, origin, changes)
        finally:
            # deferred updates applied on the way in are committed (forwarded, logged):
            # their subscribers must hear of them even when the peer's batch is
            # malformed
            self._deliver(changes)
        return report

    def _count_by_rule(self, refusals: list[Refusal]) -> None:
        """Count the rules' refusals by rule (lock held)."""
        by_rule = self.stats["refused_by_rule"]
        for r in refusals:
            if r.rule is not None:
                by_rule[r.rule] = by_rule.get(r.rule, 0) + 1

    def _count_rule_refusals(self, refusals: list[Refusal]) -> None:
        """Count, as :meth:`merge` does, the rules' refusals a merge with ``final``
        False left uncounted, once they are final."""
        if not refusals:
            return
        with self._lock:
            st = self.stats
            st["refused"] += len(refusals)
            by_reason = st["refused_by_reason"]
            by_reason[RULE] = by_reason.get(RULE, 0) + len(refusals)
            self._count_by_rule(refusals)

    def _held(self, updates: list[HamUpdate]) -> list[bool]:
        """For each update, whether the table holds exactly it (see
        :func:`namespace.filter_batch`)."""
        with self._lock:
            if self._closed:
                return [False] * len(updates)  # (the merge refuses a closed graph)
            get = self._table.get
            out = []
            for soul, field, state, value in updates:
                entry = get(soul, field)
                out.append(entry is not None and entry[0] == state and entry[1] == value)
            return out

    def advance(self) -> int:
        """Apply deferred updates whose time has come; returns how many were applied."""
        changes: list[Change] = []
        with self._lock:
            self._check_open()
            n = self._advance_due(changes)
        self._deliver(changes)
        return n

    @property
    def deferred_count(self) -> int:
        """Updates held because their state is ahead of the machine clock."""
        with self._lock:
            self._check_open()
            return int(self._table.deferred_count)

    async def watch_deferred(self, interval: float = 0.25) -> None:
        """Apply deferred updates as their time comes, until cancelled (asyncio).

        ``interval``: seconds between checks, a finite number > 0 (else TypeError /
        ValueError: NaN, 0 or less would spin the event loop)."""
        if isinstance(interval, bool) or not isinstance(interval, int | float):
            raise TypeError(
                "watch_deferred(interval=...) must be a number of seconds, "
                f"not {type(interval).__name__}"
            )
        if not 0 < interval < math.inf:
            raise ValueError(
                f"watch_deferred(interval=...) must be finite and > 0, not {interval!r}"
            )
        while True:
            await asyncio.sleep(interval)
            if self._table.deferred_count:
                self.advance()
